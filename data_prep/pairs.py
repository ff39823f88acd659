"""The `pairs` builder: real dark/bright pairs for transfer and evaluation (paper §3.4, §4).

Two input layouts:
- folders `low/` and `high/` with matching file names (LOL, ELIEI), at the input root or deeper
  (`DIR/our485/low`, ...); `normal/` is accepted for `high/` (LOL-v2);
- a See-in-the-Dark list file with lines `short_path long_path ISOxxx Fy`, paths relative to the
  input root (SID's `Sony_train_list.txt`). SID file names carry the exposure time
  (`00001_00_0.04s.ARW`, `00001_00_10s.ARW`), giving `exposure_ratio` = 10 / 0.04 = 250.

Raw frames (dark and bright) are rendered without auto-brightening, as the paper's authors and SID
did, so dark frames stay dark; the ratio is stored for callers that amplify. Splits are decided by
a hash of the bright image's path, so SID's several short exposures of one scene (sharing one long
exposure) always land in the same split.
"""
import collections
import os
import re

from data_prep import core
from data_prep import images
from data_prep import splitting
from lowlight_tf import files

# SID file names carry the exposure time: 00001_00_0.04s.ARW, 00001_00_10s.ARW.
_EXPOSURE_RE = re.compile(r"_(\d+(?:\.\d+)?)s\.[A-Za-z0-9]+$")
LOW_NAMES = ("low",)
HIGH_NAMES = ("high", "normal")


def exposure_time_from_name(path):
    """Return the exposure time in seconds parsed from a SID-style name, or None.

    Example: `00001_00_0.04s.ARW` -> 0.04, `00001_00_10s.ARW` -> 10.0.
    """
    match = _EXPOSURE_RE.search(os.path.basename(path))
    return float(match.group(1)) if match else None


def exposure_ratio(dark_path, bright_path):
    """Return bright / dark exposure time from SID-style names, or 0.0 when either is unknown."""
    dark_time = exposure_time_from_name(dark_path)
    bright_time = exposure_time_from_name(bright_path)
    if not dark_time or not bright_time:
        return 0.0
    return float(bright_time) / float(dark_time)


def _child_dirs(path):
    """Return {lowercase name: name} of the sub-folders of path."""
    return {name.lower(): name for name in os.listdir(path)
            if os.path.isdir(os.path.join(path, name)) and not name.startswith(".")}


def _find_pair_roots(input_dir):
    """Return [(root, low_dir, high_dir)] for every folder holding low/ and high/ (or normal/)."""
    roots = []
    for root, dirs, _ in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        children = _child_dirs(root)
        low = next((children[n] for n in LOW_NAMES if n in children), None)
        high = next((children[n] for n in HIGH_NAMES if n in children), None)
        if low and high:
            roots.append((root, os.path.join(root, low), os.path.join(root, high)))
            dirs[:] = [d for d in dirs if d not in (low, high)]
    return roots


def _scan_folders(input_dir, skips):
    """Yield (dark_path, bright_path, id, group_key) from low/ + high/ folder pairs."""
    roots = _find_pair_roots(input_dir)
    if not roots:
        raise core.InputError(
            f"No low/ and high/ folders under {input_dir!r}. Expected {input_dir}/low/NAME and "
            f"{input_dir}/high/NAME with matching file names (LOL/ELIEI layout), or pass a "
            "SID-style list with --pair_list=FILE.")
    for root, low_dir, high_dir in roots:
        prefix = os.path.relpath(root, input_dir).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        high_files = dict((rel, path) for path, rel in core.iter_input_files(high_dir, skips))
        high_by_stem = collections.defaultdict(list)
        for rel in high_files:
            high_by_stem[os.path.splitext(rel)[0]].append(rel)
        used_high = set()
        for dark_path, rel in core.iter_input_files(low_dir, skips):
            example_id = prefix + rel
            match = rel if rel in high_files else None
            if match is None:
                candidates = high_by_stem.get(os.path.splitext(rel)[0], [])
                match = candidates[0] if len(candidates) == 1 else None
            if match is None:
                skips.skip(example_id, f"no matching file in {os.path.basename(high_dir)}/",
                           "unpaired")
                continue
            used_high.add(match)
            bright_rel = os.path.relpath(high_files[match], input_dir).replace(os.sep, "/")
            yield dark_path, high_files[match], example_id, bright_rel
        for rel in sorted(set(high_files) - used_high):
            bright_rel = os.path.relpath(high_files[rel], input_dir).replace(os.sep, "/")
            skips.skip(bright_rel, f"no matching file in {os.path.basename(low_dir)}/",
                       "unpaired")


