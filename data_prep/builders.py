"""data_prep's dataset builders as `lowlight_tf.reproduce` takes them (handed in by the tools).

`lowlight_tf` never imports `data_prep`; tools/reproduce, tools/demo (and the tests) pass
`DATASET_BUILDERS` to `reproduce.run_reproduce` / `demo.run_demo`.
"""
from data_prep import prepare
from data_prep import sample_photos
from lowlight_tf.reproduce_run import DatasetBuilders

DATASET_BUILDERS = DatasetBuilders(make_tfrecords=prepare.make_tfrecords,
                                   sample_datasets=sample_photos.ensure_sample_datasets,
                                   input_errors=(prepare.InputError,))
