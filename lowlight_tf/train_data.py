"""The data of a training run (paper §3.2): dataset specs -> input pipelines for Keras fit.

Resolves `--train_data`/`--val_data` (the embedded sample data is built by a caller-supplied
builder), chooses the cache (`--cache`) and how several workers split the input
(`distribute.shard_policy`), optionally sends the pipeline to a tf.data service, and picks the
example patches TensorBoard shows.
"""
import struct

import tensorflow as tf
import tensorflow_datasets as tfds

from lowlight_tf import data
from lowlight_tf import distribute
from lowlight_tf import pipeline
from lowlight_tf import pipeline_cache
from lowlight_tf import progress
from lowlight_tf import simulation
from lowlight_tf.train_config import NO_VALIDATION, SAMPLE, ConfigError

_WORKER_SEED_STRIDE = 7919  # a prime: worker k's simulated patches use seed + k * stride


def _data_specs(config, sample_datasets=None):
    """Returns (train_spec, val_spec or None), building the sample datasets when asked to.

    `sample_datasets(root)` builds (or reuses) them and returns {split: spec}; the caller hands
    it in (tools/train: data_prep.sample_photos.ensure_sample_datasets), since this package
    never imports data_prep.
    """
    train_spec, val_spec = config.train_data, config.val_data
    if SAMPLE in (train_spec, val_spec):
        if sample_datasets is None:
            raise ConfigError(f"--train_data={SAMPLE} needs the builder of the embedded sample "
                              "datasets: run tools/train, pass sample_datasets= to train(), or "
                              "give dataset specs for --train_data and --val_data.")
        specs = sample_datasets(config.sample_root)
        train_spec = specs["train"] if train_spec == SAMPLE else train_spec
        val_spec = specs["val"] if val_spec == SAMPLE else val_spec
    return train_spec, (None if val_spec == NO_VALIDATION else val_spec)


def _load_source(spec, default_split, what, file_shard=None, readers=None):
    """Loads a dataset spec; returns (dataset, kind, count). Raises ConfigError when empty.

    `file_shard` (index, count) reads only that set of the files and `readers` files at once
    (`data.load`); `count` is the whole split's number of examples.
    """
    try:
        parsed = data.parse_dataset_spec(spec, default_split=default_split)
        source = data.load(parsed.output_dir, parsed.name, parsed.split, file_shard=file_shard,
                           readers=readers)
        kind = data.dataset_kind(parsed.output_dir, parsed.name)
        count = data.num_examples(parsed.output_dir, parsed.name, parsed.split)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--{what}={spec}: {e}") from e
    if count == 0:
        raise ConfigError(f"--{what}={spec} holds no examples; check the split name or rebuild "
                          "it with tools/make_tfrecords.")
    return source, kind, count


def _train_dataset(config, spec, preset, steps, worker):
    """The training pipeline of `spec` and its description line (cache, sharding).

    `worker` is (this worker's index, number of workers).
    """
    index, workers = worker
    try:
        parsed = data.parse_dataset_spec(spec, default_split="train")
        files = data.num_shards(parsed.output_dir, parsed.name, parsed.split)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--train_data={spec}: {e}") from e
    policy = distribute.shard_policy(files, workers)
    file_shard = (index, workers) if workers > 1 and policy == "FILE" else None
    source, kind, count = _load_source(spec, "train", "train_data", file_shard=file_shard)
    simulated_share = _simulated_share(config, kind)
    try:
        cache, megabytes = pipeline_cache.cache_mode(
            config.cache, source, count=count, budget_mb=config.cache_budget_mb,
            patch_size=config.patch_size)
        if cache == "none":  # streaming: few files at once, each reader holds full-size images
            source, _, _ = _load_source(spec, "train", "train_data", file_shard=file_shard,
                                        readers=pipeline.STREAM_READERS)
        dataset = pipeline.train_dataset(
            source, patch_size=config.patch_size, batch_size=config.batch_size - simulated_share,
            seed=config.seed, simulation=preset if kind == "images" else None,
            simulation_steps=steps, train_fraction=config.train_fraction, cache=cache,
            dim_fraction=config.dim_fraction if kind == "images" else 0.0,
            exposure_normalization=pipeline_exposure(config))
    except ValueError as e:
        raise ConfigError(f"--train_data={spec}: {e}") from e
    simulated = f", simulated {'+'.join(steps)}" if kind == "images" else ""
    if simulated_share:
        dataset, mixed = _with_simulated(config, dataset, simulated_share, preset, steps, index)
        simulated += mixed
    dataset = distribute.shard_input(dataset, policy)
    if config.data_service:
        dataset = pipeline_cache.through_data_service(dataset, config.data_service)
    estimate = f", about {megabytes:,.0f} MiB decoded" if megabytes is not None else ""
    sharding = (f"; {files} file(s) split between {workers} workers by {policy}"
                if workers > 1 else "")
    sharding += f"; tf.data service {config.data_service}" if config.data_service else ""
    return dataset, (f"train: {spec} ({kind}, {count} examples, fraction "
                     f"{config.train_fraction:g}{simulated}; cache {cache}{estimate}{sharding})")


