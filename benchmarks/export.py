#!/usr/bin/env python3
"""CPU latency of the exported TFLite model (float16 weights) against Keras, on a 12 MP image.

One process, the same threads for both runtimes (TensorFlow's intra-op pool and the TFLite
interpreter both get --threads; inter-op 1), and the timed calls interleaved (TFLite, Keras
whole, Keras tiled, then again) so a change of machine load hits every mode alike:
- tflite: the .tflite file of lowlight_tf.export (--quantize, float signature, without the chroma
  filter and the shift ensemble so both runtimes run the same network once), the whole image in
  one call with the interpreter's input resized to it (the file takes any size);
- keras_whole: inference.predict_array on the whole image (what the export computes);
- keras_tiled: inference.predict_array with tools/enhance's default tiles (1024 px, overlap 32),
  the bounded-memory path;
- tflite_ensemble (not in the default --modes): the .tflite file as tools/export writes it by
  default, with the shift ensemble (four shifted passes averaged), timed against tflite.

  python benchmarks/export.py                          # 4000 x 3000, paper model, 2 threads
  python benchmarks/export.py --height=1500 --width=2000 --repeats=3
  python benchmarks/export.py --modes=tflite,tflite_ensemble --base_filters=16

Weights are random (latency does not depend on them); the default model is the paper's (32 base
filters, depth 4, ~7.8 M parameters). The first call of each mode (delegate preparation,
tracing) is reported apart from the timed calls. Peak resident memory is the process's, read
after each mode's first call in the order above (TFLite first, so its figure is its own; the
ensemble's, last, is the process's peak so far).
"""
import functools
import json
import os
import resource
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (after the log level)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lowlight_tf import export  # noqa: E402
from lowlight_tf import inference  # noqa: E402
from lowlight_tf import model as model_lib  # noqa: E402

ALL_MODES = ("tflite", "keras_whole", "keras_tiled", "tflite_ensemble")
DEFAULT_MODES = ALL_MODES[:3]

_HEIGHT = flags.DEFINE_integer("height", 3000, "Image height in pixels.", lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 4000, "Image width in pixels.", lower_bound=1)
_MODES = flags.DEFINE_list("modes", list(DEFAULT_MODES),
                           f"Modes to time, from {', '.join(ALL_MODES)}.")
_THREADS = flags.DEFINE_integer(
    "threads", 2, "Threads of both runtimes (TensorFlow intra-op pool, TFLite interpreter).",
    lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per mode after the first call.",
                                lower_bound=1)
_QUANTIZE = flags.DEFINE_enum("quantize", "float16", export.QUANTIZATIONS,
                              "Weight quantisation of the TFLite file.")
_BASE_FILTERS = flags.DEFINE_integer("base_filters", 32, "U-Net base filters (paper: 32).",
                                     lower_bound=1)
_DEPTH = flags.DEFINE_integer("depth", 4, "U-Net depth (paper: 4).", lower_bound=1)
_TILE = flags.DEFINE_integer("tile", inference.DEFAULT_TILE, "Tile side of keras_tiled.",
                             lower_bound=32)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the results here as JSON.")

flags.register_validator("modes", lambda modes: modes and set(modes) <= set(ALL_MODES),
                         message=f"--modes must name some of {', '.join(ALL_MODES)}")


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _dark_image(height, width):
    """A smooth dark photo with noise, float32 [height, width, 3] in [0, 0.15]."""
    rng = np.random.default_rng(0)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    tint = np.array([1.0, 0.8, 0.6], np.float32)
    image = 0.06 * (0.5 + 0.5 * np.sin(6.0 * x + 3.0 * y)) * tint + 0.02
    image = image + rng.normal(0.0, 0.01, (height, width, 3)).astype(np.float32)
    return np.clip(image, 0.0, 0.15).astype(np.float32)


