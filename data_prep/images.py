"""The `images` builder: bright images (camera raw rendered with rawpy, or ordinary images).

Bright sRGB images are what the paper's §3.1 simulation darkens for pretraining (the authors used
RAISE raw photographs rendered to sRGB). Raw files of every LibRaw format are rendered once,
offline, with the camera white balance at 16 bits; ordinary images are stored as they are.

Stored dtype (`bit_depth="auto"`): uint16 when any input is a raw file or a 16-bit image,
otherwise uint8. 8-bit inputs in a uint16 dataset are stored as 257 * v, so reading back
(`lowlight_tf.data.load` divides uint16 by 257) gives exactly the original 8-bit values. Forcing
8 bits rounds 16-bit data to the nearest 8-bit value (smaller files, lossy).
"""
import os

import numpy as np

from data_prep import core
from data_prep import splitting
from lowlight_tf import files
from lowlight_tf.media import decode

DTYPE_RULE = "auto: uint16 if any input is raw or 16-bit, else uint8; 8-bit v kept as 257*v"


def resolve_dtype(bit_depth, paths):
    """Return (numpy dtype, rule text) for `bit_depth` in {"auto", "8", "16"} over input paths.

    With "auto", headers are probed until the first raw or 16-bit file is found.
    """
    if str(bit_depth) == "8":
        return np.dtype(np.uint8), "forced 8-bit (16-bit inputs rounded to 8 bits)"
    if str(bit_depth) == "16":
        return np.dtype(np.uint16), "forced 16-bit (8-bit inputs stored as 257*v)"
    for path in paths:
        if decode.probe_bit_depth(path) == 16:
            return np.dtype(np.uint16), DTYPE_RULE
    return np.dtype(np.uint8), DTYPE_RULE


def scan(input_dir, splits, *, skips, split_overrides=None, bit_depth="auto", max_side=None,
         raw_half_size=False, raw_no_auto_bright=False, split_by="id", split_ids=None,
         max_pixels=files.DEFAULT_MAX_PIXELS):
    """Plan the images dataset: one Item per raw/image file under input_dir.

    Args:
        input_dir: folder tree to read (recursively); several comma-separated folders are read
            as one dataset, ids prefixed with each folder's name (e.g. `clean/x.png`,
            `high/1.png`).
        splits: ordered mapping split name -> fraction (splitting.parse_splits).
        skips: SkipLog (counts ignored non-image files).
        split_overrides: optional {id: split} taking precedence over the id hash.
        split_by, split_ids: scene grouping and explicit assignments (splitting.choose_splits).
        bit_depth: "auto", "8" or "16" (see module docstring).
        max_side: downscale so the longer side is at most this many pixels (None: keep size).
        raw_half_size: render raw files at half resolution.
        raw_no_auto_bright: render raw files without LibRaw's auto-brightening.
        max_pixels: pictures with more pixels are skipped as `too_large` before decoding.

    Returns:
        (items, dtype, dtype_rule).
    """
    roots = [part for part in str(input_dir or "").split(",") if part]
    for root in roots or [input_dir]:
        core.require_dir(root, "input directory")
    if len(roots) == 1:
        files = list(core.iter_input_files(roots[0], skips))
    else:
        # Several folders: ids are prefixed with each folder's name so they stay unique.
        names = [os.path.basename(os.path.normpath(root)) for root in roots]
        if len(set(names)) != len(names):
            raise core.InputError(f"--input_dir folders {roots} share a folder name; ids would "
                                  "collide. Give folders with distinct names.")
        files = [(path, f"{name}/{rel}") for root, name in zip(roots, names)
                 for path, rel in core.iter_input_files(root, skips)]
    dtype, rule = resolve_dtype(bit_depth, (path for path, _ in files))
    chosen = splitting.choose_splits([(i, i) for _, i in files], splits, split_by=split_by,
                                     split_ids=split_ids, overrides=split_overrides)
    items = []
    for (path, example_id), split in zip(files, chosen):
        task = (path, example_id, dtype.str, max_side, bool(raw_half_size),
                bool(raw_no_auto_bright), max_pixels)
        items.append(core.Item(example_id, split, task))
    return items, dtype, rule
