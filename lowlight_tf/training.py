"""Training stages of the paper (§3.3 pretraining on simulated pairs, §3.4 transfer learning).

Stages:
  pretrain      random init (or --init_from), every block, usually bright-only data whose dark
                patches are simulated on the fly (§3.1 presets);
  transfer      --init_from a pretrained model, only `trainable_blocks` (default: the last
                decoder block and the head, the blue blocks of Figure 4), usually 10% of the
                target device's real pairs;
  finetune_all  --init_from, every block trainable;
  scratch       random init, every block, real pairs (the "trained on 100%" reference).

MAE loss and Adam at 1e-3 (§3.3). The model is built and compiled under a tf.distribute
strategy (MirroredStrategy: every GPU, the CPU when there is none; MultiWorkerMirroredStrategy
from TF_CONFIG), so the same code runs on one CPU or several machines; `batch_size` is global.

model_dir layout (docs/interfaces.md): `flags.txt` (the effective configuration as a replayable
flagfile), `model.json` (build_unet arguments), `checkpoints/epoch_NNN.weights.h5` (one per
epoch, as in the paper's Figure 6), `backup/` (BackupAndRestore: a killed run restarted with the
same command resumes after its last finished epoch), `final.keras`, and TensorBoard events in
`train/` and `validation/` (MAE, PSNR, SSIM, learning rate, examples/s, and an image grid
dark | prediction | bright of fixed validation patches every epoch).
"""
import dataclasses
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import types

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lowlight_tf import config as config_lib
from lowlight_tf import files
from lowlight_tf import model as model_lib
from lowlight_tf.config import parse_flag_lines
from lowlight_tf.train_config import (LR_SCHEDULES, NO_VALIDATION, SAMPLE, STAGES, STRATEGIES,
                                      TrainConfig)

FLAGS_NAME = "flags.txt"
BACKUP_DIR = "backup"
# Flags that may change when a run is resumed in the same model_dir (training longer).
RESUMABLE_CHANGES = ("epochs", "verbose")


class ConfigError(ValueError):
    """A configuration the user must fix; the message says which value and what to do."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the final .keras path, the Keras history, the last finished epoch."""
    final_model_path: str
    history: dict
    last_epoch: int
    initial_epoch: int
    model_dir: str


def _resolve_split(spec, split):
    """`OUTPUT_DIR/NAME[:split]` with its split replaced by `split`."""
    from lowlight_tf import data
    parsed = data.parse_dataset_spec(spec)
    return f"{parsed.output_dir}/{parsed.name}:{split}"