def _run_modes(model, tflite_paths, image, modes):
    """Times each mode (`tflite_paths`: {tflite mode: .tflite path}); returns {mode:
    {"first_s", "seconds": [...], "cpu_seconds": [...], "peak_rss_mib"}} (wall-clock and
    process CPU seconds of each timed call)."""
    calls = {}
    for mode, path in tflite_paths.items():
        enhancer = export.TFLiteEnhancer(path, export.SIGNATURE_FLOAT, num_threads=_THREADS.value)
        calls[mode] = functools.partial(enhancer, image)
    if "keras_whole" in modes:
        calls["keras_whole"] = lambda: inference.predict_array(model, image)
    if "keras_tiled" in modes:
        calls["keras_tiled"] = lambda: inference.predict_array(model, image, tile=_TILE.value)
    results = {}
    outputs = {}
    for mode in ALL_MODES:
        if mode not in calls:
            continue
        start = time.perf_counter()
        outputs[mode] = calls[mode]()
        results[mode] = {"first_s": time.perf_counter() - start, "seconds": [],
                         "cpu_seconds": [], "peak_rss_mib": _peak_rss_mib()}
        print(f"  {mode}: first call {results[mode]['first_s']:.2f} s, peak RSS so far "
              f"{results[mode]['peak_rss_mib']:.0f} MiB", flush=True)
    if "tflite" in outputs and "keras_whole" in outputs:
        difference = np.abs(outputs["tflite"] - outputs["keras_whole"])
        results["tflite"]["max_abs_diff_vs_keras"] = float(difference.max())
    outputs.clear()
    for _ in range(_REPEATS.value):
        for mode in results:
            start, cpu_start = time.perf_counter(), time.process_time()
            calls[mode]()
            results[mode]["seconds"].append(time.perf_counter() - start)
            results[mode]["cpu_seconds"].append(time.process_time() - cpu_start)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer logs every file at INFO
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    model = model_lib.build_unet("rgb", base_filters=_BASE_FILTERS.value, depth=_DEPTH.value)
    height, width = _HEIGHT.value, _WIDTH.value
    megapixels = height * width / 1e6
    print(f"Model: rgb U-Net, {_BASE_FILTERS.value} base filters, depth {_DEPTH.value}, "
          f"{model.count_params():,} parameters, random weights. Image {width} x {height} "
          f"({megapixels:.1f} MP), {_THREADS.value} threads, load average "
          f"{os.getloadavg()[0]:.1f}.", flush=True)
    image = _dark_image(height, width)
    with tempfile.TemporaryDirectory(prefix="export_benchmark.") as directory:
        tflite_paths = {}
        for mode in ("tflite", "tflite_ensemble"):
            if mode not in _MODES.value:
                continue
            start = time.perf_counter()
            tflite_paths[mode] = export.export_tflite(
                model, directory, name=mode, quantize=_QUANTIZE.value, chroma_filter=False,
                shift_ensemble=mode == "tflite_ensemble")
            print(f"  converted to TFLite ({mode}, {_QUANTIZE.value}, "
                  f"{os.path.getsize(tflite_paths[mode]) / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        results = _run_modes(model, tflite_paths, image, _MODES.value)

    rows = []
    print("\n| mode | first call s | best s | median s | MPix/s (best) | CPU s (median) "
          "| peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for mode, result in results.items():
        best, median = min(result["seconds"]), statistics.median(result["seconds"])
        cpu = statistics.median(result["cpu_seconds"])
        rows.append({"mode": mode, "height": height, "width": width,
                     "threads": _THREADS.value, "first_s": round(result["first_s"], 2),
                     "best_s": round(best, 2), "median_s": round(median, 2),
                     "mpix_per_s": round(megapixels / best, 3), "cpu_median_s": round(cpu, 2),
                     "peak_rss_mib": round(result["peak_rss_mib"]),
                     "seconds": [round(s, 2) for s in result["seconds"]],
                     **({"max_abs_diff_vs_keras": result["max_abs_diff_vs_keras"]}
                        if "max_abs_diff_vs_keras" in result else {})})
        print(f"| {mode} | {result['first_s']:.2f} | {best:.2f} | {median:.2f} | "
              f"{megapixels / best:.3f} | {cpu:.1f} | {result['peak_rss_mib']:.0f} |")
    by_mode = {row["mode"]: row for row in rows}
    if "tflite" in by_mode:
        for other in ("keras_whole", "keras_tiled"):
            if other in by_mode:
                ratio = by_mode["tflite"]["best_s"] / by_mode[other]["best_s"]
                cpu_ratio = by_mode["tflite"]["cpu_median_s"] / by_mode[other]["cpu_median_s"]
                print(f"TFLite ({_QUANTIZE.value}) / {other} latency: {ratio:.2f}x "
                      f"(best of {_REPEATS.value}); CPU time {cpu_ratio:.2f}x (median)")
        if "tflite_ensemble" in by_mode:
            ensemble, single = by_mode["tflite_ensemble"], by_mode["tflite"]
            print(f"TFLite shift ensemble / one pass: latency "
                  f"{ensemble['best_s'] / single['best_s']:.2f}x (best of {_REPEATS.value}); "
                  f"CPU time {ensemble['cpu_median_s'] / single['cpu_median_s']:.2f}x (median); "
                  f"peak RSS {single['peak_rss_mib']} -> {ensemble['peak_rss_mib']} MiB")
        if "max_abs_diff_vs_keras" in by_mode["tflite"]:
            print(f"TFLite vs Keras whole-image output: max abs difference "
                  f"{by_mode['tflite']['max_abs_diff_vs_keras']:.2e} (range [0, 1])")
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}")
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
