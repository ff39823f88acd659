"""Reading the TFRecord datasets written by `tools/make_tfrecords` (data for paper §3.2-§4).

A dataset is named `OUTPUT_DIR/NAME[:split]` on every command line; on disk it is
`OUTPUT_DIR/NAME/VERSION/` (TFDS `dataset_info.json`, `*.tfrecord-*` shards, `summary.json`).
`load` streams decoded examples: images as float32 [H, W, 3] in [0, 255] (uint16 data divided by
257), ids as strings, metadata as stored. No raw decoding happens here (see `data_prep/`).
"""
import collections
import json
import os
import re

import tensorflow as tf
import tensorflow_datasets as tfds

from lowlight_tf.media import formats

KINDS = ("images", "pairs", "simulated")
IMAGE_KEYS = ("bright", "dark")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")

DatasetSpec = collections.namedtuple("DatasetSpec", ["output_dir", "name", "split"])


class DatasetError(ValueError):
    """A dataset or split that cannot be read; the message names the path and what to do."""


def parse_dataset_spec(spec, default_split=None):
    """Parse `OUTPUT_DIR/NAME[:split]` into DatasetSpec(output_dir, name, split).

    Args:
        spec: e.g. `/data/tfr/eliei:test` or `tfr/sample` (relative paths kept relative).
        default_split: split when the spec has none (may be None).

    Returns:
        DatasetSpec; `split` may carry a TFDS slice such as `train[:50%]`.

    Raises:
        DatasetError: empty spec, or no NAME component.
    """
    text = str(spec or "").strip()
    if not text:
        raise DatasetError(
            "Empty dataset spec; write OUTPUT_DIR/NAME[:split], e.g. tfr/eliei:test.")
    path, split = text, None
    colon = text.find(":", text.rfind("/") + 1)  # the split follows NAME; slices may hold ':'
    if colon >= 0:
        path, split = text[:colon], text[colon + 1:]
    path = path.rstrip("/")
    output_dir, name = os.path.split(path)
    if not name:
        raise DatasetError(f"Dataset spec {spec!r} has no NAME; write OUTPUT_DIR/NAME[:split].")
    return DatasetSpec(output_dir or ".", name, split if split else default_split)


def dataset_dir(output_dir, name):
    """Return `OUTPUT_DIR/NAME/VERSION` of the newest complete version (with dataset_info.json).

    Raises:
        DatasetError: when no complete dataset exists there.
    """
    base = os.path.join(output_dir, name)
    versions = []
    if os.path.isdir(base):
        for entry in os.listdir(base):
            if _VERSION_RE.match(entry) and os.path.isfile(
                    os.path.join(base, entry, "dataset_info.json")):
                versions.append(tuple(int(v) for v in entry.split(".")))
    if not versions:
        raise DatasetError(
            f"No dataset at {base!r} (expected {base}/VERSION/dataset_info.json). Create it with "
            f"`make_tfrecords --output_dir={output_dir} --name={name} ...`, or check the "
            "OUTPUT_DIR/NAME spelling.")
    return os.path.join(base, ".".join(str(v) for v in max(versions)))


def _builder(output_dir, name):
    """Return the TFDS read-only builder of a dataset."""
    path = dataset_dir(output_dir, name)
    try:
        return tfds.builder_from_directory(path)
    except Exception as error:  # pylint: disable=broad-except
        raise DatasetError(f"Cannot read the dataset at {path!r} ({error}); rebuild it with "
                           "`make_tfrecords ... --overwrite`.") from error


def dataset_kind(output_dir, name):
    """Return "images", "pairs" or "simulated" from the stored features."""
    keys = set(_builder(output_dir, name).info.features.keys())
    if "params" in keys:
        return "simulated"
    if "dark" in keys:
        return "pairs"
    return "images"


