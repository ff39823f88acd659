"""Training stages of the paper (§3.3 pretraining on simulated pairs, §3.4 transfer learning).

Stages:
  pretrain      random init (or --init_from), every block, usually bright-only data whose dark
                patches are simulated on the fly (§3.1 presets);
  transfer      --init_from a pretrained model, only `trainable_blocks` (default: the last
                decoder block and the head, the blue blocks of Figure 4), usually 10% of the
                target device's real pairs; with --adapters also a 1x1 adapter beside every
                frozen 3x3 convolution, merged into it in final.keras (`lowlight_tf.adapters`);
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
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lowlight_tf import adapters
from lowlight_tf import config as config_lib
from lowlight_tf import distribute
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import files
from lowlight_tf import metrics
from lowlight_tf import model as model_lib
from lowlight_tf import pretrained
from lowlight_tf import run_dir
from lowlight_tf import train_data
from lowlight_tf.run_dir import BACKUP_DIR, FLAGS_NAME
from lowlight_tf.callbacks import EpochCheckpoint, GuardedBackup, Monitor, NanGuard
from lowlight_tf.distribute import (is_chief, is_multi_worker, make_strategy,
                                    patch_keras_for_multi_worker)
from lowlight_tf import data
from lowlight_tf.train_config import SAMPLE, SHIPPED, ConfigError


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
    try:
        config_lib.check_options(c)  # the bounds and choices of the options, as the flags have
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # Exclusive bounds the options cannot express.
    if not c.learning_rate > 0:
        raise ConfigError(f"--learning_rate={c.learning_rate} must be positive (paper: 1e-3).")
    if c.data_service and c.strategy == "multi_worker":
        raise ConfigError("--data_service feeds one trainer; with --strategy=multi_worker every "
                          "worker would read the whole stream. Use one of the two.")
    if not c.train_fraction > 0:
        raise ConfigError(f"--train_fraction={c.train_fraction} must be in (0, 1] (paper: 0.1 "
                          "for transfer).")

    if c.deterministic and c.strategy != "default":
        # Measured on CPU: MirroredStrategy runs with the same seed and deterministic ops still
        # differed in 1 of 3 runs; without tf.distribute they were bit-identical.
        raise ConfigError(f"--deterministic needs --strategy=default (got --strategy="
                          f"{c.strategy}): tf.distribute runs are not bit-reproducible.")
    if c.stage in ("transfer", "finetune_all") and not c.init_from:
        raise ConfigError(f"--stage={c.stage} needs --init_from: a pretrained .keras model, an "
                          "epoch_NNN.weights.h5 checkpoint or the model_dir of a pretrain run.")
    if c.adapters and not c.init_from:
        raise ConfigError("--adapters retunes a pretrained model's frozen blocks; give the "
                          "model with --init_from (and --stage=transfer).")
    if c.stage == "scratch" and c.init_from:
        raise ConfigError("--stage=scratch trains from random weights; drop --init_from or use "
                          "--stage=finetune_all.")
    if c.init_from:
        _take_architecture(c)
    c.exposure_normalization = float(c.exposure_normalization or 0.0)
    if not 0.0 <= c.exposure_normalization < 1.0:
        raise ConfigError(f"--exposure_normalization={c.exposure_normalization} must be 0 (off) "
                          "or a mean level in (0, 1), e.g. "
                          f"{exposure_lib.CANONICAL_DARK_MEAN:.4f}.")
    c.upsampling = c.upsampling or model_lib.UPSAMPLING[0]  # the paper's
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


def _take_architecture(c):
    """Fill the unset architecture options of config `c` from its --init_from model (in place)."""
    if c.init_from == SHIPPED:
        try:
            c.init_from = pretrained.model_path()
        except pretrained.NoPretrainedModelError as e:
            raise ConfigError(f"--init_from={SHIPPED}: {e}") from e
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
    if c.upsampling is None:
        c.upsampling = arch.get("upsampling", model_lib.UPSAMPLING[0])


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
    source = model_lib.load_model(config.init_from) if config.init_from else None
    if source is not None and not config.adapters:
        source = adapters.merge_adapters(source)  # e.g. a checkpoint of an --adapters run
    with strategy.scope():
        model = model_lib.build_unet("rgb", config.base_filters, config.depth,
                                     exposure_normalization=config.exposure_normalization,
                                     adapters=config.adapters,
                                     # unset (a config not through resolve_config): the paper's
                                     upsampling=config.upsampling or model_lib.UPSAMPLING[0])
        if source is not None:
            model_lib.copy_weights(source, model)
        trainable, frozen = model_lib.set_trainable_blocks(model, config.trainable_blocks)
        if config.adapters:
            trainable, frozen = adapters.set_adapters_trainable(model)
        optimizer = keras.optimizers.Adam(learning_rate_schedule(config),
                                          clipnorm=config.clipnorm or None)
        model.compile(optimizer=optimizer, loss=metrics.MAESSIMLoss(config.ssim_weight),
                      metrics=[keras.metrics.MeanAbsoluteError(name="mae"),
                               metrics.PSNRMetric(), metrics.SSIMMetric()],
                      jit_compile=config.jit_compile)
    if is_multi_worker(strategy):
        patch_keras_for_multi_worker(model)
    return model, trainable, frozen


def _log(config, message):
    if config.verbose:
        print(message, flush=True)


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
        _enable_determinism()
    keras.utils.set_random_seed(config.seed)
    chief = is_chief(strategy)
    resuming, skip_epochs, finish_from = (run_dir.resume_state(config) if chief
                                          else (False, 0, None))
    # Non-chief workers write their (identical) checkpoints and logs to a scratch folder.
    out_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="lowlight_worker_")

    train_ds, val_ds, description = train_data.make_datasets(config, distribute.worker(strategy),
                                                             sample_datasets)
    if skip_epochs:
        train_ds = train_ds.skip(skip_epochs * config.steps_per_epoch)
    train_data.warn_small_images(config, sample_datasets)
    images = train_data.example_images(config, val_ds, sample_datasets)

    # Seeded again: building the sample datasets or the pipelines above may draw random
    # numbers, and the initial weights must not depend on whether they already existed.
    keras.utils.set_random_seed(config.seed)
    model, trainable, frozen = create_model(config, strategy)

    _write_run_files(out_dir, config, model)
    if finish_from:
        return _finish_from_checkpoint(config, model, strategy, finish_from, out_dir)

    guard = NanGuard()
    backup = GuardedBackup(guard, backup_dir=os.path.join(out_dir, BACKUP_DIR))
    checkpoint = EpochCheckpoint(os.path.join(out_dir, model_lib.CHECKPOINT_DIR), guard)
    monitor = Monitor(config.batch_size, images, os.path.join(out_dir, "validation"), guard)
    tensorboard = keras.callbacks.TensorBoard(log_dir=out_dir, write_graph=False,
                                              update_freq="epoch", profile_batch=0)

    _log(config, _start_message(config, strategy, (trainable, frozen), description,
                                resuming and os.path.join(out_dir, BACKUP_DIR)))

    normalised_outside = (exposure_lib.exposure_applied_outside(model)
                          if train_data.pipeline_exposure(config) else contextlib.nullcontext())
    with normalised_outside:  # the pipeline already multiplied each patch by its image's gain
        history, elapsed = _fit(model, train_ds, val_ds, config, guard,
                                [guard, checkpoint, backup, monitor, tensorboard,
                                 *extra_callbacks])
    initial_epoch = backup.restored_epoch
    if resuming or initial_epoch:
        _log(config, f"Resumed after epoch {initial_epoch} from {backup.backup_dir}.")

    if guard.bad is not None:
        raise _diverged(guard, checkpoint.last_path or model_lib.latest_checkpoint(out_dir))

    final_path = os.path.join(out_dir, model_lib.FINAL_MODEL_NAME)
    # atomic: a kill leaves the backup to resume from; adapters merged: the plain U-Net
    files.save_model(adapters.merge_adapters(model), final_path)
    run_dir.remove_backup(os.path.join(out_dir, BACKUP_DIR))
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


def _fit(model, train_ds, val_ds, config, guard, callbacks):
    """model.fit for the stage; return (Keras History or None after a NaN, seconds)."""
    started = time.perf_counter()
    try:
        # The callbacks' order matters: the epoch checkpoint before the backup, so a kill
        # between the two repeats that epoch rather than skipping its checkpoint.
        history = model.fit(
            train_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
            validation_data=val_ds, shuffle=False, callbacks=callbacks, verbose=config.verbose)
    except tf.errors.InvalidArgumentError:
        # A NaN prediction trips the metrics' range assertions before the NaN loss reaches
        # _NanGuard; non-finite weights tell the two apart from a genuine error.
        if all(np.isfinite(w).all() for w in model.get_weights()):
            raise
        guard.bad = (guard.epoch + 1, "?", float("nan"))
        history = None
    return history, time.perf_counter() - started


def _enable_determinism():
    """Make every TensorFlow op deterministic (process-wide and irreversible; some speed cost).

    oneDNN's CPU kernels ignore TensorFlow's determinism switch (measured: 1 of 3 runs differed
    with oneDNN on, 0 of 3 with it off), and it can only be disabled before TensorFlow starts.
    """
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        raise ConfigError("--deterministic needs oneDNN disabled before TensorFlow starts: "
                          "run TF_ENABLE_ONEDNN_OPTS=0 tools/train ... --deterministic.")
    tf.config.experimental.enable_op_determinism()


def _write_run_files(out_dir, config, model):
    """flags.txt (the replayable effective flags) and model.json (the architecture)."""
    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, FLAGS_NAME),
                     "# Effective flags of this run; replay with tools/train --flagfile=THIS_FILE\n"
                     + "\n".join(config_lib.to_flag_lines(config)) + "\n")
    files.write_text(os.path.join(out_dir, model_lib.ARCHITECTURE_NAME),
                     json.dumps(model_lib.architecture(model)) + "\n")


def _finish_from_checkpoint(config, model, strategy, checkpoint, out_dir):
    """Write final.keras from the last epoch's checkpoint of a run that trained every epoch."""
    with strategy.scope():  # the checkpoint holds the optimizer's state too
        model.optimizer.build(model.trainable_variables)
        model.load_weights(checkpoint)
    final_path = os.path.join(out_dir, model_lib.FINAL_MODEL_NAME)
    files.save_model(adapters.merge_adapters(model), final_path)
    _log(config, f"All {config.epochs} epochs were already trained: wrote {final_path} "
                 f"from {checkpoint}.")
    epoch = run_dir.checkpoint_epoch(checkpoint)
    return TrainResult(final_model_path=final_path, history={}, last_epoch=epoch,
                       initial_epoch=epoch, model_dir=config.model_dir)


