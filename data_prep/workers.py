"""Decoding tasks run in worker processes by the data job (paper §3.1 bright images, §3.4 pairs).

Import-light on purpose (NumPy, Pillow, rawpy; no TensorFlow): `tools/make_tfrecords
--num_workers=N` spawns processes that import only this module to decode inputs in parallel. Each
task returns ("ok", example dict with PNG-encoded images) or ("skip", reason text, named reason
from `data_prep.summary.SKIP_REASONS`); nothing raises. Every worker runs `exit_with_parent` first,
so a job killed with SIGKILL leaves no decoding process behind.
"""
import os
import threading
import time

import numpy as np

from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import png

# Seconds between two checks of a worker's parent process.
PARENT_CHECK_INTERVAL = 0.25


def exit_with_parent(parent_pid):
    """Make this worker process exit as soon as `parent_pid` is no longer its parent.

    A worker blocked on its task pipe never notices that the job was killed (SIGKILL runs no
    clean-up), and the multiprocessing resource tracker lives as long as any worker holds its
    pipe. A daemon thread polls `os.getppid()` (portable: an orphan is re-parented to init or a
    subreaper) and ends the process with `os._exit`. Used as the pool initializer.
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL)
        os._exit(1)  # pylint: disable=protected-access

    if os.getppid() != parent_pid:
        os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


_ZERO4 = np.zeros(4, np.float32)
# The last decoded bright image, per process: SID lists repeat one long exposure for many shorts.
_BRIGHT_CACHE = {}


def decode_image_task(task):
    """Decode one input into an images example; return ("ok", example) or ("skip", reason).

    Args:
        task: (path, id, dtype str, max_side, raw_half_size, raw_no_auto_bright, max_pixels).

    Returns:
        ("ok", dict) with `bright` (PNG bytes of [H, W, 3] in the dataset dtype; encoded here so
        that workers share the work) and the raw metadata (zeros and "" for ordinary images), or
        ("skip", reason text, named reason).
    """
    path, example_id, dtype, max_side, half_size, no_auto_bright, max_pixels = task
    try:
        image, meta = decode.decode_any(path, half_size=half_size,
                                        no_auto_bright=no_auto_bright, max_pixels=max_pixels)
        image = formats.to_dtype(formats.downscale(image, max_side), np.dtype(dtype))
    except decode.DecodeError as error:
        return ("skip", str(error), error.reason)
    except MemoryError:
        return ("skip", "out of memory while decoding", "too_large")
    except Exception as error:  # pylint: disable=broad-except
        # A decoder bug or an exotic file must not stop the job: name it in the summary.
        return ("skip", f"unexpected error ({type(error).__name__}: {error})", "decoder_error")
    return ("ok", {
        "bright": png.encode_png(image),
        "id": example_id,
        "source_format": meta["source_format"],
        "is_raw": bool(meta["is_raw"]),
        "black_level": meta.get("black_level", _ZERO4),
        "white_level": np.float32(meta.get("white_level", 0.0)),
        "cfa_pattern": meta.get("cfa_pattern", ""),
        "camera_white_balance": meta.get("camera_white_balance", _ZERO4),
    })


def _decode_bright(path, half_size, max_pixels):
    """Decode the bright image, reusing the previous result when the path repeats."""
    key = (path, half_size, max_pixels)
    if key not in _BRIGHT_CACHE:
        _BRIGHT_CACHE.clear()
        _BRIGHT_CACHE[key] = decode.decode_any(path, half_size=half_size, no_auto_bright=True,
                                               max_pixels=max_pixels)
    return _BRIGHT_CACHE[key]


def decode_pair_task(task):
    """Decode one pair; return ("ok", example) or ("skip", reason text, named reason).

    Args:
        task: (dark_path, bright_path, id, dtype str, max_side, raw_half_size, exposure_ratio,
            max_pixels).

    Returns:
        ("ok", dict) with `dark` and `bright` (PNG bytes of [H, W, 3] of the dataset dtype, same
        size), `id`, `source_format` (the dark file's) and `exposure_ratio` (0 when unknown).
    """
    dark_path, bright_path, example_id, dtype, max_side, half_size, ratio, max_pixels = task
    dtype = np.dtype(dtype)
    try:
        try:
            dark, dark_meta = decode.decode_any(dark_path, half_size=half_size,
                                                no_auto_bright=True, max_pixels=max_pixels)
        except decode.DecodeError as error:
            return ("skip", f"dark image: {error}", error.reason)
        try:
            bright, _ = _decode_bright(bright_path, half_size, max_pixels)
        except decode.DecodeError as error:
            return ("skip", f"bright image {os.path.basename(bright_path)}: {error}",
                    error.reason)
        if dark.shape != bright.shape:
            return ("skip", f"size mismatch (dark {dark.shape[0]}x{dark.shape[1]}, "
                            f"bright {bright.shape[0]}x{bright.shape[1]})", "size_mismatch")
        dark = formats.to_dtype(formats.downscale(dark, max_side), dtype)
        bright = formats.to_dtype(formats.downscale(bright, max_side), dtype)
    except MemoryError:
        return ("skip", "out of memory while decoding", "too_large")
    except Exception as error:  # pylint: disable=broad-except
        return ("skip", f"unexpected error ({type(error).__name__}: {error})", "decoder_error")
    return ("ok", {
        "dark": png.encode_png(dark),
        "bright": png.encode_png(bright),
        "id": example_id,
        "source_format": dark_meta["source_format"],
        "exposure_ratio": np.float32(ratio),
    })