def _check_split(builder, output_dir, name, split):
    """Raise DatasetError unless the (possibly sliced) split exists."""
    if not split:
        raise DatasetError(f"No split given for dataset {output_dir}/{name}; write "
                           f"{output_dir}/{name}:SPLIT with one of {sorted(builder.info.splits)}.")
    base = re.split(r"[\[+]", str(split), maxsplit=1)[0]
    if base not in builder.info.splits:
        raise DatasetError(
            f"Dataset {output_dir}/{name} has no split {base!r}; available: "
            f"{', '.join(builder.info.splits) or 'none'}. Rebuild with --splits=... to add it.")


def num_examples(output_dir, name, split):
    """Return the number of examples of a split (int)."""
    builder = _builder(output_dir, name)
    _check_split(builder, output_dir, name, split)
    return int(builder.info.splits[split].num_examples)


def num_shards(output_dir, name, split):
    """Return the number of TFRecord files of a split (int; a slice counts its whole split)."""
    builder = _builder(output_dir, name)
    _check_split(builder, output_dir, name, split)
    base = re.split(r"[\[+]", str(split), maxsplit=1)[0]
    return int(builder.info.splits[base].num_shards)


def splits(output_dir, name):
    """Return {split name: number of examples}."""
    info = _builder(output_dir, name).info
    return {split: int(info.splits[split].num_examples) for split in info.splits}


def read_summary(output_dir, name):
    """Return the dataset's summary.json as a dict ({} when absent)."""
    path = os.path.join(dataset_dir(output_dir, name), "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_stored(output_dir, name, split, *, file_shard=None, readers=None):
    """Return a tf.data.Dataset of examples exactly as stored (uint8/uint16 images).

    Deterministic order (files not shuffled). `file_shard=(index, count)` reads only the
    index-th of `count` disjoint sets of the split's files (one input pipeline of several
    workers; the split needs at least `count` files, `num_shards`). `readers` is the number of
    files read at once (TFDS's interleave cycle length; None: TFDS's default of 16): each reader
    holds decoded examples, so streaming full-size images wants few. Raises DatasetError for a
    missing dataset/split.
    """
    builder = _builder(output_dir, name)
    _check_split(builder, output_dir, name, split)
    read_options = {}
    if file_shard is not None:
        index, count = file_shard
        read_options["input_context"] = tf.distribute.InputContext(
            num_input_pipelines=count, input_pipeline_id=index)
    if readers is not None:
        read_options["interleave_cycle_length"] = int(readers)
    read_config = tfds.ReadConfig(**read_options) if read_options else None
    return builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)


def to_float_image(image):
    """Map a uint8 [0, 255] or uint16 [0, 65535] image to float32 in [0, 255] (uint16 / 257)."""
    if image.dtype == tf.uint16:
        return tf.cast(image, tf.float32) / float(formats.UINT16_PER_UINT8)
    return tf.cast(image, tf.float32)


def _to_float(example):
    """Convert the stored image features of one example to float32 [0, 255]."""
    example = dict(example)
    for key in IMAGE_KEYS:
        if key in example:
            example[key] = to_float_image(example[key])
    return example


def load(output_dir, name, split, *, file_shard=None, readers=None):
    """Return a tf.data.Dataset of decoded example dicts.

    Args:
        output_dir: the --output_dir given to make_tfrecords.
        name: the dataset NAME.
        split: e.g. "train", "test" (TFDS slices like "train[:10]" work too).
        file_shard: None, or (index, count): read only that set of the split's files (see
            `load_stored`).
        readers: files read at once (see `load_stored`); None for TFDS's default.

    Returns:
        tf.data.Dataset of dicts: `bright` (and `dark` for pairs and simulated) float32
        [H, W, 3] in [0, 255]; `id` tf.string; the other stored features as stored
        (docs/interfaces.md "Stored features"). Order is deterministic.

    Raises:
        DatasetError: missing dataset or split, with the path and what to do.
    """
    return load_stored(output_dir, name, split, file_shard=file_shard, readers=readers).map(
        _to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load_spec(spec, default_split="train"):
    """Return load(...) for a command-line spec `OUTPUT_DIR/NAME[:split]`."""
    parsed = parse_dataset_spec(spec, default_split=default_split)
    return load(parsed.output_dir, parsed.name, parsed.split)
