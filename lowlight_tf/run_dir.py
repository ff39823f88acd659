"""The model_dir of a training run: resuming, refusing other runs, kill leftovers (paper §3.3).

Layout (docs/interfaces.md): `flags.txt`, `model.json`, `checkpoints/epoch_NNN.weights.h5`,
`backup/` (the kill-safe resume point of `callbacks.GuardedBackup`), `final.keras`, TensorBoard
events. A run restarted with the same flags resumes; with other flags, or over a finished run,
it is refused before anything is written.
"""
import os
import shutil

from lowlight_tf import config as config_lib
from lowlight_tf import model as model_lib
from lowlight_tf import progress
from lowlight_tf.callbacks import BACKUP_METADATA, backup_epoch
from lowlight_tf.config import parse_flag_lines
from lowlight_tf.train_config import ConfigError, TrainConfig

FLAGS_NAME = "flags.txt"
BACKUP_DIR = "backup"
# Flags that may change when a run is resumed in the same model_dir (training longer).
RESUMABLE_CHANGES = ("epochs", "verbose")


def resume_state(config):
    """On the chief: (resuming from backup/, epochs to skip in the data, checkpoint to finish from).

    Refuses a model_dir holding another run (`_check_model_dir`) and removes stale partial
    files. The training stream resumes where the backup's epoch ended, so a killed and resumed
    run sees the same batches as an uninterrupted one (bit-identical with --deterministic). A
    run whose backup is gone but whose last checkpoint is its final epoch (killed while
    final.keras was written by an older version) only needs final.keras.
    """
    backup_dir = os.path.join(config.model_dir, BACKUP_DIR)
    resuming = _check_model_dir(config) and os.path.isdir(backup_dir)
    _remove_stale_partials(config.model_dir)
    skip_epochs = backup_epoch(backup_dir) if resuming else 0
    last_checkpoint = model_lib.latest_checkpoint(config.model_dir)
    finish_from = (last_checkpoint if not resuming and last_checkpoint and
                   checkpoint_epoch(last_checkpoint) >= config.epochs else None)
    return resuming, skip_epochs, finish_from


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
        progress.warn(f"{state} Finishing the run again: resuming from {BACKUP_DIR}/ or the last "
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


def checkpoint_epoch(path):
    """The epoch number of a checkpoints/epoch_NNN.weights.h5 path."""
    return int(os.path.basename(path)[len("epoch_"):].split(".")[0])


def remove_backup(backup_dir):
    """Deletes backup/ after final.keras is complete (the metadata first, so a kill midway
    leaves no backup that names missing weights)."""
    metadata = os.path.join(backup_dir, BACKUP_METADATA)
    if os.path.exists(metadata):
        os.remove(metadata)
    shutil.rmtree(backup_dir, ignore_errors=True)