def pipeline_exposure(config):
    """The target mean the input pipeline normalises patches to, 0 when the model does it.

    Non-zero for an exposure-normalising model trained with --exposure_gain=image: each patch
    gets its whole image's gain in the pipeline (`pipeline.train_dataset`), and `training`
    fits the model with its own layer passed through (`exposure.exposure_applied_outside`).
    """
    if config.exposure_gain != "image":
        return 0.0
    return config.exposure_normalization or 0.0  # None: a config not yet resolved


def simulated_count(fraction, batch_size):
    """Simulated patches per batch for --simulated_fraction: round(fraction * batch_size).

    Raises ConfigError unless it leaves at least one real and one simulated patch per batch.
    """
    count = int(round(fraction * batch_size))
    if not 0 < count < batch_size:
        raise ConfigError(
            f"--simulated_fraction={fraction:g} with --batch_size={batch_size} gives {count} "
            f"simulated patches per batch; choose a fraction that leaves 1 to {batch_size - 1} "
            "of them (or 0 and no --simulated_data for real pairs only).")
    return count


def _simulated_share(config, kind):
    """Simulated patches per batch of the training pipeline: 0, or `simulated_count` with
    --simulated_data and --simulated_fraction on paired data (ConfigError for half a mix)."""
    if not (config.simulated_fraction or config.simulated_data):
        return 0
    if kind == "images" or not config.simulated_data or not config.simulated_fraction:
        raise ConfigError(
            "--simulated_data and --simulated_fraction go together, with paired --train_data "
            f"(got --simulated_data={config.simulated_data!r}, --simulated_fraction="
            f"{config.simulated_fraction:g}, a training set of {kind}).")
    return simulated_count(config.simulated_fraction, config.batch_size)


def _with_simulated(config, real, count, preset, steps, worker_index):
    """Mix simulated pairs into every batch of a paired training pipeline (beyond the paper).

    `real` yields batches of `config.batch_size - count` pairs; the result yields batches of
    `config.batch_size` whose last `count` patches are simulated from `config.simulated_data`
    with `preset` (float32 [batch_size, patch_size, patch_size, 3] in [0, 1], both parts drawn
    with their own seeded pipeline, so the batches are reproducible). Every worker reads all of
    the simulated data with its own seed (`worker_index`), so workers draw different simulated
    patches whatever the real pairs' sharding. Returns (dataset, note).
    """
    source, sim_kind, sim_count = _load_source(config.simulated_data, "train", "simulated_data")
    if sim_kind != "images":
        raise ConfigError(f"--simulated_data={config.simulated_data} holds {sim_kind}; it must "
                          "be a bright-only images dataset (tools/make_tfrecords --kind=images).")
    try:
        simulated = pipeline.train_dataset(
            source, patch_size=config.patch_size, batch_size=count,
            seed=config.seed + _WORKER_SEED_STRIDE * worker_index,
            simulation=preset, simulation_steps=steps, dim_fraction=config.dim_fraction,
            exposure_normalization=pipeline_exposure(config),
            cache=pipeline_cache.cache_mode(  # a disk cache's path belongs to the real pairs
                "auto" if config.cache.startswith("disk:") else config.cache, source,
                count=sim_count, budget_mb=config.cache_budget_mb)[0])
    except ValueError as e:
        raise ConfigError(f"--simulated_data={config.simulated_data}: {e}") from e
    mixed = tf.data.Dataset.zip(real, simulated).map(
        lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)))
    note = (f"; {count} of {config.batch_size} patches per batch simulated from "
            f"{config.simulated_data} ({preset.name})")
    return mixed.prefetch(tf.data.AUTOTUNE), note


