"""tf.data service: the training pipeline runs on a dispatcher + worker on loopback, same
batches."""
import numpy as np
import pytest
import tensorflow as tf

from data_prep import sample_photos
from lowlight_tf import pipeline, pipeline_cache, training
from lowlight_tf.train_config import TrainConfig


@pytest.fixture(name="service", scope="module")
def _service():
    """A tf.data service dispatcher and one worker in this process.

    Yields the dispatcher's address.
    """
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
    yield address
    del worker, dispatcher


def test_the_service_gives_the_local_batches(service):
    rng = np.random.default_rng(0)
    source = tf.data.Dataset.from_tensor_slices({
        "bright": rng.integers(0, 256, (4, 40, 48, 3)).astype(np.float32),
        "id": [f"p{i}.png" for i in range(4)]})
    local = pipeline.train_dataset(source, patch_size=16, batch_size=3, seed=4,
                                   simulation="paper", dim_fraction=0.25)
    remote = pipeline_cache.through_data_service(local, service)
    for (dark_a, bright_a), (dark_b, bright_b) in zip(local.take(6), remote.take(6)):
        np.testing.assert_array_equal(dark_a.numpy(), dark_b.numpy())
        np.testing.assert_array_equal(bright_a.numpy(), bright_b.numpy())


@pytest.mark.slow
def test_training_runs_through_the_service(service, tmp_path, capsys):
    config = TrainConfig(model_dir=str(tmp_path / "run"), sample_root=str(tmp_path / "sample"),
                         base_filters=4, depth=2, patch_size=16, batch_size=4, epochs=1,
                         steps_per_epoch=3, validation_steps=1, num_images=0,
                         data_service=f"grpc://{service}", strategy="default")
    result = training.train(config, sample_datasets=sample_photos.ensure_sample_datasets)
    assert result.last_epoch == 1
    assert f"tf.data service grpc://{service}" in capsys.readouterr().out
    with pytest.raises(training.ConfigError, match="data_service"):
        training.resolve_config(TrainConfig(model_dir=str(tmp_path / "other"),
                                            data_service=service, strategy="multi_worker"))