def _scan_list(list_path, root, skips):
    """Yield (dark_path, bright_path, id, group_key) from a SID-style list file."""
    if not os.path.isfile(list_path):
        raise core.InputError(f"The pair list {list_path!r} does not exist; pass the SID list file "
                              "(lines `short_path long_path ISOxxx Fy`) with --pair_list.")
    list_name = os.path.basename(list_path)
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            tokens = text.split()
            if len(tokens) < 2:
                skips.skip(f"{list_name}:{line_number}",
                           "malformed list line (need `short_path long_path [ISOxxx Fy]`)",
                           "malformed_list_line")
                continue
            dark_rel, bright_rel = (os.path.normpath(t).replace(os.sep, "/") for t in tokens[:2])
            dark_path = os.path.join(root, dark_rel)
            bright_path = os.path.join(root, bright_rel)
            missing = [p for p in (dark_rel, bright_rel)
                       if not os.path.isfile(os.path.join(root, p))]
            if missing:
                skips.skip(dark_rel, f"missing file listed on {list_name} line {line_number} "
                                     f"({', '.join(missing)})", "missing_file")
                continue
            yield dark_path, bright_path, dark_rel, bright_rel


def scan(input_dir, splits, *, skips, pair_list=None, split_overrides=None, bit_depth="auto",
         max_side=None, raw_half_size=False, split_by="id", split_ids=None,
         max_pixels=files.DEFAULT_MAX_PIXELS):
    """Plan the pairs dataset: one Item per dark/bright pair.

    Args:
        input_dir: root of the low/ + high/ folders, or the root the list's paths are relative
            to (None with a list: the list's folder).
        splits: ordered mapping split name -> fraction.
        skips: SkipLog; unmatched files and missing list entries are recorded here.
        pair_list: optional SID-style list file.
        split_overrides: optional {id: split}.
        split_by, split_ids: scene grouping and explicit assignments (splitting.choose_splits).
        bit_depth: "auto" (uint16 when any side is raw or 16-bit), "8" or "16".
        max_side: downscale both images so the longer side is at most this (None: keep).
        raw_half_size: render raw files at half resolution.
        max_pixels: pictures with more pixels are skipped as `too_large` before decoding.

    Returns:
        (items, dtype, dtype_rule).
    """
    if pair_list:
        root = input_dir or os.path.dirname(os.path.abspath(pair_list))
        core.require_dir(root, "input directory (root of the list's paths)")
        found = list(_scan_list(pair_list, os.path.abspath(root), skips))
    else:
        core.require_dir(input_dir, "input directory")
        found = list(_scan_folders(os.path.abspath(input_dir), skips))
    dtype, rule = images.resolve_dtype(
        bit_depth, (p for dark, bright, _, _ in found for p in (dark, bright)))
    chosen = splitting.choose_splits([(f[2], f[3]) for f in found], splits, split_by=split_by,
                                     split_ids=split_ids, overrides=split_overrides)
    items = []
    for (dark_path, bright_path, example_id, _), split in zip(found, chosen):
        task = (dark_path, bright_path, example_id, dtype.str, max_side, bool(raw_half_size),
                exposure_ratio(dark_path, bright_path), max_pixels)
        items.append(core.Item(example_id, split, task))
    return items, dtype, rule