def make_datasets(config, worker=(0, 1), sample_datasets=None):
    """Returns (train_ds, val_ds or None, description) for a resolved config.

    Both yield (dark, bright) float32 [batch_size, patch_size, patch_size, 3] in [0, 1];
    bright-only data gets its dark patches simulated with --simulation_params. `worker` is (this
    worker's index, number of workers): with several workers, each reads its own training
    files when there is at least one per worker (FILE sharding), else every worker reads all
    and keeps its share (DATA); validation, finite and identical every epoch, is always split
    by DATA. `sample_datasets` builds the embedded sample data (see `train`).
    """
    train_spec, val_spec = _data_specs(config, sample_datasets)
    steps = tuple(s for s in config.simulation_steps.replace("+", ",").split(",") if s)
    try:
        preset = simulation.load_preset(config.simulation_params)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--simulation_params={config.simulation_params}: {e}") from e
    train_ds, line = _train_dataset(config, train_spec, preset, steps, worker)
    description = [line]
    val_ds = None
    if val_spec:
        val_source, val_kind, val_count = _load_source(val_spec, "val", "val_data")
        try:
            val_ds = pipeline.validation_dataset(
                val_source, patch_size=config.patch_size, batch_size=config.batch_size,
                seed=config.seed, simulation=preset if val_kind == "images" else None,
                simulation_steps=steps,
                max_patches=config.validation_steps * config.batch_size or None,
                exposure_normalization=pipeline_exposure(config))
        except ValueError as e:
            raise ConfigError(f"--val_data={val_spec}: {e}") from e
        val_ds = distribute.shard_input(val_ds, "DATA")
        description.append(f"validation: {val_spec} ({val_kind}, {val_count} examples)")
    return train_ds, val_ds, description


def _first_batch(dataset, what):
    """The first (dark, bright) batch as NumPy; ConfigError when the dataset yields nothing."""
    for dark, bright in dataset.take(1):
        return dark.numpy(), bright.numpy()
    raise ConfigError(f"The {what} dataset yields no patches (empty after --train_fraction or "
                      "smaller than --patch_size?); use more data or a larger fraction.")


def warn_small_images(config, sample_datasets=None):
    """Warns once when training or validation images are smaller than --patch_size."""
    train_spec, val_spec = _data_specs(config, sample_datasets)
    for what, spec, split in (("training", train_spec, "train"), ("validation", val_spec, "val")):
        if not spec:
            continue
        try:
            small, total = count_small_images(spec, config.patch_size, split)
        except (ValueError, OSError):
            continue  # unreadable datasets are reported where they are loaded
        if small:
            progress.warn(f"{small} of {total} {what} images of {spec} are smaller than "
                          f"--patch_size={config.patch_size} on a side and are padded by "
                          "mirroring to fill their patches; use a smaller --patch_size or larger "
                          "images.")


def _png_size(encoded):
    """(height, width) from a PNG's IHDR chunk, or None for other bytes."""
    if len(encoded) >= 24 and encoded[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", encoded[16:24])
        return height, width
    return None


def count_small_images(spec, patch_size, default_split="train"):
    """How many images of a dataset are smaller than `patch_size` on a side (they get padded).

    Reads only the stored PNG headers (no decoding), so it is cheap on large datasets.

    Returns:
      (small, total) ints.
    """
    parsed = data.parse_dataset_spec(spec, default_split=default_split)
    builder = tfds.builder_from_directory(data.dataset_dir(parsed.output_dir, parsed.name))
    stored = builder.as_dataset(split=parsed.split, shuffle_files=False,
                                decoders={"bright": tfds.decode.SkipDecoding()})
    small = total = 0
    for example in stored.as_numpy_iterator():
        size = _png_size(example["bright"])
        if size is None:
            size = tuple(tf.io.decode_image(example["bright"], channels=3).shape[:2])
        total += 1
        small += min(size) < patch_size
    return small, total


def example_images(config, val_ds, sample_datasets):
    """(dark, bright) NumPy patches shown in TensorBoard every epoch, or None (--num_images=0).

    Fixed validation patches; without validation, a copy of the training pipeline (its own
    iterator, so the training stream itself is untouched).
    """
    if not config.num_images:
        return None
    what = "validation" if val_ds is not None else "training"
    dark, bright = (_first_batch(val_ds, what) if val_ds is not None else
                    _first_batch(make_datasets(config, sample_datasets=sample_datasets)[0],
                                 what))
    images = (dark[:config.num_images], bright[:config.num_images])
    if len(images[0]) < config.num_images:
        progress.warn(f"TensorBoard shows {len(images[0])} example image(s), not --num_images="
                      f"{config.num_images}: they come from the first {what} batch, which holds "
                      f"{len(dark)} patch(es) (a batch holds at most "
                      f"--batch_size={config.batch_size}"
                      + (", and the validation set has fewer patches" if len(dark) <
                         config.batch_size else "") + ").")
    return images