def _start_message(config, strategy, params, description, resuming_from):
    """The lines printed when training starts: model, data, distribution, where it writes."""
    trainable, frozen = params
    return "\n".join([
        f"Stage {config.stage}: U-Net base_filters={config.base_filters} depth={config.depth} "
        f"upsampling={config.upsampling}, "
        f"trainable blocks {config.trainable_blocks}{' + adapters' if config.adapters else ''} "
        f"({trainable:,} trainable / {frozen:,} frozen "
        "parameters)",
        *description,
        f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}), global batch "
        f"{config.batch_size}, patch {config.patch_size}, lr {config.learning_rate:g} "
        f"({config.lr_schedule}), model_dir {config.model_dir}"
        + (f", resuming from {resuming_from}" if resuming_from else "")])


def _diverged(guard, last_good):
    """The TrainingDivergedError for a NanGuard that stopped training."""
    epoch, step, loss = guard.bad
    return TrainingDivergedError(
        f"The loss became {loss} at epoch {epoch}, step {step}; training stopped and that "
        "epoch was not saved. Last good checkpoint: "
        f"{last_good or 'none (diverged in the first epoch)'}. "
        "Lower --learning_rate or set --clipnorm, and restart in a new --model_dir"
        + (f" with --init_from={last_good}." if last_good else "."))


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
