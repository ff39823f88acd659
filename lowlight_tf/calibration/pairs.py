"""Real dark/bright pairs for calibration (paper §3.1): reading, ordering and splitting them.

A pair is two float32 [H, W, 3] images in [0, 255], RGB, of one scene: a dark exposure and its
bright reference. They come from a folder with `low/` and `high/` subfolders of same-named
images or from a pairs dataset `OUTPUT_DIR/NAME[:split]` (tools/make_tfrecords --kind=pairs).
"""
import dataclasses
import os
import re

import numpy as np

from lowlight_tf import data
from lowlight_tf import subsets
from lowlight_tf.media import decode
from lowlight_tf.media import formats


class CalibrationError(ValueError):
    """Unusable calibration input; the message names the path or value and what to do."""


@dataclasses.dataclass
class Pair:
    """One real pair: `dark` and `bright` float32 [H, W, 3] in [0, 255], RGB; `id` a string."""
    id: str
    dark: np.ndarray
    bright: np.ndarray


def read_image(path):
    """Read an image file as float32 [H, W, 3] in [0, 255] (16-bit values divided by 257).

    Decoded by data_prep's reader (the one tools/make_tfrecords uses: 8 or 16 bit, gray
    replicated, alpha dropped), so every damaged file gives the same reasons everywhere.

    Raises:
      CalibrationError: naming the file and why it cannot be read.
    """
    try:
        array, _ = decode.decode_image(path)
    except decode.DecodeError as error:
        raise CalibrationError(f"{path}: {error}. Replace or remove this pair.") from None
    except MemoryError:
        raise CalibrationError(f"{path}: not enough memory to decode this image.") from None
    if array.dtype == np.uint16:
        return array.astype(np.float32) / float(formats.UINT16_PER_UINT8)
    return array.astype(np.float32)


def id_sort_key(pair_id):
    """Sort key putting numeric ids in numeric order ("4" < "29" < "100"), others after."""
    text = os.path.splitext(os.path.basename(str(pair_id)))[0]
    return (0, int(text), "") if text.isdigit() else (1, 0, str(pair_id))


def load_pair_folder(folder):
    """Read a folder with `low/` and `high/` subfolders of same-named images, sorted by id."""
    low_dir, high_dir = os.path.join(folder, "low"), os.path.join(folder, "high")
    if not (os.path.isdir(low_dir) and os.path.isdir(high_dir)):
        raise CalibrationError(f"{folder} must contain the subfolders low/ (dark images) and "
                               "high/ (bright references) with same-named files.")

    def listing(directory):
        return {os.path.splitext(name)[0]: os.path.join(directory, name)
                for name in os.listdir(directory)
                if formats.extension(name) in formats.IMAGE_EXTENSIONS}

    low, high = listing(low_dir), listing(high_dir)
    ids = sorted(set(low) & set(high), key=id_sort_key)
    if not ids:
        raise CalibrationError(f"No pairs in {folder}: low/ and high/ share no image names "
                               f"({len(low)} and {len(high)} images). Name each dark image like "
                               "its reference.")
    pairs = []
    for pair_id in ids:
        dark, bright = read_image(low[pair_id]), read_image(high[pair_id])
        if dark.shape != bright.shape:
            raise CalibrationError(f"Pair {pair_id} in {folder}: low is {dark.shape}, high is "
                                   f"{bright.shape}; pairs must have the same size.")
        pairs.append(Pair(pair_id, dark, bright))
    return pairs


