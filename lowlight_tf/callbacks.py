"""Keras callbacks of a training run: divergence guard, kill-safe backup, checkpoints, monitor.

Every file they write is complete or absent: weights go to a hidden partial name first and are
renamed; the backup's metadata is replaced atomically and always names complete weights.
"""
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from lowlight_tf import files
from lowlight_tf.train_config import ConfigError


def image_grid(dark, prediction, bright):
    """Stacks rows dark | prediction | bright: float32 [N, H, W, 3] in [0, 1] each ->
    float32 [1, N*H, 3*W, 3] in [0, 1]."""
    rows = np.concatenate([dark, np.clip(prediction, 0.0, 1.0), bright], axis=2)
    return rows.reshape(1, -1, rows.shape[2], 3)


class NanGuard(keras.callbacks.Callback):
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


class GuardedBackup(keras.callbacks.BackupAndRestore):
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


class EpochCheckpoint(keras.callbacks.Callback):
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


class Monitor(keras.callbacks.Callback):
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
