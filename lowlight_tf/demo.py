"""The embedded-default demo: the whole method on scikit-image's bundled photos, offline.

Builds TFRecords from the sample photos, simulates dark versions with a calibrated preset
(paper §3.1), scores the shipped pretrained model on them against the classical baselines (§4),
pretrains a small U-Net briefly to show the training path (§3.2-3.3) and scores it too, and
enhances the simulated dark test images with the shipped model as a user would enhance their
photos. Minutes on 2 CPU cores; it uses lowlight_tf.reproduce's stages, so a second run reuses
what the first one finished. The caller (tools/demo) hands in the dataset builders
(`reproduce.DatasetBuilders`, data_prep's): this package never imports data_prep.

Reads: the sample photos (through the builders), the shipped model. Writes into OUTPUT_DIR:
what tools/reproduce writes (tfrecords, models, evaluations, stages, report.md, ...), plus
dark_inputs/ (the simulated dark test images as PNGs) and enhanced/ (their enhanced versions).
"""
import os

import numpy as np
from PIL import Image

from lowlight_tf import data
from lowlight_tf import enhance as enhance_lib
from lowlight_tf import model as model_lib
from lowlight_tf import pretrained
from lowlight_tf import reproduce

# The small model trains for a few minutes on 2 CPU cores: it shows the training path, not the
# method's quality (the shipped model does). The simulation is the preset the shipped model was
# trained on (its card), so the demo's test images are of the kind it knows.
DEMO_SETTINGS = dict(
    calibration="none", simulation_params="eliei_rgb_tone", base_filters=16, depth=4,
    patch_size=128, batch_size=8, pretrain_epochs=30, pretrain_steps=50,
    pretrain_learning_rate=1e-3, lr_schedule="cosine", warmup_steps=100, clipnorm=1.0,
    validation_steps=2, save_images=2, input_gains="0.5,1,2,4",
    stages="prepare,calibrate,simulated_test,eval_shipped,pretrain,eval_pretrain,report")


def demo_config(output_dir, **overrides):
    """The ReproduceConfig of the demo in `output_dir` (tests shrink it with overrides)."""
    settings = dict(DEMO_SETTINGS, **overrides)
    return reproduce.ReproduceConfig.create(work_dir=output_dir, **settings)


def _write_dark_inputs(simulated_spec, folder, limit):
    """Write the simulated dark test images as 8-bit PNGs: the demo's 'user photos'."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for example in data.load_spec(simulated_spec).take(limit).as_numpy_iterator():
        name = os.path.splitext(os.path.basename(example["id"].decode()))[0]
        path = os.path.join(folder, f"{name}_dark.png")
        Image.fromarray(np.round(example["dark"]).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _enhancing_model(work_dir, progress):
    """The shipped model, else (an install without it) the demo's own small model."""
    try:
        path = pretrained.model_path()
        progress(f"Enhancing with the shipped pretrained model {path}")
    except pretrained.NoPretrainedModelError as error:
        path = os.path.join(work_dir, "models", "pretrain")
        progress(f"{error}\nEnhancing with the demo's small model instead.")
    return model_lib.load_model(path)


def run_demo(output_dir, builders, progress=print, enhance_images=3, **overrides):
    """Run the demo; returns the reproduce report dict plus the enhanced files.

    Args:
      output_dir: the demo's folder (its work_dir); a second run reuses its finished stages.
      builders: reproduce.DatasetBuilders (tools/demo passes data_prep's).
      progress: callable(str) for progress lines.
      enhance_images: how many simulated dark test images to enhance.
      **overrides: ReproduceConfig settings that replace DEMO_SETTINGS (tests shrink the run).

    Raises:
      reproduce.ReproduceError: bad settings or inputs.
    """
    config = demo_config(output_dir, **overrides)
    report = reproduce.run_reproduce(config, builders, progress=progress)
    work_dir = os.path.abspath(output_dir)
    simulated = report["datasets"]["simulated_test"]
    inputs = _write_dark_inputs(simulated, os.path.join(work_dir, "dark_inputs"), enhance_images)
    model = _enhancing_model(work_dir, progress)
    enhanced_dir = os.path.join(work_dir, "enhanced")
    # The demo's own folder: a second run replaces what the first one wrote.
    summary = enhance_lib.enhance_paths(model, inputs, enhanced_dir, progress=progress,
                                        overwrite=True)
    progress(enhance_lib.format_summary(summary, enhanced_dir))
    panels = ", ".join(report["panels"])
    progress(f"\nDemo finished. Table: {os.path.join(work_dir, 'report.md')}\n"
             f"Panels (input | prediction | reference): {panels}\n"
             f"Enhanced photos: {enhanced_dir}\n"
             f"TensorBoard: tensorboard --logdir {os.path.join(work_dir, 'models')}")
    report["enhanced"] = [out for _, out in summary.written]
    return report
