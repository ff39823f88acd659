#!/usr/bin/env python3
"""Benchmark: raw decoding throughput of the offline data job with 1 and 2 worker processes.

Raw decoding (rawpy/LibRaw demosaicing to 16-bit sRGB) is the costly step of turning camera raw
files into TFRecords (it is done once, offline, never in the training loop). This measures images
per second in the same run for 1 worker (in-process, as `--num_workers=1`) and 2 worker
processes (as `--num_workers=2`), for two workloads:
  render      rawpy decode + postprocess only;
  render+png  the job's whole per-file task (`data_prep.workers.decode_image_task`: render,
              convert, PNG-encode), i.e. what make_tfrecords spends per raw file.

Inputs: the DNG files in ../shared/data/raw/imx296 (relative to the project root) when present,
otherwise synthetic Bayer DNGs of the same size written with pidng. Worker start-up is excluded
(pools are warmed up before timing).

Usage:
  python benchmarks/raw_decoding.py [--decodes=24] [--half_size] [--raw_dir=DIR]
"""
import concurrent.futures
import glob
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lowlight_tf.media import decode  # pylint: disable=wrong-import-position
from data_prep import workers  # pylint: disable=wrong-import-position

SHARED_RAW_DIR = os.path.join(ROOT, "..", "shared", "data", "raw", "imx296")

FLAGS = flags.FLAGS
flags.DEFINE_integer("decodes", 24, "Raw files decoded per measurement (the inputs are cycled).",
                     lower_bound=2)
flags.DEFINE_bool("half_size", False, "Render at half resolution (--raw_half_size).")
flags.DEFINE_string("raw_dir", SHARED_RAW_DIR, "Folder of DNG files to decode; when it holds "
                    "none, synthetic DNGs are generated instead.")
flags.DEFINE_integer("synthetic_files", 4, "DNGs to generate when the shared raw folder is "
                     "absent.", lower_bound=1)


def render_only(task):
    """Decode and render one raw file; return its shape (the render-only workload)."""
    path, half_size = task
    image, _ = decode.decode_raw(path, half_size=half_size)
    return image.shape


def write_synthetic_dngs(directory, count, shape=(1088, 1456)):
    """Write `count` RGGB DNGs (10-bit data, black level 60) like the IMX296 files; return paths."""
    from pidng import defs  # pylint: disable=import-outside-toplevel
    from pidng.core import DNGTags, RAW2DNG, Tag  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        height, width = shape
        yy, xx = np.mgrid[0:height, 0:width]
        scene = 200 + 600 * (((yy // 64) + (xx // 64) + index) % 2)  # a checkerboard target
        mosaic = np.clip(60 + scene + rng.normal(0, 8, shape), 0, 1023).astype(np.uint16)
        tags = DNGTags()
        for tag, value in ((Tag.ImageWidth, width), (Tag.ImageLength, height),
                           (Tag.TileWidth, width), (Tag.TileLength, height),
                           (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
                           (Tag.BlackLevel, 60), (Tag.WhiteLevel, 1023),
                           (Tag.CFARepeatPatternDim, [2, 2])):
            tags.set(tag, value)
        tags.set(Tag.Orientation, defs.Orientation.Horizontal)
        tags.set(Tag.PhotometricInterpretation, defs.PhotometricInterpretation.Color_Filter_Array)
        tags.set(Tag.CFAPattern, defs.CFAPattern.RGGB)
        tags.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1],
                                    [0, 1], [1, 1]])
        tags.set(Tag.CalibrationIlluminant1, defs.CalibrationIlluminant.D65)
        tags.set(Tag.AsShotNeutral, [[1, 2], [1, 1], [1, 2]])
        tags.set(Tag.DNGVersion, defs.DNGVersion.V1_4)
        tags.set(Tag.DNGBackwardVersion, defs.DNGVersion.V1_2)
        tags.set(Tag.Make, "Synthetic")
        tags.set(Tag.Model, "Benchmark")
        converter = RAW2DNG()
        converter.options(tags, path=directory, compress=False)
        paths.append(converter.convert(mosaic, filename=f"synthetic_{index}"))
    return [p if p.endswith(".dng") else p + ".dng" for p in paths]


def measure(fn, tasks, num_workers):
    """Return images/s of fn over tasks with num_workers processes (1 = in this process)."""
    if num_workers == 1:
        fn(tasks[0])  # warm-up (imports, caches)
        start = time.perf_counter()
        for task in tasks:
            fn(task)
        return len(tasks) / (time.perf_counter() - start)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        list(pool.map(fn, tasks[:num_workers]))  # start and warm up every worker
        start = time.perf_counter()
        list(pool.map(fn, tasks, chunksize=1))
        return len(tasks) / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    shared = sorted(glob.glob(os.path.join(FLAGS.raw_dir, "*.dng")))
    with tempfile.TemporaryDirectory() as scratch:
        if shared:
            paths, source = shared, os.path.normpath(FLAGS.raw_dir)
        else:
            paths = write_synthetic_dngs(scratch, FLAGS.synthetic_files)
            source = f"{len(paths)} synthetic pidng DNGs (shared raw folder absent)"
        shape = decode.decode_raw(paths[0], half_size=FLAGS.half_size)[0].shape
        cycle = [paths[i % len(paths)] for i in range(FLAGS.decodes)]
        workloads = {
            "render": (render_only, [(p, FLAGS.half_size) for p in cycle]),
            "render+png": (workers.decode_image_task,
                           [(p, os.path.basename(p), "<u2", None, FLAGS.half_size, False)
                            for p in cycle]),
        }
        print(f"inputs: {source} ({len(paths)} files), output {shape[1]}x{shape[0]} uint16, "
              f"half_size={FLAGS.half_size}")
        print(f"cpus: {os.cpu_count()}, load average before: "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"{'workload':<12}{'workers':>8}{'images/s':>11}{'speed-up':>10}")
        for name, (fn, tasks) in workloads.items():
            baseline = None
            for num_workers in (1, 2):
                rate = measure(fn, tasks, num_workers)
                baseline = baseline or rate
                print(f"{name:<12}{num_workers:>8}{rate:>11.2f}{rate / baseline:>9.2f}x",
                      flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
