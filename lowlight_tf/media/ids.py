"""Example ids: integer ranges such as `4-5,29`, file stems, and scene keys (index runs).

An example id is the file path relative to the input root with `/` separators (`low/12.png`).
Datasets such as ELIEI number their captures so that consecutive indices show one scene (often
one bright reference); grouping them keeps near-duplicates out of a test split
(`data_prep.splitting`) and makes a bootstrap resample whole scenes (`lowlight_tf.comparison`).
"""
import collections
import re

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def id_stem(example_id):
    """Return the file name of an id without folders and extension (`a/12.png` -> `12`)."""
    return example_id.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def parse_id_range(item):
    """Parse one listed id: an integer `7` or an inclusive range `4-5` -> (first, last).

    Returns:
        (first, last) ints (first == last for one integer; last < first when written so, for
        the caller to refuse), or None when the item is a name rather than a number.
    """
    match = _RANGE_RE.match(item)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2) or match.group(1))


def index_run_keys(example_ids):
    """Map ids to scene keys: runs of consecutive integer file stems form one scene.

    Ids in different folders never share a run; ids whose stem is not an integer are their own
    scene.

    Args:
        example_ids: iterable of id strings (`low/4.png`).

    Returns:
        dict id -> key such as `run:low/4` (folder and first index of the run), or the id
        itself for a non-integer stem.
    """
    by_folder = collections.defaultdict(list)
    keys = {}
    for example_id in example_ids:
        stem = id_stem(example_id)
        folder = example_id.rsplit("/", 1)[0] if "/" in example_id else ""
        if stem.isdigit():
            by_folder[folder].append((int(stem), example_id))
        else:
            keys[example_id] = example_id
    for folder, numbered in by_folder.items():
        numbered.sort()
        start = previous = None
        for number, example_id in numbered:
            if previous is None or number != previous + 1:
                start = number
            previous = number
            keys[example_id] = f"run:{folder}/{start}"
    return keys