def load_pairs(source, default_split="train", *, fraction=1.0, seed=0):
    """Read pairs from a folder (low/, high/) or a pairs dataset `OUTPUT_DIR/NAME[:split]`.

    Args:
      source: the folder or dataset spec.
      default_split: split read when a dataset spec names none.
      fraction, seed: keep only the subset `lowlight_tf.subsets.select_fraction` keeps (the
        pairs that training with --train_fraction=fraction --seed=seed uses); datasets only.
    Returns:
      list of Pair sorted by id (numeric ids numerically).
    """
    source = str(source)
    if os.path.isdir(os.path.join(source, "low")) or os.path.isdir(os.path.join(source, "high")):
        if fraction != 1.0:
            raise CalibrationError(f"{source}: a fraction of the pairs can only be selected from "
                                   "a pairs dataset (tools/make_tfrecords --kind=pairs), where "
                                   "it matches training's --train_fraction.")
        return load_pair_folder(source)
    try:
        dataset = data.load_spec(source, default_split=default_split)
    except ValueError as error:
        raise CalibrationError(f"{source} is neither a folder with low/ and high/ subfolders nor "
                               "a readable pairs dataset OUTPUT_DIR/NAME[:split]: "
                               f"{error}") from error
    if fraction != 1.0:
        try:
            dataset = subsets.select_fraction(dataset, fraction, seed=seed, what="pairs")
        except ValueError as error:
            raise CalibrationError(f"{source}: {error}") from error
    pairs = []
    for example in dataset.as_numpy_iterator():
        if "dark" not in example:
            raise CalibrationError(f"{source} holds no dark images; calibration needs a pairs "
                                   "dataset (tools/make_tfrecords --kind=pairs) or a low/high "
                                   "folder.")
        pair_id = example["id"].decode() if isinstance(example["id"], bytes) else str(example["id"])
        pairs.append(Pair(pair_id, np.asarray(example["dark"], np.float32),
                          np.asarray(example["bright"], np.float32)))
    if not pairs:
        raise CalibrationError(f"Dataset {source} is empty.")
    return sorted(pairs, key=lambda pair: id_sort_key(pair.id))


def split_pairs(pairs, *, fit_ids=None, holdout_ids=None, fit_first=None):
    """Split pairs into (fit, holdout).

    Args:
      pairs: list of Pair.
      fit_ids: ids (strings) to fit on; or None.
      holdout_ids: ids to report on; None means every pair not fitted on.
      fit_first: fit on the first N pairs in id order (numeric ids numerically); for data where
        consecutive indices are one scene, choose N at a scene boundary.
    Returns:
      (fit, holdout) lists of Pair; disjoint.
    """
    by_id = {pair.id: pair for pair in pairs}
    ordered = sorted(pairs, key=lambda pair: id_sort_key(pair.id))
    if fit_ids:
        unknown = [i for i in fit_ids if i not in by_id]
        if unknown:
            raise CalibrationError(f"Unknown fit id(s) {unknown}; available: {sorted(by_id)}.")
        fit = [by_id[i] for i in fit_ids]
    elif fit_first:
        fit = ordered[:fit_first]
    else:
        fit = ordered
    fitted = {pair.id for pair in fit}
    if holdout_ids:
        unknown = [i for i in holdout_ids if i not in by_id]
        if unknown:
            raise CalibrationError(f"Unknown holdout id(s) {unknown}; available: {sorted(by_id)}.")
        overlap = sorted(fitted & set(holdout_ids))
        if overlap:
            raise CalibrationError(f"Pairs {overlap} are both fitted and held out; the fidelity "
                                   "report must use pairs not used for fitting.")
        holdout = [by_id[i] for i in holdout_ids]
    else:
        holdout = [pair for pair in ordered if pair.id not in fitted]
    if not fit:
        raise CalibrationError("No pairs to fit on; check --fit_ids / --fit_first.")
    return fit, holdout


def parse_id_list(values):
    """Expand ids and numeric ranges ("4,5,97-99" or ["4", "97-99"]) to a list of id strings."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    ids = []
    for value in values:
        value = value.strip()
        match = re.fullmatch(r"(\d+)-(\d+)", value)
        if match:
            ids.extend(str(i) for i in range(int(match.group(1)), int(match.group(2)) + 1))
        elif value:
            ids.append(value)
    return ids
