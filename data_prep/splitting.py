"""Deterministic train/val/test splits by a hash of each example's id.

The paper (§4) evaluates on held-out images; a split decided by a hash of the id (not by the file
order or a random draw) keeps every image in the same split across runs, machines and re-runs
with more data, so a test image never leaks into training.
"""
import collections
import hashlib
import re

from lowlight_tf.media import ids

_SPLIT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_splits(text):
    """Parse `train:0.8,val:0.1,test:0.1` into an ordered dict of split name -> fraction.

    Args:
        text: comma-separated `name:fraction` items; fractions in (0, 1] summing to 1.

    Returns:
        collections.OrderedDict name -> float.

    Raises:
        ValueError: with the offending item, for bad names, duplicates, bad numbers or sums.
    """
    splits = collections.OrderedDict()
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not _SPLIT_NAME_RE.match(name):
            raise ValueError(
                f"bad split item {item!r}: write name:fraction, e.g. train:0.8,val:0.1,test:0.1 "
                "(names are lowercase letters, digits and _)")
        if name in splits:
            raise ValueError(f"split {name!r} is given twice in {text!r}")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"bad fraction {value!r} for split {name!r} in {text!r}") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction {fraction} for split {name!r} must lie in (0, 1]")
        splits[name] = fraction
    if not splits:
        raise ValueError(f"no splits in {text!r}; e.g. train:0.8,val:0.1,test:0.1")
    total = sum(splits.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions in {text!r} sum to {total:g}; they must sum to 1")
    return splits


def hash_fraction(key):
    """Return a stable number in [0, 1) from a string key (SHA-256, same on every machine)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def hash_int31(key):
    """Return a stable non-negative 31-bit integer from a string key (for per-example seeds)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[8:12], "big") & 0x7FFFFFFF


def assign_split(key, splits):
    """Return the split name for `key`: cumulative fractions over hash_fraction(key).

    Args:
        key: the example's id (or group key, e.g. the bright image shared by several pairs).
        splits: ordered mapping name -> fraction (as from parse_splits).
    """
    position = hash_fraction(key)
    cumulative = 0.0
    name = None
    for name, fraction in splits.items():
        cumulative += fraction
        if position < cumulative:
            return name
    return name  # Rounding at the top end: the last split.


def parse_split_ids(values):
    """Parse explicit assignments like `calib:4-5,29,38` into [(split, numbers, names)].

    Each value names one split and a comma-separated list of file stems: integers, integer ranges
    `a-b` (inclusive) or plain names. An example whose file stem is listed goes to that split,
    whatever the hash says; this is how a scene-disjoint calibration set is fixed by hand.

    Raises:
        ValueError: for a value without `split:`, a bad split name, or an empty list.
    """
    rules = []
    for value in values or ():
        name, sep, listed = str(value).partition(":")
        name = name.strip()
        if not sep or not _SPLIT_NAME_RE.match(name) or not listed.strip():
            raise ValueError(f"bad --split_ids value {value!r}: write split:ids, e.g. "
                             "calib:4-5,29,38 (file stems, integer ranges allowed)")
        numbers, names = set(), set()
        for item, bounds in _listed_items(listed):
            if bounds:
                first, last = bounds
                if last < first:
                    raise ValueError(f"bad range {item!r} in --split_ids value {value!r}")
                numbers.update(range(first, last + 1))
            else:
                names.add(item)
        rules.append((name, numbers, names))
    return rules


def _listed_items(listed):
    """Yield (item, (first, last) or None) for each non-empty item of a comma-separated list."""
    for item in (part.strip() for part in listed.split(",")):
        if item:
            yield item, ids.parse_id_range(item)


def explicit_split(example_id, rules):
    """Return the split that `rules` (from parse_split_ids) give `example_id`, or None."""
    stem = ids.id_stem(example_id)
    for name, numbers, names in rules:
        if stem in names or example_id in names or (stem.isdigit() and int(stem) in numbers):
            return name
    return None


def unmatched_split_ids(values, example_ids):
    """Return the `--split_ids` items that match no example, as ["split:item", ...].

    Each comma-separated item (a file stem, an integer or a range `a-b`) must match at least one
    id; a range matches when any number in it does. An unmatched item is almost always a typo or
    the wrong input folder, and would otherwise leave its split silently empty.

    Args:
        values: the raw `--split_ids` values (already valid for parse_split_ids).
        example_ids: every planned example id.
    """
    stems = set()
    numbers = set()
    for example_id in example_ids:
        stem = ids.id_stem(example_id)
        stems.update((stem, example_id))
        if stem.isdigit():
            numbers.add(int(stem))
    unmatched = []
    for value in values or ():
        name, _, listed = str(value).partition(":")
        for item, bounds in _listed_items(listed):
            if bounds:
                first, last = bounds
                found = any(first <= number <= last for number in numbers)
            else:
                found = item in stems
            if not found:
                unmatched.append(f"{name.strip()}:{item}")
    return unmatched


def choose_splits(examples, splits, *, split_by="id", split_ids=None, overrides=None):
    """Assign a split to every example.

    Args:
        examples: list of (example_id, group_key): the group key is what the hash sees by default
            (the id itself, or the bright image shared by several pairs).
        splits: ordered mapping name -> fraction.
        split_by: "id" (hash the group key) or "index_run" (hash the scene, a run of consecutive
            integer file stems: `lowlight_tf.media.ids.index_run_keys`).
        split_ids: rules from parse_split_ids; they take precedence over the hash.
        overrides: optional {id: split}, taking precedence over everything.

    Returns:
        list of split names, parallel to `examples`.
    """
    if split_by not in ("id", "index_run"):
        raise ValueError(f"split_by={split_by!r} must be 'id' or 'index_run'")
    run_keys = ids.index_run_keys([i for i, _ in examples]) if split_by == "index_run" else {}
    overrides = overrides or {}
    chosen = []
    for example_id, group_key in examples:
        split = (overrides.get(example_id) or explicit_split(example_id, split_ids or ())
                 or assign_split(run_keys.get(example_id, group_key), splits))
        chosen.append(split)
    return chosen