def resolve_config(config):
    """Validates `config` and fills in its defaults; returns a new, fully explicit TrainConfig.

    Raises:
      ConfigError: an invalid value, a stage without the --init_from it needs, or an --init_from
        model that cannot be loaded.
    """
    c = dataclasses.replace(config)
    if not c.model_dir:
        raise ConfigError("--model_dir is required: the directory for checkpoints and logs.")
    c.model_dir = os.path.abspath(c.model_dir)
    if os.path.lexists(c.model_dir) and not os.path.isdir(c.model_dir):
        raise ConfigError(f"--model_dir={c.model_dir} is a file, not a directory; choose a new "
                          "--model_dir (a folder tools/train creates) or move that file.")
    if c.stage not in STAGES:
        raise ConfigError(f"--stage={c.stage} is not one of {', '.join(STAGES)}.")
    if c.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy={c.strategy} is not one of {', '.join(STRATEGIES)}.")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"--lr_schedule={c.lr_schedule} is not one of {LR_SCHEDULES}.")
    for name in ("patch_size", "batch_size", "epochs", "steps_per_epoch"):
        if getattr(c, name) < 1:
            raise ConfigError(f"--{name}={getattr(c, name)} must be at least 1.")
    for name in ("validation_steps", "warmup_steps", "num_images", "clipnorm", "ssim_weight"):
        if getattr(c, name) < 0:
            raise ConfigError(f"--{name}={getattr(c, name)} must not be negative.")
    if not c.learning_rate > 0:
        raise ConfigError(f"--learning_rate={c.learning_rate} must be positive (paper: 1e-3).")
    if not 0 < c.train_fraction <= 1:
        raise ConfigError(f"--train_fraction={c.train_fraction} must be in (0, 1] (paper: 0.1 "
                          "for transfer).")
    if not 0 <= c.dim_fraction <= 1:
        raise ConfigError(f"--dim_fraction={c.dim_fraction} must be in [0, 1].")

    if c.deterministic and c.strategy != "default":
        # Measured on CPU: MirroredStrategy runs with the same seed and deterministic ops still
        # differed in 1 of 3 runs; without tf.distribute they were bit-identical.
        raise ConfigError(f"--deterministic needs --strategy=default (got --strategy="
                          f"{c.strategy}): tf.distribute runs are not bit-reproducible.")
    if c.stage in ("transfer", "finetune_all") and not c.init_from:
        raise ConfigError(f"--stage={c.stage} needs --init_from: a pretrained .keras model, an "
                          "epoch_NNN.weights.h5 checkpoint or the model_dir of a pretrain run.")
    if c.stage == "scratch" and c.init_from:
        raise ConfigError("--stage=scratch trains from random weights; drop --init_from or use "
                          "--stage=finetune_all.")
    if c.init_from:
        c.init_from = os.path.abspath(c.init_from)
        try:
            arch = model_lib.architecture(model_lib.load_model(c.init_from))
        except model_lib.ModelLoadError as e:
            raise ConfigError(f"--init_from: {e}") from e
        if c.base_filters is None:
            c.base_filters = arch["base_filters"]
        if c.depth is None:
            c.depth = arch["depth"]
        if c.exposure_normalization is None:
            c.exposure_normalization = arch.get("exposure_normalization", 0.0)
    c.exposure_normalization = float(c.exposure_normalization or 0.0)
    if not 0.0 <= c.exposure_normalization < 1.0:
        raise ConfigError(f"--exposure_normalization={c.exposure_normalization} must be 0 (off) "
                          f"or a mean level in (0, 1), e.g. {model_lib.CANONICAL_DARK_MEAN:.4f}.")
    c.base_filters = 32 if c.base_filters is None else int(c.base_filters)
    c.depth = 4 if c.depth is None else int(c.depth)
    if c.base_filters < 1 or c.depth < 1:
        raise ConfigError(f"--base_filters={c.base_filters} and --depth={c.depth} must be >= 1.")
    multiple = 2 ** (c.depth + 1)
    if c.patch_size % multiple:
        suggestion = max(multiple, c.patch_size // multiple * multiple)
        raise ConfigError(f"--patch_size={c.patch_size} must be a multiple of {multiple} for "
                          f"--depth={c.depth}; try {suggestion}.")

    if not c.trainable_blocks:
        c.trainable_blocks = f"up{c.depth},head" if c.stage == "transfer" else "all"

    if c.train_data in ("", SAMPLE):
        c.train_data = SAMPLE
        if not c.sample_root:
            c.sample_root = os.path.join(os.path.dirname(c.model_dir), "sample_data")
        c.sample_root = os.path.abspath(c.sample_root)
    if not c.val_data:
        c.val_data = SAMPLE if c.train_data == SAMPLE else _resolve_split(c.train_data, "val")
    return c


def make_strategy(name, devices=None):
    """Returns the tf.distribute strategy for --strategy (call before any other TF work).

    Args:
      name: "mirrored" (all visible GPUs, or the CPU when there is none, unless `devices`),
        "multi_worker" (MultiWorkerMirroredStrategy configured by the TF_CONFIG environment
        variable) or "default" (no distribution).
      devices: optional device list for "mirrored", e.g. ["/cpu:0", "/cpu:1"].
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task of this worker); see the tf.distribute guide.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ConfigError(f"--strategy={name} is not one of {', '.join(STRATEGIES)}.")


def _is_chief(strategy):
    """True on the one worker that writes checkpoints and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _patch_keras_for_multi_worker(model):
    """Works around Keras 3's broken Model.fit under MultiWorkerMirroredStrategy.

    keras-team/keras#20585 (open for Keras 3.x, still in 3.15): fit() (1) reduces the whole
    per-replica input batch with strategy.reduce to build the model symbolically, and (2)
    reduces the scalar metric results with strategy.reduce("MEAN", v, axis=0), both of which
    fail across workers. The symbolic build only needs shapes, so it takes the first local
    replica's batch; scalar results are averaged over all replicas with axis=None, which is
    what the single-machine path computes.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not getattr(tf_trainer.reduce_per_replica, "_lowlight_patched", False):
        original = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and _is_multi_worker(strategy):
                return tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return original(values, strategy, reduction)

        reduce_per_replica._lowlight_patched = True
        tf_trainer.reduce_per_replica = reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)


def learning_rate_schedule(config):
    """Returns a float or a keras LearningRateSchedule for the config (warm-up, cosine decay)."""
    total_steps = config.epochs * config.steps_per_epoch
    if config.lr_schedule == "constant" and not config.warmup_steps:
        return config.learning_rate
    warmup = min(config.warmup_steps, total_steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=1.0 if config.lr_schedule == "constant" else 0.0,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup)


def create_model(config, strategy):
    """Builds, initialises and compiles the U-Net under `strategy` for a resolved config.

    Returns:
      (model, trainable_params, non_trainable_params).

    Raises:
      ArchitectureMismatchError: --init_from's weights do not fit (the message names the layer).
      ValueError: an unknown --trainable_blocks name.
    """
    from lowlight_tf import metrics
    source = model_lib.load_model(config.init_from) if config.init_from else None
    with strategy.scope():
        model = model_lib.build_unet("rgb", config.base_filters, config.depth,
                                     exposure_normalization=config.exposure_normalization)
        if source is not None:
            model_lib.copy_weights(source, model)
        trainable, frozen = model_lib.set_trainable_blocks(model, config.trainable_blocks)
        optimizer = keras.optimizers.Adam(learning_rate_schedule(config),
                                          clipnorm=config.clipnorm or None)
        model.compile(optimizer=optimizer, loss=metrics.MAESSIMLoss(config.ssim_weight),
                      metrics=[keras.metrics.MeanAbsoluteError(name="mae"),
                               metrics.PSNRMetric(), metrics.SSIMMetric()],
                      jit_compile=config.jit_compile)
    if _is_multi_worker(strategy):
        _patch_keras_for_multi_worker(model)
    return model, trainable, frozen


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


def _load_source(spec, default_split, what):
    """Loads a dataset spec; returns (dataset, kind, count). Raises ConfigError when empty."""
    from lowlight_tf import data
    try:
        parsed = data.parse_dataset_spec(spec, default_split=default_split)
        source = data.load(parsed.output_dir, parsed.name, parsed.split)
        kind = data.dataset_kind(parsed.output_dir, parsed.name)
        count = data.num_examples(parsed.output_dir, parsed.name, parsed.split)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--{what}={spec}: {e}") from e
    if count == 0:
        raise ConfigError(f"--{what}={spec} holds no examples; check the split name or rebuild "
                          "it with tools/make_tfrecords.")
    return source, kind, count


def _shard_by_data(dataset):
    """Multi-worker input: every worker reads all files and keeps its share of the elements."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def make_datasets(config, sample_datasets=None):
    """Returns (train_ds, val_ds or None, description) for a resolved config.

    Both yield (dark, bright) float32 [batch_size, patch_size, patch_size, 3] in [0, 1];
    bright-only data gets its dark patches simulated with --simulation_params.
    """
    from lowlight_tf import pipeline, simulation
    train_spec, val_spec = _data_specs(config, sample_datasets)
    steps = tuple(s for s in config.simulation_steps.replace("+", ",").split(",") if s)
    try:
        preset = simulation.load_preset(config.simulation_params)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--simulation_params={config.simulation_params}: {e}") from e
    source, kind, count = _load_source(train_spec, "train", "train_data")
    try:
        train_ds = pipeline.train_dataset(
            source, patch_size=config.patch_size, batch_size=config.batch_size,
            seed=config.seed, simulation=preset if kind == "images" else None,
            simulation_steps=steps, train_fraction=config.train_fraction,
            dim_fraction=config.dim_fraction if kind == "images" else 0.0)
    except ValueError as e:
        raise ConfigError(f"--train_data={train_spec}: {e}") from e
    simulated = f", simulated {'+'.join(steps)}" if kind == "images" else ""
    description = [f"train: {train_spec} ({kind}, {count} examples, fraction "
                   f"{config.train_fraction:g}{simulated})"]
    val_ds = None
    if val_spec:
        val_source, val_kind, val_count = _load_source(val_spec, "val", "val_data")
        try:
            val_ds = pipeline.validation_dataset(
                val_source, patch_size=config.patch_size, batch_size=config.batch_size,
                seed=config.seed, simulation=preset if val_kind == "images" else None,
                simulation_steps=steps,
                max_patches=config.validation_steps * config.batch_size or None)
        except ValueError as e:
            raise ConfigError(f"--val_data={val_spec}: {e}") from e
        description.append(f"validation: {val_spec} ({val_kind}, {val_count} examples)")
    if val_ds is not None:
        val_ds = _shard_by_data(val_ds)
    return _shard_by_data(train_ds), val_ds, description


def _first_batch(dataset, what):
    """The first (dark, bright) batch as NumPy; ConfigError when the dataset yields nothing."""
    for dark, bright in dataset.take(1):
        return dark.numpy(), bright.numpy()
    raise ConfigError(f"The {what} dataset yields no patches (empty after --train_fraction or "
                      "smaller than --patch_size?); use more data or a larger fraction.")


def image_grid(dark, prediction, bright):
    """Stacks rows dark | prediction | bright: float32 [N, H, W, 3] in [0, 1] each ->
    float32 [1, N*H, 3*W, 3] in [0, 1]."""
    rows = np.concatenate([dark, np.clip(prediction, 0.0, 1.0), bright], axis=2)
    return rows.reshape(1, -1, rows.shape[2], 3)


class _NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.bad = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


BACKUP_METADATA = "training_metadata.json"


def backup_epoch(backup_dir):
    """The epoch a model_dir's backup/ holds (0 when there is none or it names no weights)."""
    try:
        with open(os.path.join(backup_dir, BACKUP_METADATA), encoding="utf-8") as f:
            metadata = json.load(f)
    except (OSError, ValueError):
        return 0
    weights = metadata.get("weights")
    if weights and not os.path.isfile(os.path.join(backup_dir, weights)):
        return 0
    return int(metadata.get("epoch", 0))


class _GuardedBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never backs up a diverged model, and survives a kill at any point.

    Keras writes `latest.weights.h5` and then the metadata in place, so a kill between or
    during the two writes leaves a truncated file or weights one epoch ahead of the metadata.
    Here each epoch's weights go to their own file `epoch_NNN.weights.h5` (written under a
    hidden name, then renamed), and only then is the metadata, which names that file, replaced
    atomically: the metadata always points at complete weights of the epoch it names. The
    backup is kept after training; `train` removes it once final.keras is written.
    """

    def __init__(self, guard, **kwargs):
        super().__init__(delete_checkpoint=False, **kwargs)
        self.guard = guard
        self.restored_epoch = 0

    def on_train_begin(self, logs=None):
        try:
            self._restore()
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"Cannot resume from {self.backup_dir}: {e}. Delete that folder to restart the "
                "run from its last checkpoint with --init_from, or use a new --model_dir.") from e
        self.restored_epoch = getattr(self.model, "_initial_epoch", None) or 0

    def _restore(self):
        path = os.path.join(self.backup_dir, BACKUP_METADATA)
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
        if "weights" not in metadata:  # a backup written by Keras' own callback
            super().on_train_begin()
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self.model._initial_epoch = int(metadata["epoch"])

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch_{self._current_epoch:03d}.weights.h5"
        partial = os.path.join(self.backup_dir, f".partial_{name}")  # Keras needs the ending
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self.backup_dir, name))
        files.write_json(os.path.join(self.backup_dir, BACKUP_METADATA),
                         {"epoch": self._current_epoch, "batch": 0, "weights": name})
        for old in os.listdir(self.backup_dir):
            if old not in (name, BACKUP_METADATA) and not old.startswith(".partial_"):
                os.remove(os.path.join(self.backup_dir, old))

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.bad is None:
            super().on_epoch_end(epoch, logs)


class _EpochCheckpoint(keras.callbacks.Callback):
    """Writes checkpoints/epoch_NNN.weights.h5 after every finished, finite epoch."""

    def __init__(self, directory, guard):
        super().__init__()
        self.directory = directory
        self.guard = guard
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.bad is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch_{epoch + 1:03d}.weights.h5"
        path = os.path.join(self.directory, name)
        # Written under a hidden name, then renamed: a kill during the save never leaves a
        # truncated checkpoint under a visible name (Keras needs the .weights.h5 ending).
        partial = os.path.join(self.directory, f".partial_{name}")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, path)
        self.last_path = path


class _Monitor(keras.callbacks.Callback):
    """Adds examples/s to the epoch logs and writes the dark | prediction | bright image grid.

    Must come before keras.callbacks.TensorBoard in the callback list so that TensorBoard logs
    `examples_per_second` together with the other scalars.
    """

    def __init__(self, global_batch, images, log_dir, guard):
        super().__init__()
        self.global_batch = global_batch
        self.images = images
        self.guard = guard
        self.writer = tf.summary.create_file_writer(log_dir) if images is not None else None
        self._start = self._last = None
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._last > self._start:
            seconds = self._last - self._start
            logs["examples_per_second"] = self._steps * self.global_batch / seconds
        if self.writer is None or self.guard.bad is not None:
            return
        dark, bright = self.images
        prediction = self.model(dark, training=False)
        prediction = np.asarray(keras.ops.convert_to_numpy(prediction))
        with self.writer.as_default():
            tf.summary.image("dark | prediction | bright", image_grid(dark, prediction, bright),
                             step=epoch, max_outputs=1)
        self.writer.flush()


def _final_model_state(final_path):
    """"missing", "ok" or the reason a final.keras cannot be loaded (corrupt or truncated)."""
    if not os.path.lexists(final_path):
        return "missing"
    try:
        model_lib.load_model(final_path)
    except model_lib.ModelLoadError as e:
        return str(e)
    return "ok"


def _remove_stale_partials(model_dir):
    """Deletes hidden partial files a killed run left (they are never read)."""
    for folder in (model_dir, os.path.join(model_dir, model_lib.CHECKPOINT_DIR),
                   os.path.join(model_dir, BACKUP_DIR)):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith(".partial_") or (name.startswith(".") and ".partial" in name):
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    os.remove(path)


def _check_model_dir(config):
    """Refuses to overwrite a finished run or to resume a run made with other flags.

    A final.keras that cannot be loaded (truncated by a kill of an older version, or damaged)
    does not count as finished: the run is resumed and final.keras written again.
    Returns True when model_dir holds an interrupted run with the same flags (a resume).
    """
    model_dir = config.model_dir
    final_path = os.path.join(model_dir, model_lib.FINAL_MODEL_NAME)
    state = _final_model_state(final_path)
    if state == "ok":
        if os.path.isdir(os.path.join(model_dir, BACKUP_DIR)):  # killed while cleaning up
            shutil.rmtree(os.path.join(model_dir, BACKUP_DIR), ignore_errors=True)
        raise ConfigError(f"{model_dir} already holds a finished run "
                          f"({model_lib.FINAL_MODEL_NAME}); choose a new --model_dir (nothing "
                          "was overwritten).")
    if state != "missing":
        _warn(f"{state} Finishing the run again: resuming from {BACKUP_DIR}/ or the last "
              "checkpoint; the damaged file is replaced when the new one is complete.")
    flags_path = os.path.join(model_dir, FLAGS_NAME)
    if not os.path.exists(flags_path):
        if os.path.isdir(model_dir) and os.listdir(model_dir):
            leftovers = set(os.listdir(model_dir)) - {"sample_data"}
            if leftovers & {model_lib.CHECKPOINT_DIR, BACKUP_DIR, "train", "validation"}:
                raise ConfigError(f"{model_dir} holds training output without {FLAGS_NAME}; "
                                  "choose a new --model_dir (nothing was overwritten).")
        return False
    with open(flags_path, encoding="utf-8") as f:
        # An option added after the run was made is absent from its file: it had the default.
        previous = {**parse_flag_lines(config_lib.to_flag_lines(TrainConfig())),
                    **parse_flag_lines(f)}
    current = parse_flag_lines(config_lib.to_flag_lines(config))
    changed = sorted(k for k in set(previous) | set(current)
                     if k not in RESUMABLE_CHANGES and previous.get(k) != current.get(k))
    if changed:
        details = "; ".join(f"--{k}: {previous.get(k)} before, {current.get(k)} now"
                            for k in changed)
        raise ConfigError(f"{model_dir} holds an unfinished run made with other flags ({details}). "
                          f"Resume it with --flagfile={flags_path}, or choose a new --model_dir "
                          "(nothing was overwritten).")
    return True


def _log(config, message):
    if config.verbose:
        print(message, flush=True)


def _checkpoint_epoch(path):
    """The epoch number of a checkpoints/epoch_NNN.weights.h5 path."""
    return int(os.path.basename(path)[len("epoch_"):].split(".")[0])


def _remove_backup(backup_dir):
    """Deletes backup/ after final.keras is complete (the metadata first, so a kill midway
    leaves no backup that names missing weights)."""
    metadata = os.path.join(backup_dir, BACKUP_METADATA)
    if os.path.exists(metadata):
        os.remove(metadata)
    shutil.rmtree(backup_dir, ignore_errors=True)


def _warn_small_images(config, sample_datasets=None):
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
            _warn(f"{small} of {total} {what} images of {spec} are smaller than --patch_size="
                  f"{config.patch_size} on a side and are padded by mirroring to fill their "
                  "patches; use a smaller --patch_size or larger images.")


def _warn(message):
    """One warning line on stderr (shown whatever --verbose says)."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def _png_size(data):
    """(height, width) from a PNG's IHDR chunk, or None for other bytes."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return None


def count_small_images(spec, patch_size, default_split="train"):
    """How many images of a dataset are smaller than `patch_size` on a side (they get padded).

    Reads only the stored PNG headers (no decoding), so it is cheap on large datasets.

    Returns:
      (small, total) ints.
    """
    import tensorflow_datasets as tfds
    from lowlight_tf import data
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


def _set_threads(config):
    """Apply --intra_op_threads/--inter_op_threads (0 = TensorFlow's choice).

    They only take effect before TensorFlow starts its runtime; a process that already ran ops
    (e.g. a notebook) keeps its threads, and we say so instead of failing.
    """
    try:
        if config.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_threads)
        if config.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
    except RuntimeError as error:
        logging.warning("thread settings ignored (TensorFlow already started): %s", error)


def train(config, strategy=None, extra_callbacks=(), sample_datasets=None):
    """Runs one training stage; see the module docstring for stages and the model_dir layout.

    Args:
      config: a TrainConfig (defaults are resolved by `resolve_config`).
      strategy: optional tf.distribute strategy (else made from config.strategy).
      extra_callbacks: more Keras callbacks, run after the built-in ones.
      sample_datasets: callable(root) -> {split: spec} that builds the embedded sample datasets
        for --train_data/--val_data=sample (tools/train passes
        data_prep.sample_photos.ensure_sample_datasets).

    Returns:
      TrainResult.

    Raises:
      ConfigError: bad flags, data, --init_from or model_dir (nothing written or overwritten).
      ArchitectureMismatchError: --init_from does not fit --base_filters/--depth.
      TrainingDivergedError: the loss became NaN; earlier checkpoints are kept.
    """
    _set_threads(config)
    # The strategy comes first: MultiWorkerMirroredStrategy must start before other TF ops.
    if strategy is None:
        strategy = make_strategy(config.strategy)
    config = resolve_config(config)
    if config.deterministic:
        # oneDNN's CPU kernels ignore TensorFlow's determinism switch (measured: 1 of 3 runs
        # differed with oneDNN on, 0 of 3 with it off), and it can only be disabled before
        # TensorFlow starts.
        if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
            raise ConfigError("--deterministic needs oneDNN disabled before TensorFlow starts: "
                              "run TF_ENABLE_ONEDNN_OPTS=0 tools/train ... --deterministic.")
        # Process-wide and irreversible; some speed cost.
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    chief = _is_chief(strategy)
    backup_dir = os.path.join(config.model_dir, BACKUP_DIR)
    resuming = chief and _check_model_dir(config) and os.path.isdir(backup_dir)
    if chief:
        _remove_stale_partials(config.model_dir)
    # Resume the training stream where the backup's epoch ended, so that a killed and resumed
    # run sees the same batches as an uninterrupted one (bit-identical with --deterministic).
    skip_epochs = backup_epoch(backup_dir) if resuming else 0
    # A run whose backup is gone but whose last checkpoint is its final epoch (killed while
    # final.keras was written by an older version) only needs final.keras.
    last_checkpoint = model_lib.latest_checkpoint(config.model_dir) if chief else None
    finish_from = (last_checkpoint if chief and not resuming and last_checkpoint and
                   _checkpoint_epoch(last_checkpoint) >= config.epochs else None)
    # Non-chief workers write their (identical) checkpoints and logs to a scratch folder.
    out_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="lowlight_worker_")

    train_ds, val_ds, description = make_datasets(config, sample_datasets)
    if skip_epochs:
        train_ds = train_ds.skip(skip_epochs * config.steps_per_epoch)
    _warn_small_images(config, sample_datasets)
    images = None
    if config.num_images:
        # Fixed validation patches; without validation, a copy of the training pipeline (its
        # own iterator, so the training stream itself is untouched).
        what = "validation" if val_ds is not None else "training"
        dark, bright = (_first_batch(val_ds, what) if val_ds is not None else
                        _first_batch(make_datasets(config, sample_datasets)[0], what))
        images = (dark[:config.num_images], bright[:config.num_images])
        if len(images[0]) < config.num_images:
            _warn(f"TensorBoard shows {len(images[0])} example image(s), not --num_images="
                  f"{config.num_images}: they come from the first {what} batch, which holds "
                  f"{len(dark)} patch(es) (a batch holds at most --batch_size="
                  f"{config.batch_size}"
                  + (", and the validation set has fewer patches" if len(dark) <
                     config.batch_size else "") + ").")

    # Seeded again: building the sample datasets or the pipelines above may draw random
    # numbers, and the initial weights must not depend on whether they already existed.
    keras.utils.set_random_seed(config.seed)
    model, trainable, frozen = create_model(config, strategy)

    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, FLAGS_NAME),
                     "# Effective flags of this run; replay with tools/train --flagfile=THIS_FILE\n"
                     + "\n".join(config_lib.to_flag_lines(config)) + "\n")
    files.write_text(os.path.join(out_dir, model_lib.ARCHITECTURE_NAME),
                     json.dumps(model_lib.architecture(model)) + "\n")
    if finish_from:
        with strategy.scope():  # the checkpoint holds the optimizer's state too
            model.optimizer.build(model.trainable_variables)
            model.load_weights(finish_from)
        final_path = os.path.join(out_dir, model_lib.FINAL_MODEL_NAME)
        files.save_model(model, final_path)
        _log(config, f"All {config.epochs} epochs were already trained: wrote {final_path} "
                     f"from {finish_from}.")
        return TrainResult(final_model_path=final_path, history={},
                           last_epoch=_checkpoint_epoch(finish_from),
                           initial_epoch=_checkpoint_epoch(finish_from),
                           model_dir=config.model_dir)

    guard = _NanGuard()
    backup = _GuardedBackup(guard, backup_dir=os.path.join(out_dir, BACKUP_DIR))
    checkpoint = _EpochCheckpoint(os.path.join(out_dir, model_lib.CHECKPOINT_DIR), guard)
    monitor = _Monitor(config.batch_size, images, os.path.join(out_dir, "validation"), guard)
    tensorboard = keras.callbacks.TensorBoard(log_dir=out_dir, write_graph=False,
                                              update_freq="epoch", profile_batch=0)

    _log(config, "\n".join([
        f"Stage {config.stage}: U-Net base_filters={config.base_filters} depth={config.depth}, "
        f"trainable blocks {config.trainable_blocks} ({trainable:,} trainable / {frozen:,} frozen "
        "parameters)",
        *description,
        f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}), global batch "
        f"{config.batch_size}, patch {config.patch_size}, lr {config.learning_rate:g} "
        f"({config.lr_schedule}), model_dir {config.model_dir}"
        + (f", resuming from {os.path.join(out_dir, BACKUP_DIR)}" if resuming else "")]))

    started = time.perf_counter()
    try:
        history = model.fit(
            train_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
            validation_data=val_ds, shuffle=False,
            # The epoch checkpoint before the backup: a kill between the two repeats that
            # epoch rather than skipping its checkpoint.
            callbacks=[guard, checkpoint, backup, monitor, tensorboard, *extra_callbacks],
            verbose=config.verbose)
    except tf.errors.InvalidArgumentError:
        # A NaN prediction trips the metrics' range assertions before the NaN loss reaches
        # _NanGuard; non-finite weights tell the two apart from a genuine error.
        if all(np.isfinite(w).all() for w in model.get_weights()):
            raise
        guard.bad = (guard.epoch + 1, "?", float("nan"))
        history = None
    elapsed = time.perf_counter() - started
    initial_epoch = backup.restored_epoch
    if resuming or initial_epoch:
        _log(config, f"Resumed after epoch {initial_epoch} from {backup.backup_dir}.")

    if guard.bad is not None:
        epoch, step, loss = guard.bad
        last_good = checkpoint.last_path or model_lib.latest_checkpoint(out_dir)
        raise TrainingDivergedError(
            f"The loss became {loss} at epoch {epoch}, step {step}; training stopped and that "
            "epoch was not saved. Last good checkpoint: "
            f"{last_good or 'none (diverged in the first epoch)'}. "
            "Lower --learning_rate or set --clipnorm, and restart in a new --model_dir"
            + (f" with --init_from={last_good}." if last_good else "."))

    final_path = os.path.join(out_dir, model_lib.FINAL_MODEL_NAME)
    files.save_model(model, final_path)  # atomic: a kill leaves the backup to resume from
    _remove_backup(os.path.join(out_dir, BACKUP_DIR))
    last_epoch = initial_epoch + len(history.history.get("loss", []))
    hist = {k: [float(v) for v in values] for k, values in history.history.items()}
    if not chief:
        shutil.rmtree(out_dir, ignore_errors=True)
    if chief:
        _summary(config, hist, last_epoch, initial_epoch, elapsed, final_path)
    else:
        _log(config, f"Worker finished epochs {initial_epoch + 1}..{last_epoch}; the chief "
                     f"writes {config.model_dir}.")
    return TrainResult(final_model_path=final_path if chief else "", history=hist,
                       last_epoch=last_epoch, initial_epoch=initial_epoch,
                       model_dir=config.model_dir)


def _summary(config, history, last_epoch, initial_epoch, elapsed, final_path):
    """Prints the one-screen end-of-run summary."""
    def last(name):
        values = history.get(name)
        return f"{values[-1]:.4f}" if values else "-"

    lines = [
        "=" * 72,
        f"{config.stage} finished: epochs {initial_epoch + 1}..{last_epoch} of {config.epochs} "
        f"in {elapsed:.1f} s",
        f"train  MAE {last('mae')}  PSNR {last('psnr')} dB  SSIM {last('ssim')}  "
        f"({last('examples_per_second')} examples/s)",
        f"val    MAE {last('val_mae')}  PSNR {last('val_psnr')} dB  SSIM {last('val_ssim')}",
        f"final model  {final_path}",
        f"checkpoints  {os.path.join(config.model_dir, model_lib.CHECKPOINT_DIR)}",
        f"flags        {os.path.join(config.model_dir, FLAGS_NAME)}",
        f"TensorBoard  tensorboard --logdir {config.model_dir}",
        "=" * 72,
    ]
    _log(config, "\n".join(lines))
