#!/usr/bin/env python3
"""Input pipeline throughput alone (paper §3.2 patches), in patches per second.

Runs `lowlight_tf.pipeline.train_dataset` without any model on in-memory sources shaped like
`lowlight_tf.data.load` output (the cache makes the source cost a one-time warm-up) and prints
patches/s for each configuration, all measured in the same run:

    bright-only images with on-the-fly simulation (paper preset) at 64x64 batch 16,
    128x128 batch 16 and 128x128 batch 8 (also with a quarter of the patches dim,
    --dim_fraction=0.25, and with --cache=none: decoding the source every epoch), and stored
    pairs at 64x64 batch 16.

Usage: python benchmarks/pipeline.py [--source=sample|synthetic] [--seconds=10]
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lowlight_tf import pipeline  # noqa: E402
from lowlight_tf import simulation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "sample", ["sample", "synthetic"],
                  "Where the bright images come from: scikit-image's bundled colour photos "
                  "(sample) or random 512x512 images (synthetic).")
flags.DEFINE_float("seconds", 10.0, "Measuring time per configuration, in seconds, after the "
                   "warm-up batches.", lower_bound=1.0)
flags.DEFINE_integer("warmup_batches", 20, "Batches read before timing starts (fills the cache "
                     "and the prefetch buffers).", lower_bound=1)

# (patch_size, batch_size, simulate, dim_fraction, cache)
CONFIGURATIONS = ((64, 16, True, 0.0, "memory"), (128, 16, True, 0.0, "memory"),
                  (128, 8, True, 0.0, "memory"), (128, 8, True, 0.25, "memory"),
                  (128, 8, True, 0.0, "none"), (64, 16, False, 0.0, "memory"))


def _sample_images():
    """scikit-image's bundled colour photos as float32 [H, W, 3] in [0, 255]."""
    import skimage.data
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
             "colorwheel", "cat")
    images = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        image = loader()
        if image.ndim == 3 and image.shape[-1] >= 3:
            images.append(image[..., :3].astype(np.float32))
    return images


def _synthetic_images(count=16, size=512):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3)).astype(np.float32) for _ in range(count)]


def _source(images, paired):
    """A tf.data source with the element structure of data.load (images or pairs kind)."""
    datasets = []
    for i, bright in enumerate(images):
        example = {"bright": bright, "id": f"image_{i}"}
        if paired:
            example["dark"] = np.floor(bright / 8.0)
        datasets.append(tf.data.Dataset.from_tensors(example))
    source = datasets[0]
    for dataset in datasets[1:]:
        source = source.concatenate(dataset)
    return source


def _measure(dataset, batch_size, seconds, warmup_batches):
    """Return patches/s over `seconds` after `warmup_batches`."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    return batches * batch_size / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    images = _sample_images() if FLAGS.source == "sample" else _synthetic_images()
    preset = simulation.load_preset("paper")
    print(f"source: {FLAGS.source}, {len(images)} images "
          f"({', '.join(f'{im.shape[0]}x{im.shape[1]}' for im in images)}); "
          f"{os.cpu_count()} CPUs; TensorFlow {tf.__version__}")
    rows = []
    for patch_size, batch_size, simulate, dim_fraction, cache in CONFIGURATIONS:
        dataset = pipeline.train_dataset(
            _source(images, paired=not simulate), patch_size=patch_size, batch_size=batch_size,
            simulation=preset if simulate else None, dim_fraction=dim_fraction, cache=cache)
        rate = _measure(dataset, batch_size, FLAGS.seconds, FLAGS.warmup_batches)
        what = "images + simulation (paper preset)" if simulate else "stored pairs"
        what += f", {dim_fraction:.0%} dim" if dim_fraction else ""
        what += f", cache {cache}" if cache != "memory" else ""
        rows.append((f"{patch_size}x{patch_size}", batch_size, what, rate))
        print(f"  {patch_size}x{patch_size} batch {batch_size:2d} {what}: {rate:8.1f} patches/s",
              flush=True)
    print("\nSummary (input pipeline alone, patches/s, same run)")
    print("| patch | batch | data | patches/s |\n|---|---|---|---|")
    for patch, batch_size, what, rate in rows:
        print(f"| {patch} | {batch_size} | {what} | {rate:.1f} |")


if __name__ == "__main__":
    app.run(main)
