"""The fingerprint of a dataset: everything that decides its content, stored beside its shards.

`make_tfrecords` reuses an existing OUTPUT_DIR/NAME only when the fingerprint of the requested
build equals the stored `fingerprint.json`: the same kind and format version, the same options
that change the stored examples (splits, split rules, sizes, bit depth, pixel limit, simulation
preset and seed) and the same input files (path, size in bytes, modification time in ns).
Anything else would hand a user old data under a new command line.
"""
import hashlib
import json
import os

from lowlight_tf import files

FINGERPRINT_FILE = "fingerprint.json"
# Version of this file's layout (not of the dataset).
FORMAT = 1


def file_state(path):
    """Return [size in bytes, modification time in ns] of `path`, or None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def content_digest(path):
    """Return the SHA-256 hex digest of a file's bytes (None when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def make(kind, version, options, input_paths):
    """Return the fingerprint dict of a build.

    Args:
        kind: "images", "pairs" or "simulated".
        version: the dataset format version (data_prep.core.VERSION).
        options: JSON-serialisable {name: value} of everything else that decides the content
            (the caller lists only the options its kind uses, so an ignored flag never refuses
            a reuse).
        input_paths: every input file read (duplicates allowed).

    Returns:
        {"format", "kind", "version", "options", "inputs": {absolute path: [size, mtime_ns]},
        "digest": SHA-256 of the rest}.
    """
    inputs = {os.path.abspath(path): None for path in input_paths}
    inputs = {path: file_state(path) for path in sorted(inputs)}
    body = {"format": FORMAT, "kind": kind, "version": version,
            "options": json.loads(_canonical(options)), "inputs": inputs}
    body["digest"] = hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()
    return body


def read(version_dir):
    """Return the stored fingerprint of a dataset version folder, or None (older datasets)."""
    path = os.path.join(version_dir, FINGERPRINT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write(version_dir, fingerprint):
    """Write `fingerprint` as fingerprint.json into a version folder (atomically)."""
    files.write_json(os.path.join(version_dir, FINGERPRINT_FILE), fingerprint)


def _examples(paths, limit):
    shown = ", ".join(sorted(paths)[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def differences(stored, current, limit=3):
    """Return human-readable lines naming what differs between two fingerprints ([] if equal)."""
    lines = []
    for key in ("kind", "version", "format"):
        if stored.get(key) != current.get(key):
            lines.append(f"{key}: stored {stored.get(key)!r}, now {current.get(key)!r}")
    old_options, new_options = stored.get("options", {}), current.get("options", {})
    for key in sorted(set(old_options) | set(new_options)):
        if _canonical(old_options.get(key)) != _canonical(new_options.get(key)):
            lines.append(f"{key}: stored {old_options.get(key)!r}, now {new_options.get(key)!r}")
    old_inputs, new_inputs = stored.get("inputs", {}), current.get("inputs", {})
    added = [p for p in new_inputs if p not in old_inputs]
    removed = [p for p in old_inputs if p not in new_inputs]
    changed = [p for p in new_inputs if p in old_inputs and old_inputs[p] != new_inputs[p]]
    if added:
        lines.append(f"{len(added)} new input file(s): {_examples(added, limit)}")
    if removed:
        lines.append(f"{len(removed)} input file(s) gone: {_examples(removed, limit)}")
    if changed:
        lines.append(f"{len(changed)} input file(s) changed (size or modification time): "
                     f"{_examples(changed, limit)}")
    return lines
