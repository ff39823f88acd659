"""Decoding tasks run in worker processes by the data job (paper §3.1 bright images, §3.4 pairs).

Import-light on purpose (NumPy, Pillow, rawpy; no TensorFlow): `tools/make_tfrecords
--num_workers=N` spawns processes that import only this module to decode inputs in parallel. Each
task returns ("ok", example dict with PNG-encoded images) or ("skip", reason); nothing raises.
"""
import os

import numpy as np

from data_prep import decoding

_ZERO4 = np.zeros(4, np.float32)
# The last decoded bright image, per process: SID lists repeat one long exposure for many shorts.
_BRIGHT_CACHE = {}


def decode_image_task(task):
    """Decode one input into an images example; return ("ok", example) or ("skip", reason).

    Args:
        task: (path, id, dtype str, max_side, raw_half_size, raw_no_auto_bright).

    Returns:
        ("ok", dict) with `bright` (PNG bytes of [H, W, 3] in the dataset dtype; encoded here so
        that workers share the work) and the raw metadata (zeros and "" for ordinary images), or
        ("skip", reason).
    """
    path, example_id, dtype, max_side, half_size, no_auto_bright = task
    try:
        image, meta = decoding.decode_any(path, half_size=half_size,
                                          no_auto_bright=no_auto_bright)
        image = decoding.to_dtype(decoding.downscale(image, max_side), np.dtype(dtype))
    except decoding.DecodeError as error:
        return ("skip", str(error))
    except Exception as error:  # pylint: disable=broad-except
        # A decoder bug or an exotic file must not stop the job: name it in the summary.
        return ("skip", f"unexpected error ({type(error).__name__}: {error})")
    return ("ok", {
        "bright": decoding.encode_png(image),
        "id": example_id,
        "source_format": meta["source_format"],
        "is_raw": bool(meta["is_raw"]),
        "black_level": meta.get("black_level", _ZERO4),
        "white_level": np.float32(meta.get("white_level", 0.0)),
        "cfa_pattern": meta.get("cfa_pattern", ""),
        "camera_white_balance": meta.get("camera_white_balance", _ZERO4),
    })


def _decode_bright(path, half_size):
    """Decode the bright image, reusing the previous result when the path repeats."""
    key = (path, half_size)
    if key not in _BRIGHT_CACHE:
        _BRIGHT_CACHE.clear()
        _BRIGHT_CACHE[key] = decoding.decode_any(path, half_size=half_size, no_auto_bright=True)
    return _BRIGHT_CACHE[key]


def decode_pair_task(task):
    """Decode one pair; return ("ok", example) or ("skip", reason).

    Args:
        task: (dark_path, bright_path, id, dtype str, max_side, raw_half_size, exposure_ratio).

    Returns:
        ("ok", dict) with `dark` and `bright` (PNG bytes of [H, W, 3] of the dataset dtype, same
        size), `id`, `source_format` (the dark file's) and `exposure_ratio` (0 when unknown).
    """
    dark_path, bright_path, example_id, dtype, max_side, half_size, ratio = task
    dtype = np.dtype(dtype)
    try:
        try:
            dark, dark_meta = decoding.decode_any(dark_path, half_size=half_size,
                                                  no_auto_bright=True)
        except decoding.DecodeError as error:
            return ("skip", f"dark image: {error}")
        try:
            bright, _ = _decode_bright(bright_path, half_size)
        except decoding.DecodeError as error:
            return ("skip", f"bright image {os.path.basename(bright_path)}: {error}")
        if dark.shape != bright.shape:
            return ("skip", f"size mismatch (dark {dark.shape[0]}x{dark.shape[1]}, "
                            f"bright {bright.shape[0]}x{bright.shape[1]})")
        dark = decoding.to_dtype(decoding.downscale(dark, max_side), dtype)
        bright = decoding.to_dtype(decoding.downscale(bright, max_side), dtype)
    except Exception as error:  # pylint: disable=broad-except
        return ("skip", f"unexpected error ({type(error).__name__}: {error})")
    return ("ok", {
        "dark": decoding.encode_png(dark),
        "bright": decoding.encode_png(bright),
        "id": example_id,
        "source_format": dark_meta["source_format"],
        "exposure_ratio": np.float32(ratio),
    })
