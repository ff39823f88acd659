#!/usr/bin/env python3
"""Inference throughput and peak memory of the paper's U-Net (§3.2) on a large image.

Each measurement runs in its own subprocess, so its peak resident memory (getrusage ru_maxrss of
that process) is its own: whole-image inference, tiled inference (overlapping tiles blended with
a smooth window, lowlight_tf.inference), optionally tools/enhance's whole path on a 24-MP photo
(decode, tiles, write), and the identical U-Net in PyTorch when torch is importable.

  python benchmarks/inference.py                       # 12 MP, whole vs tiled (+ torch peer)
  python benchmarks/inference.py --modes=whole,tiled,enhance --megapixels=12
  python benchmarks/inference.py --modes=enhance,enhance_exposure --repeats=2
  python benchmarks/inference.py --modes=enhance,enhance_nochroma   # the chroma filter's cost
  python benchmarks/inference.py --modes=enhance,enhance_portrait   # turning a portrait upright
  python benchmarks/inference.py --modes=enhance,enhance_single     # the shift ensemble's cost
  python benchmarks/inference.py --tile=512 --overlap=64

Weights are random (speed and memory do not depend on them); the default model is the paper's
(32 base filters, depth 4). Prints one table and writes it as JSON with --output_json.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_MODES = flags.DEFINE_list(
    "modes", ["whole", "tiled", "torch"],
    "Measurements to run, each in a fresh process: whole (the image at once), tiled (--tile "
    "and --overlap), enhance (tools/enhance's path on a --enhance_megapixels PNG: decode, tiled "
    "inference, write), enhance_exposure (the same with a calibrated exposure curve: "
    "brightness.anchor_exposure), enhance_nochroma (enhance without its default chroma filter, "
    "chroma.filter_chroma), enhance_portrait (enhance of the same photo stored sideways with "
    "EXIF Orientation 6, as phones store a portrait: the output is turned upright), "
    "enhance_single (enhance without its default shift ensemble: the model runs once), torch "
    "(the same U-Net in PyTorch, whole image; skipped when torch is not importable).")
_MEGAPIXELS = flags.DEFINE_float(
    "megapixels", 12.0, "Image size in megapixels, 4:3 aspect ratio.", lower_bound=0.01)
_ENHANCE_MEGAPIXELS = flags.DEFINE_float(
    "enhance_megapixels", 24.0, "Image size for the enhance mode, 3:2 aspect ratio.",
    lower_bound=0.01)
_TILE = flags.DEFINE_integer("tile", 1024, "Tile side in pixels for the tiled modes.",
                             lower_bound=32)
_OVERLAP = flags.DEFINE_integer("overlap", 32, "Tile overlap in pixels.", lower_bound=0)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Timed runs per mode after one warm-up call on a tile-sized image; the best "
    "is reported.", lower_bound=1)
_BASE_FILTERS = flags.DEFINE_integer("base_filters", 32, "U-Net base filters (paper: 32).",
                                     lower_bound=1)
_DEPTH = flags.DEFINE_integer("depth", 4, "U-Net depth (paper: 4).", lower_bound=1)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the results here as JSON.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one mode in this process.")
_ENHANCE_INPUT = flags.DEFINE_string("enhance_input", None,
                                     "Internal: the photo the enhance mode reads.")

ALL_MODES = ("whole", "tiled", "enhance", "enhance_exposure", "enhance_nochroma",
             "enhance_portrait", "enhance_single", "torch")
ENHANCE_MODES = ("enhance", "enhance_exposure", "enhance_nochroma", "enhance_portrait",
                 "enhance_single")
PORTRAIT_ORIENTATION = 6  # EXIF: stored turned 90 degrees, as a phone held upright stores it


def _size(megapixels, aspect):
    """(height, width), multiples of 16, with width / height = aspect."""
    height = int(round((megapixels * 1e6 / aspect) ** 0.5 / 16)) * 16
    return height, int(round(height * aspect / 16)) * 16


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child_tf(mode):
    """Runs one TensorFlow mode; returns its result dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from lowlight_tf import enhance as enhance_lib
    from lowlight_tf import inference
    from lowlight_tf import model as model_lib

    keras.utils.set_random_seed(0)
    model = model_lib.build_unet("rgb", base_filters=_BASE_FILTERS.value, depth=_DEPTH.value)
    rng = np.random.default_rng(0)
    tile = _TILE.value if mode in ("tiled",) + ENHANCE_MODES else None
    shift_ensemble = mode in ENHANCE_MODES and mode != "enhance_single"  # enhance's default
    # Warm-up: traces the tf.function and builds the oneDNN kernels of the tile shape.
    warm = rng.uniform(0, 40, (_TILE.value, _TILE.value, 3)).astype(np.float32)
    inference.predict_image(model, warm, tile=tile, overlap=_OVERLAP.value,
                            shift_ensemble=shift_ensemble)
    del warm
    rss_before = _peak_rss_mib()
    if mode in ENHANCE_MODES:
        path = _ENHANCE_INPUT.value
        exposure_curve = None  # a camera curve: dark value d -> about 8 d, saturating
        if mode == "enhance_exposure":
            exposure_curve = np.tile(np.minimum(8.0 * np.arange(256.0), 255.0), (3, 1))
        with tempfile.TemporaryDirectory() as tmp:
            seconds = []
            for _ in range(_REPEATS.value):
                start = time.perf_counter()
                options = enhance_lib.EnhanceOptions(
                    tile=tile, overlap=_OVERLAP.value, exposure_curve=exposure_curve,
                    chroma_filter=mode != "enhance_nochroma", shift_ensemble=shift_ensemble)
                output = enhance_lib.enhance_file(model, path, tmp, options,
                                                  overwrite=True)  # each repeat rewrites it
                seconds.append(time.perf_counter() - start)
            from PIL import Image
            with Image.open(output) as im:
                width, height = im.size
        megapixels = height * width / 1e6
    else:
        height, width = _size(_MEGAPIXELS.value, 4 / 3)
        image = rng.uniform(0, 40, (height, width, 3)).astype(np.float32)
        seconds = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            inference.predict_image(model, image, tile=tile, overlap=_OVERLAP.value)
            seconds.append(time.perf_counter() - start)
        megapixels = height * width / 1e6
    best = min(seconds)
    return {"mode": mode, "framework": "tensorflow", "height": height, "width": width,
            "megapixels": round(megapixels, 2), "seconds": round(best, 2),
            "mpix_per_s": round(megapixels / best, 3),
            "peak_rss_mib": round(_peak_rss_mib(), 0),
            "rss_before_mib": round(rss_before, 0),
            "tile": tile, "overlap": _OVERLAP.value if tile else None}


