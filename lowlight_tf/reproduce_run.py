"""The bookkeeping of one reproduce run (lowlight_tf.reproduce): paths, stage records, errors.

A finished stage writes its JSON record to `WORK_DIR/stages/NAME.json`; a later run reuses the
record by name instead of running the stage again. The dataset-building steps (`data_prep`) come
in from the caller as a `DatasetBuilders`, so this package never imports `data_prep`.
"""
import dataclasses
import json
import os
import time
from typing import Callable, Tuple

import numpy as np

from lowlight_tf import files


class ReproduceError(ValueError):
    """A configuration or input problem; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetBuilders:
    """The dataset-building steps a run calls, handed in by its caller (tools/reproduce and
    tools/demo pass data_prep's public functions; see docs/interfaces.md).

    Attributes:
      make_tfrecords: callable(kind, *, output_dir, name, report, ...) that builds the TFRecord
        dataset OUTPUT_DIR/NAME of kind `images`, `pairs` or `simulated`
        (data_prep.prepare.make_tfrecords).
      sample_datasets: callable(root, report=None) -> {"train"|"val"|"test": spec,
        "output_dir", "name"}: the embedded sample `images` dataset, built once under root
        (data_prep.sample_photos.ensure_sample_datasets).
      input_errors: the exception types of both callables that mean bad input (not a bug); a
        stage turns them into ReproduceError.
    """
    make_tfrecords: Callable
    sample_datasets: Callable
    input_errors: Tuple[type, ...] = ()


def say(progress, text):
    """Send text to the progress callable, if any."""
    if progress:
        progress(text)


def write_json(path, value):
    """Write JSON atomically (a killed run never leaves a half-written stage record); numpy
    values become numbers and lists."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_json(path, value, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def model_row(evaluated, suffix=""):
    """The model's own row of an evaluation record at input gain 1 (not a baseline, a
    calibrated-exposure row or another gain of an exposure sweep); with `suffix`
    (evaluation_scoring.CALIBRATED_EXPOSURE or _COLOUR) the model's row with that suffix, None
    when the evaluation has none."""
    rows = [r for r in evaluated["rows"] if r["kind"] == "model" and r.get("gain", 1.0) == 1.0]
    if not suffix:
        return rows[0]
    return next((r for r in rows if r["method"] == rows[0]["method"] + suffix), None)


def draw_entry(draw, seed, records, calibrated_suffix=None):
    """One draw of the device subset from its evaluation records {kind: record} (e.g.
    "transfer" and "scratch"): {"draw", "seed", "output_dirs": {kind: folder}, kind: row[,
    "calibrated": {kind: row}]}, the last when the evaluations have rows with
    `calibrated_suffix` (--device_exposure)."""
    entry = {"draw": draw, "seed": seed, "output_dirs": {}}
    for kind, record in records.items():
        entry[kind] = model_row(record)
        entry["output_dirs"][kind] = record["output_dir"]
        calibrated = calibrated_suffix and model_row(record, calibrated_suffix)
        if calibrated:
            entry.setdefault("calibrated", {})[kind] = calibrated
    return entry


class Run:
    """Paths, settings, dataset builders and the stage records of one work_dir."""

    def __init__(self, config, builders, progress, user_errors=()):
        """user_errors: library exception types that a stage reports as ReproduceError."""
        self.config = config
        self.builders = builders
        self.progress = progress
        self.user_errors = tuple(user_errors) + tuple(builders.input_errors)
        self.work_dir = os.path.abspath(config.work_dir)
        self.tfrecords = os.path.join(self.work_dir, "tfrecords")
        self.models = os.path.join(self.work_dir, "models")
        self.evals = os.path.join(self.work_dir, "evaluations")
        self.state_dir = os.path.join(self.work_dir, "stages")

    def say(self, text):
        """A progress line."""
        say(self.progress, text)

    def report_line(self, line):
        """An indented progress line of a library call inside a stage."""
        say(self.progress, "  " + line)

    def record_path(self, name):
        """WORK_DIR/stages/NAME.json."""
        return os.path.join(self.state_dir, f"{name}.json")

    def done(self, name):
        """Whether stage `name` finished in this or an earlier run."""
        return os.path.isfile(self.record_path(name))

    def stage(self, name, build, kwargs):
        """Run `build(self, name, **kwargs)` once: its JSON record is stored and returned on every
        later run (with the seconds it took)."""
        path = self.record_path(name)
        if os.path.isfile(path):
            self.say(f"== [{name}] finished earlier; reusing {path}")
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        self.say(f"== [{name}] {time.strftime('%H:%M:%S')}")
        started = time.monotonic()
        try:
            result = build(self, name, **kwargs)
        except self.user_errors as error:
            raise ReproduceError(f"stage {name}: {error}") from error
        result["seconds"] = round(time.monotonic() - started, 1)
        write_json(path, result)
        self.say(f"== [{name}] done in {result['seconds']:.0f} s")
        return result