def _child_torch():
    """The identical U-Net in PyTorch (whole image, float32, CPU); None when torch is absent."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    import numpy as np

    base, depth = _BASE_FILTERS.value, _DEPTH.value

    def conv_pair(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2 ** i for i in range(depth + 1)]
            cin = 12
            self.down = nn.ModuleList()
            for w in widths[:-1]:
                self.down.append(conv_pair(cin, w))
                cin = w
            self.bottleneck = conv_pair(cin, widths[-1])
            self.upconv = nn.ModuleList()
            self.up = nn.ModuleList()
            for i in range(depth - 1, -1, -1):
                self.upconv.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
                self.up.append(conv_pair(widths[i] * 2, widths[i]))
            self.head = nn.Conv2d(base, 12, 1)

        def forward(self, x):
            x = nn.functional.pixel_unshuffle(x, 2)
            skips = []
            for block in self.down:
                x = block(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for upconv, block in zip(self.upconv, self.up):
                x = block(torch.cat([upconv(x), skips.pop()], dim=1))
            return nn.functional.pixel_shuffle(self.head(x), 2)

    torch.manual_seed(0)
    model = UNet().eval()
    height, width = _size(_MEGAPIXELS.value, 4 / 3)
    height, width = height // 32 * 32, width // 32 * 32
    with torch.inference_mode():
        model(torch.rand(1, 3, 256, 256))
        rss_before = _peak_rss_mib()
        image = torch.from_numpy(
            np.random.default_rng(0).uniform(0, 0.15, (1, 3, height, width)).astype(np.float32))
        seconds = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            model(image)
            seconds.append(time.perf_counter() - start)
    best = min(seconds)
    megapixels = height * width / 1e6
    return {"mode": "whole", "framework": f"pytorch {torch.__version__}", "height": height,
            "width": width, "megapixels": round(megapixels, 2), "seconds": round(best, 2),
            "mpix_per_s": round(megapixels / best, 3), "peak_rss_mib": round(_peak_rss_mib(), 0),
            "rss_before_mib": round(rss_before, 0), "tile": None, "overlap": None}


def _write_photo(path, megapixels, orientation=1):
    """Writes an 8-bit 3:2 PNG of a dark gradient with noise (made in the parent process, so the
    child's peak memory is only the enhancement's), tagged with EXIF `orientation`."""
    import numpy as np
    from PIL import Image
    height, width = _size(megapixels, 1.5)
    rng = np.random.default_rng(0)
    row = np.clip(np.linspace(0, 30, width)[:, None] + rng.normal(0, 3, (width, 3)), 0, 255)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = row.astype(np.uint8)[None]
    image[::7] //= 2  # some vertical structure
    from lowlight_tf.media import header
    tags = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[header.ORIENTATION_TAG] = orientation
        tags["exif"] = exif
    Image.fromarray(image).save(path, compress_level=1, **tags)


def _run_child(mode, argv):
    """Runs `mode` in a fresh interpreter; returns its result dict or an error/skip dict."""
    flags_passed = [a for a in argv[1:] if not a.startswith("--child")]
    command = [sys.executable, os.path.abspath(__file__), f"--child={mode}"] + flags_passed
    if mode in ENHANCE_MODES:
        handle, path = tempfile.mkstemp(suffix=".png")
        os.close(handle)
        try:
            _write_photo(path, _ENHANCE_MEGAPIXELS.value,
                         PORTRAIT_ORIENTATION if mode == "enhance_portrait" else 1)
            return _run_command(mode, command + [f"--enhance_input={path}"])
        finally:
            os.remove(path)
    return _run_command(mode, command)


def _run_command(mode, command):
    """Runs a child command; returns the JSON dict it printed last, or an error dict."""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"mode": mode, "error": f"exit {completed.returncode}: "
                                   f"{completed.stderr.strip().splitlines()[-1:]}"}


def main(argv):
    if _CHILD.value:
        if _CHILD.value == "torch":
            result = _child_torch() or {"mode": "torch", "skipped": "torch is not importable"}
        else:
            result = _child_tf(_CHILD.value)
        print(json.dumps(result))
        return
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    unknown = [m for m in _MODES.value if m not in ALL_MODES]
    if unknown:
        raise app.UsageError(f"Unknown --modes {unknown}; choose from {ALL_MODES}.", exitcode=2)
    results = []
    print(f"U-Net base_filters={_BASE_FILTERS.value} depth={_DEPTH.value}, {os.cpu_count()} CPU "
          f"cores; one process per mode", flush=True)
    for mode in _MODES.value:
        print(f"running {mode} ...", flush=True)
        results.append(_run_child(mode, sys.argv))
    print(f"{'mode':<8} {'framework':<18} {'size':>11} {'MPix/s':>8} {'seconds':>8} "
          f"{'peak RSS MiB':>12}")
    for r in results:
        if "skipped" in r or "error" in r:
            print(f"{r['mode']:<8} {r.get('skipped') or r.get('error')}")
            continue
        size = f"{r['width']}x{r['height']}"
        print(f"{r['mode']:<8} {r['framework']:<18} {size:>11} {r['mpix_per_s']:>8.3f} "
              f"{r['seconds']:>8.2f} {r['peak_rss_mib']:>12.0f}")
    timed = {r["mode"]: r for r in results if "mpix_per_s" in r and r["framework"] == "tensorflow"}
    if "whole" in timed and "tiled" in timed:
        print(f"tiled / whole throughput: "
              f"{timed['tiled']['mpix_per_s'] / timed['whole']['mpix_per_s']:.1%}")
    if "enhance" in timed and "enhance_exposure" in timed:
        plain, anchored = timed["enhance"], timed["enhance_exposure"]
        print(f"enhance with / without calibrated exposure: throughput "
              f"{anchored['mpix_per_s'] / plain['mpix_per_s']:.1%}, "
              f"peak RSS {anchored['peak_rss_mib'] / plain['peak_rss_mib']:.2f}x")
    if "enhance" in timed and "enhance_nochroma" in timed:
        plain, unfiltered = timed["enhance"], timed["enhance_nochroma"]
        print(f"enhance with / without the chroma filter: throughput "
              f"{plain['mpix_per_s'] / unfiltered['mpix_per_s']:.1%}, "
              f"peak RSS {plain['peak_rss_mib'] / unfiltered['peak_rss_mib']:.2f}x")
    if "enhance" in timed and "enhance_portrait" in timed:
        plain, portrait = timed["enhance"], timed["enhance_portrait"]
        print(f"enhance of a portrait (EXIF Orientation {PORTRAIT_ORIENTATION}) / as stored: "
              f"throughput {portrait['mpix_per_s'] / plain['mpix_per_s']:.1%}, "
              f"peak RSS {portrait['peak_rss_mib'] / plain['peak_rss_mib']:.2f}x")
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as f:
            json.dump({"results": results}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
