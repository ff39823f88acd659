"""Evaluation of a model on test sets in the form of the paper's Table 1 (paper §3.3, §4).

The paper reports, per model and test set, the average PSNR (§3.3 formula, 8-bit values) of
full test images stitched from patches, with the number of training images taken from that
dataset and the epochs of the initial / transfer training (Table 1). `evaluate` does the same
with full-image inference (or blended tiles, or the paper's non-overlapping stitching for
comparison), adds SSIM and GT-mean PSNR (always in their own, labelled columns) and classical
baseline rows computed on the same images (lowlight_tf.baselines), and writes:

- `per_image.csv`: one line per (dataset, image, method);
- `summary.json`: `rows`, one object per (method, dataset) with `method`, `dataset`, `psnr`,
  `psnr_gt_mean`, `ssim`, `images` (baselines are rows too, `kind` tells them apart);
- `table.md`: the Table 1 shaped Markdown table;
- `panels/`: input | prediction | reference PNGs for the first K images of each dataset.

Beyond the paper, an exposure sweep: with `input_gains` every dark input is also scaled by each
gain (an 8-bit multiply with clipping, as if exposed longer or shorter) and scored against the
same reference, one row per (method, dataset, gain), with the output / reference brightness; and
a no-reference check on unpaired photos (`unpaired`: mean brightness and clipped highlights of
each method's outputs, in `unpaired.csv` and `summary.json`'s `unpaired_rows`).

Predictions and baseline outputs are rounded to 8-bit values before the metrics, as if saved.
The report is staged in a hidden folder and put in place only when complete (`ReportFolder`):
a kill or an unreadable dataset never leaves old and new report files mixed.
"""
import csv
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from lowlight_tf import baselines as baselines_lib
from lowlight_tf import config as config_lib
from lowlight_tf import data
from lowlight_tf import files
from lowlight_tf import inference
from lowlight_tf import metrics
from lowlight_tf import model as model_lib
from lowlight_tf import progress as progress_lib
from lowlight_tf.media import formats

DEFAULT_SPLIT = "test"
DEFAULT_GAINS = (1.0,)
PANEL_MAX_SIDE = 800  # panels are downscaled so one image of the triptych is at most this wide
NOT_AVAILABLE = "n/a"
FLAGS_NAME = "flags.txt"
# Written last into every report folder: what tools/evaluate wrote there (so a later run may
# replace that folder as a whole, and never a folder holding anything else).
REPORT_MARKER = ".evaluation_report.json"


class EvaluationError(ValueError):
    """A user error (bad model, dataset or output directory); the message says what to do."""


@dataclasses.dataclass
class TrainingFacts:
    """What Table 1 says about how a model was trained.

    `training_images` maps a dataset key `OUTPUT_DIR/NAME` (absolute) to the number of its images
    used in training; datasets not in the map get 0 when `known` is True and "n/a" otherwise. A
    simulated test set counts the images its source dataset gave to training (the paper's
    "RAISE 6k, 6000" row: pretrained on simulated RAISE, tested on simulated RAISE).
    `epochs` is the Table 1 text "initial / transfer", e.g. "100 / 250" or "100 / -".
    """
    known: bool = False
    training_images: dict = dataclasses.field(default_factory=dict)
    epochs: str = NOT_AVAILABLE

    def images_for(self, dataset_keys):
        """Training images taken from any of `dataset_keys` (a dataset and its source)."""
        if not self.known:
            return NOT_AVAILABLE
        return sum(self.training_images.get(key, 0) for key in set(dataset_keys))


# ----------------------------------------------------------------------------------------------
# Training facts from model_dir/flags.txt.

def _read_flags(path):
    """Reads `--name=value` lines (tools/train's flags.txt) into a dict of strings."""
    with open(path, encoding="utf-8") as f:
        return config_lib.parse_flag_lines(f)


def model_dir_of(model_path):
    """The tools/train model_dir a model path belongs to (or None).

    Accepts a model_dir, its final.keras, or one of its checkpoints/epoch_NNN.weights.h5.
    """
    if not model_path:
        return None
    path = os.path.abspath(model_path)
    candidates = [path] if os.path.isdir(path) else []
    candidates += [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, FLAGS_NAME)):
            return candidate
    return None


def _dataset_key(spec_text, sample_root=None):
    """`OUTPUT_DIR/NAME` (absolute) and split of a train_data flag value."""
    if spec_text in ("", "sample"):
        if not sample_root:
            return None, None
        spec_text = os.path.join(sample_root, "tfrecords", "sample") + ":train"
    parsed = data.parse_dataset_spec(spec_text, default_split="train")
    return os.path.abspath(os.path.join(parsed.output_dir, parsed.name)), parsed.split


def _count_training_images(flags):
    """(dataset key, number of images a tools/train run used), or (None, None) if unknown."""
    from lowlight_tf import pipeline
    try:
        key, split = _dataset_key(flags.get("train_data", ""), flags.get("sample_root"))
        if key is None:
            return None, None
        output_dir, name = os.path.split(key)
        fraction = float(flags.get("train_fraction", 1.0))
        if fraction >= 1.0:
            return key, data.num_examples(output_dir, name, split)
        subset = pipeline.select_fraction(data.load(output_dir, name, split), fraction,
                                          seed=int(flags.get("seed", 0)))
        return key, int(subset.reduce(0, lambda count, _: count + 1))
    except (ValueError, OSError, ImportError):
        return None, None


def training_facts(model_path):
    """Reads Table 1's training facts from the model_dir's flags.txt (and its --init_from chain).

    Returns:
      TrainingFacts; `known` False (every entry "n/a") when no flags.txt is found.
    """
    model_dir = model_dir_of(model_path)
    if model_dir is None:
        return TrainingFacts()
    chain = []
    seen = set()
    while model_dir is not None and model_dir not in seen and len(chain) < 10:
        seen.add(model_dir)
        flags = _read_flags(os.path.join(model_dir, FLAGS_NAME))
        chain.append(flags)
        model_dir = model_dir_of(flags.get("init_from")) if flags.get("init_from") else None
    facts = TrainingFacts(known=True)
    for flags in chain:
        key, count = _count_training_images(flags)
        if key is not None:
            facts.training_images[key] = facts.training_images.get(key, 0) + count
    own = chain[0]
    epochs = own.get("epochs", "?")
    checkpoint = re.match(r"^epoch_(\d+)\.weights\.h5$", os.path.basename(str(model_path)))
    if checkpoint:  # a per-epoch checkpoint: the epochs it has seen, not the run's target
        epochs = str(int(checkpoint.group(1)))
    if own.get("init_from"):
        initial = chain[1].get("epochs", "?") if len(chain) > 1 else "?"
        facts.epochs = f"{initial} / {epochs}"
    else:
        facts.epochs = f"{epochs} / -"
    return facts


# ----------------------------------------------------------------------------------------------
# Checks before any work.

@dataclasses.dataclass
class _Dataset:
    spec: str
    label: str  # NAME:split
    key: str  # absolute OUTPUT_DIR/NAME
    output_dir: str
    name: str
    split: str
    kind: str
    count: int
    source_key: str = None  # a simulated dataset's source images dataset (OUTPUT_DIR/NAME)

    @property
    def keys(self):
        return [self.key] + ([self.source_key] if self.source_key else [])


def _source_key(output_dir, name):
    """OUTPUT_DIR/NAME (absolute) of a simulated dataset's source, from its summary.json."""
    try:
        source = data.read_summary(output_dir, name).get("source_data")
        if not source:
            return None
        parsed = data.parse_dataset_spec(source)
    except (ValueError, OSError):
        return None
    key = os.path.abspath(os.path.join(parsed.output_dir, parsed.name))
    if not os.path.isdir(key):  # written relative to another working directory
        sibling = os.path.abspath(os.path.join(output_dir, parsed.name))
        key = sibling if os.path.isdir(sibling) else key
    return key


def _resolve_datasets(datasets, default_split):
    """Parses and checks every dataset spec; raises EvaluationError for unusable ones."""
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        raise EvaluationError("No dataset to evaluate on; pass at least one "
                              "--data=OUTPUT_DIR/NAME[:split].")
    resolved = []
    for spec in datasets:
        try:
            parsed = data.parse_dataset_spec(spec, default_split=default_split)
            kind = data.dataset_kind(parsed.output_dir, parsed.name)
            count = data.num_examples(parsed.output_dir, parsed.name, parsed.split)
        except (ValueError, OSError) as e:
            raise EvaluationError(f"Dataset {spec}: {e}") from e
        if kind == "images":
            raise EvaluationError(
                f"Dataset {spec} is an 'images' dataset (bright images only), so there is no dark "
                "input to evaluate on. Build a 'simulated' dataset from it, or use a 'pairs' "
                "dataset, with tools/make_tfrecords.")
        if count == 0:
            raise EvaluationError(
                f"Dataset {spec} has no examples in split '{parsed.split}'; choose another split "
                "(OUTPUT_DIR/NAME:split) or rebuild it with tools/make_tfrecords.")
        resolved.append(_Dataset(
            spec, f"{parsed.name}:{parsed.split}",
            os.path.abspath(os.path.join(parsed.output_dir, parsed.name)), parsed.output_dir,
            parsed.name, parsed.split, kind, count,
            _source_key(parsed.output_dir, parsed.name) if kind == "simulated" else None))
    return resolved


def _load_model(model):
    """Returns (keras model, path or None); raises EvaluationError for unloadable paths."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            return model_lib.load_model(path), path
        except model_lib.ModelLoadError as e:
            raise EvaluationError(str(e)) from e
    return model, None


def default_model_label(model_path):
    """A short row label for a model path: the model_dir name (or the file name)."""
    if not model_path:
        return "model"
    model_dir = model_dir_of(model_path)
    if model_dir is not None:
        return os.path.basename(model_dir.rstrip(os.sep))
    path = os.path.abspath(model_path).rstrip(os.sep)
    if os.path.basename(path) == model_lib.FINAL_MODEL_NAME:
        return os.path.basename(os.path.dirname(path))
    return os.path.splitext(os.path.basename(path))[0]

# ----------------------------------------------------------------------------------------------
# The report folder: staged, then put in place in one step.

def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_files(folder):
    """Relative paths of every file under `folder` (sorted)."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(found)


def _is_previous_report(folder, names):
    """True when `folder` holds only the files of an earlier tools/evaluate report."""
    marker = os.path.join(folder, REPORT_MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                listed = set(json.load(f).get("files", []))
        except (OSError, ValueError, AttributeError):
            return False
        return set(names) <= listed | {REPORT_MARKER}
    # A report of a version without the marker: only its known files, and its summary.json.
    known = {"per_image.csv", "summary.json", "table.md"}
    if not all(n in known or (n.startswith("panels" + os.sep) and n.endswith(".png"))
               for n in names) or "summary.json" not in names:
        return False
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "rows" in summary and "metrics" in summary


class ReportFolder:
    """Where one evaluation's report is written: a hidden staging folder beside `output_dir`,
    put in place by `commit()` only when the whole report is complete.

    A kill or an error before `commit` leaves `output_dir` exactly as it was (the staging folder
    is hidden and removed by the next run). `output_dir` may be missing, empty or an earlier
    report of this tool: it is then replaced as a whole, so old and new files never mix. A
    folder holding anything else is refused unless `overwrite`; with `overwrite` the report's
    files are moved into it one by one (each replace is atomic) and only the files of an earlier
    report listed in its marker are removed, never the user's other files.
    """

    def __init__(self, output_dir, overwrite=False):
        self.output_dir = os.path.abspath(output_dir)
        parent, self.name = os.path.split(self.output_dir.rstrip(os.sep))
        if os.path.lexists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise EvaluationError(f"--output_dir {output_dir} is a file, not a folder; choose "
                                  "another --output_dir.")
        self.existing = _report_files(self.output_dir) if os.path.isdir(self.output_dir) else []
        self.replace_whole = not self.existing or _is_previous_report(self.output_dir,
                                                                      self.existing)
        if not self.replace_whole and not overwrite:
            shown = ", ".join(self.existing[:3]) + (", ..." if len(self.existing) > 3 else "")
            raise EvaluationError(
                f"--output_dir {output_dir} holds files tools/evaluate did not write ({shown}). "
                "Choose a new or empty --output_dir, or pass --overwrite to write the report "
                "into it (only the report's own files are replaced).")
        try:
            os.makedirs(parent, exist_ok=True)
            self._remove_stale(parent)
            self.staging = tempfile.mkdtemp(prefix=f".{self.name}.staging-{os.getpid()}-",
                                            dir=parent)
        except OSError as e:
            raise EvaluationError(f"Cannot write the report to {output_dir} "
                                  f"({e.strerror or e}); choose a folder you can write to.") from e
        self.written = []

    def _remove_stale(self, parent):
        """Deletes staging folders of this output_dir left by killed runs (dead process ids)."""
        pattern = re.compile(rf"^\.{re.escape(self.name)}\.(staging|old)-(\d+)-")
        for entry in os.listdir(parent):
            match = pattern.match(entry)
            if match and not _pid_alive(int(match.group(2))):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

    def path(self, relative):
        """The staging path of a report file (folders created); records it as written."""
        path = os.path.join(self.staging, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.written.append(relative)
        return path

    def commit(self):
        """Puts the complete report in place of output_dir; returns output_dir."""
        files.write_json(os.path.join(self.staging, REPORT_MARKER),
                         {"tool": "tools/evaluate", "files": sorted(set(self.written))})
        if self.replace_whole:
            old = None
            if os.path.isdir(self.output_dir):
                old = tempfile.mkdtemp(prefix=f".{self.name}.old-{os.getpid()}-",
                                       dir=os.path.dirname(self.output_dir))
                os.rename(self.output_dir, os.path.join(old, "report"))
            os.rename(self.staging, self.output_dir)
            if old:
                shutil.rmtree(old, ignore_errors=True)
            return self.output_dir
        previous = []
        marker = os.path.join(self.output_dir, REPORT_MARKER)
        if os.path.isfile(marker):
            try:
                with open(marker, encoding="utf-8") as f:
                    previous = list(json.load(f).get("files", []))
            except (OSError, ValueError, AttributeError):
                previous = []
        for relative in sorted(set(previous) - set(self.written)):
            stale = os.path.join(self.output_dir, relative)
            if os.path.isfile(stale):
                os.remove(stale)
        for relative in sorted(set(self.written)) + [REPORT_MARKER]:
            target = os.path.join(self.output_dir, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(self.staging, relative), target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.output_dir

    def abandon(self):
        """Removes the staging folder; output_dir is untouched."""
        shutil.rmtree(self.staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The evaluation loop.

def quantize(image):
    """Rounds float32 [H, W, 3] to 8-bit values in [0, 255] (still float32), as if saved."""
    return np.round(np.clip(image, 0.0, 255.0)).astype(np.float32)


def parse_gains(values):
    """Input gains from a list of numbers or strings, e.g. ["0.5", "1", "2"] -> (0.5, 1.0, 2.0).

    Raises:
      EvaluationError: an empty list, a value that is not a number, or one <= 0.
    """
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    gains = []
    for value in values:
        try:
            gain = float(value)
        except (TypeError, ValueError):
            gain = float("nan")
        if not (np.isfinite(gain) and gain > 0):
            raise EvaluationError(f"Input gain {value!r} is not a positive number; write e.g. "
                                  "--input_gains=0.5,1,2,4.")
        if gain not in gains:
            gains.append(gain)
    if not gains:
        raise EvaluationError("No input gain given; write e.g. --input_gains=0.5,1,2,4.")
    return tuple(gains)


def scale_input(dark, gain):
    """A dark input as if exposed `gain` times longer: an 8-bit multiply with clipping.

    Args:
      dark: float32 [H, W, 3] in [0, 255].
      gain: positive float.

    Returns:
      float32 [H, W, 3] of 8-bit values: clip(round(dark * gain), 0, 255), i.e.
      clip(round(d * 255 * gain), 0, 255) for d in [0, 1]. Gain 1 returns the input unchanged
      (so the default evaluation of a 16-bit dataset is not quantised).
    """
    dark = np.asarray(dark, np.float32)
    if gain == 1.0:
        return dark
    return np.clip(np.round(dark * np.float32(gain)), 0.0, 255.0).astype(np.float32)


def brightness_ratio(output, reference):
    """mean(output) / mean(reference) of float [H, W, 3] images (NaN for a black reference)."""
    reference_mean = float(np.mean(reference, dtype=np.float64))
    if reference_mean <= 0.0:
        return float("nan")
    return float(np.mean(output, dtype=np.float64)) / reference_mean


def geometric_mean(values):
    """Geometric mean of the finite values (0.0 if one is 0; NaN when none is finite)."""
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if values.size == 0:
        return float("nan")
    if np.any(values <= 0.0):
        return 0.0
    return float(np.exp(np.mean(np.log(values))))


def image_metrics(prediction, reference):
    """(psnr, psnr_gt_mean, ssim) of float32 [H, W, 3] images in [0, 255] (lowlight_tf.metrics)."""
    return (float(metrics.psnr(prediction, reference)),
            float(metrics.psnr_gt_mean(prediction, reference)),
            float(metrics.ssim(prediction, reference)))


def _panel(dark, prediction, bright):
    """uint8 [h, 3w, 3]: input | prediction | reference, downscaled to PANEL_MAX_SIDE wide each."""
    parts = [np.round(np.clip(p, 0, 255)).astype(np.uint8) for p in (dark, prediction, bright)]
    height, width = parts[0].shape[:2]
    if max(height, width) > PANEL_MAX_SIDE:
        scale = PANEL_MAX_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        parts = [np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BOX)) for p in parts]
    return np.concatenate(parts, axis=1)


def _save_png(path, array):
    """Writes uint8 [H, W, 3] as a PNG atomically."""
    with files.atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "image"


def _gain_suffix(gain, gains):
    return "" if gains == (1.0,) else f"_x{gain:g}"


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _read_error(spec, index, total, error, output_dir):
    """EvaluationError for a dataset that fails while it is read (a damaged shard)."""
    detail = str(getattr(error, "message", "") or error).strip().splitlines()
    detail = detail[0] if detail else type(error).__name__
    return EvaluationError(
        f"Dataset {spec} could not be read after {index} of {total} images "
        f"({type(error).__name__}: {detail[:300]}). A shard is damaged or truncated (an "
        "interrupted copy or a full disk?): copy the dataset again, or rebuild it with "
        "tools/make_tfrecords (same flags plus --overwrite). No report was written; "
        f"{output_dir} is as it was.")


def evaluate(model, datasets, output_dir, *, tile=None, overlap=inference.DEFAULT_OVERLAP,
             stitch="blend", save_images=4, baselines=tuple(baselines_lib.BASELINE_KEYS),
             model_label=None, facts=None, max_images=None, default_split=DEFAULT_SPLIT,
             exposure_curves=None, input_gains=DEFAULT_GAINS, unpaired=None, overwrite=False,
             progress=print):
    """Evaluates a model and the classical baselines on test sets; writes the reports.

    Args:
      model: a keras.Model, or a path: a .keras file, a model_dir of tools/train, or one of its
        checkpoints (lowlight_tf.model.load_model).
      datasets: spec strings `OUTPUT_DIR/NAME[:split]` (split default "test") of `pairs` or
        `simulated` datasets; may be empty when `unpaired` is given.
      output_dir: where per_image.csv, summary.json, table.md and panels/ go. The report is
        written to a hidden staging folder and put in place when complete (`ReportFolder`):
        missing, empty or an earlier report of this tool is replaced as a whole; any other
        folder needs `overwrite`.
      tile, overlap, stitch: inference mode, see `inference.predict_array`: tile None = whole
        image; stitch "paper" = the paper's non-overlapping patches of `tile` (default 64) px.
      save_images: number of panels (input | prediction | reference) per dataset and gain.
      baselines: baseline keys of lowlight_tf.baselines (input, gamma, he, auto_gain) to add
        as rows; empty for none.
      model_label: the model's row label (default: its model_dir or file name).
      facts: TrainingFacts for Table 1 (default: read from the model_dir's flags.txt).
      max_images: evaluate only the first N images of each dataset (quick checks).
      default_split: split used when a spec has none.
      exposure_curves: optional {dataset spec (as given in `datasets`): float [3, 256]}: for those
        datasets, a second model row "<label> + calibrated exposure" with each prediction's
        brightness set by that camera's exposure curve (`inference.anchor_exposure`).
      input_gains: the exposure sweep: positive floats; every dark input is scaled by each gain
        (`scale_input`, an 8-bit multiply with clipping) and scored against the same
        reference, giving one row per (method, dataset, gain). Default (1.0,): as stored.
      unpaired: optional folder of ordinary photos (or raw files) without references: the
        model and the baselines run on each, at each gain, and `no_reference_stats` of every
        output (mean brightness, clipped-highlight fraction) is reported (`unpaired_rows`).
      overwrite: allow writing into a folder that holds files this tool did not write.
      progress: callable taking one line of text (None for silence, also of the per-image
        progress bar of lowlight_tf.progress on stderr).

    Returns:
      The summary rows: dicts with method, kind ("model" | "baseline"), dataset, gain, psnr,
      psnr_gt_mean, ssim, brightness_ratio, images, training_images, epochs. PSNR and GT-mean
      PSNR in dB; `brightness_ratio` is the geometric mean over images of the per-image ratio
      mean(output) / mean(reference) (a mean of ratios, not a ratio of means; 1 = the
      reference's brightness).

    Raises:
      EvaluationError: missing/corrupt model, model/data mismatch, unusable or empty dataset,
        bad gains, unwritable or foreign output directory (raised before any inference); a
        dataset that turns out unreadable while it is read (a truncated shard; no report is
        written then).
    """
    say = progress or (lambda line: None)
    if stitch not in inference.STITCH_MODES:
        raise EvaluationError(f"stitch must be one of {inference.STITCH_MODES}, got {stitch!r}.")
    baseline_names = [baselines_lib.BASELINE_KEYS.get(b, b) for b in baselines]
    unknown = [b for b in baseline_names if b not in baselines_lib.BASELINES]
    if unknown:
        raise EvaluationError(f"Unknown baseline(s) {unknown}; choose from "
                              f"{', '.join(baselines_lib.BASELINE_KEYS)}.")
    gains = parse_gains(input_gains)
    if unpaired is not None:
        unpaired_paths = _unpaired_inputs(unpaired)
    if isinstance(datasets, str):
        datasets = [datasets]
    resolved = _resolve_datasets(datasets, default_split) if datasets or unpaired is None else []
    exposure_curves = dict(exposure_curves or {})
    unknown = sorted(set(exposure_curves) - {d.spec for d in resolved})
    if unknown:
        raise EvaluationError(f"exposure_curves names dataset(s) {unknown} that are not among "
                              f"the evaluated ones {[d.spec for d in resolved]}.")
    keras_model, model_path = _load_model(model)
    channels, _, _ = inference.model_geometry(keras_model)
    if channels != 3:
        raise EvaluationError(
            f"Model {model_path or model_label or ''} takes packed bayer raw input "
            f"([H/2, W/2, {channels}]) but the datasets hold RGB images; evaluate an rgb model "
            "(tools/train builds rgb models) or enhance raw files with tools/enhance.")
    label = model_label or default_model_label(model_path)
    if facts is None:
        facts = training_facts(model_path) if model_path else TrainingFacts()
    report = ReportFolder(output_dir, overwrite=overwrite)
    try:
        started = time.time()
        per_image, rows = [], []
        for dataset in resolved:
            _evaluate_dataset(keras_model, dataset, label, facts, baseline_names, gains,
                              exposure_curves.get(dataset.spec), report, per_image, rows,
                              tile=tile, overlap=overlap, stitch=stitch, save_images=save_images,
                              max_images=max_images, say=say, quiet=progress is None)
        unpaired_per_image, unpaired_rows, skipped = [], [], []
        if unpaired is not None:
            _evaluate_unpaired(keras_model, unpaired, unpaired_paths, label, baseline_names,
                               gains, unpaired_per_image, unpaired_rows, skipped, tile=tile,
                               overlap=overlap, stitch=stitch, say=say, quiet=progress is None)
        settings = {"model": os.path.abspath(model_path) if model_path else None, "tile": tile,
                    "overlap": overlap if tile else None, "stitch": stitch,
                    "datasets": [d.spec for d in resolved], "max_images": max_images,
                    "input_gains": list(gains),
                    "unpaired": os.path.abspath(unpaired) if unpaired else None,
                    "seconds": round(time.time() - started, 1)}
        write_reports(report, rows, per_image, settings, unpaired_rows=unpaired_rows,
                      unpaired_per_image=unpaired_per_image, unpaired_skipped=skipped)
        report.commit()
    except BaseException:
        report.abandon()
        raise
    if rows:
        say(format_table(rows))
    if unpaired_rows:
        say(format_unpaired_table(unpaired_rows))
    for path, reason in skipped:
        say(f"skipped {path}: {reason}")
    say(f"Reports in {output_dir}: " + ", ".join(
        (["per_image.csv"] if rows else []) + (["unpaired.csv"] if unpaired_rows else [])
        + ["summary.json", "table.md"] + (["panels/"] if save_images and rows else [])))
    return rows


def _evaluate_dataset(keras_model, dataset, label, facts, baseline_names, gains, exposure_curve,
                      report, per_image, rows, *, tile, overlap, stitch, save_images,
                      max_images, say, quiet):
    """Scores one dataset at every gain; appends to `per_image` and `rows`."""
    source = data.load(dataset.output_dir, dataset.name, dataset.split)
    total = dataset.count if max_images is None else min(dataset.count, max_images)
    gain_text = "" if gains == (1.0,) else f", input gains {', '.join(f'{g:g}' for g in gains)}"
    say(f"Evaluating {label} on {dataset.label} ({total} images, "
        f"{_mode_text(tile, overlap, stitch)}{gain_text})")
    anchored = f"{label} + calibrated exposure"
    model_rows = [label] + ([anchored] if exposure_curve is not None else [])
    names = model_rows + baseline_names
    results = {(name, gain): [] for gain in gains for name in names}
    bar = progress_lib.bar(total=total, desc=f"Evaluating on {dataset.label}", unit="images",
                           enabled=not quiet)
    index = 0
    try:
        for index, example in enumerate(source.take(total).as_numpy_iterator()):
            stored_dark = np.asarray(example["dark"], np.float32)
            bright = np.asarray(example["bright"], np.float32)
            image_id = example["id"].decode("utf-8", "replace")
            if stored_dark.shape != bright.shape:
                raise EvaluationError(
                    f"Dataset {dataset.spec}: image {image_id} has dark {stored_dark.shape} and "
                    f"bright {bright.shape} of different sizes; rebuild it with "
                    "tools/make_tfrecords, which aligns pairs.")
            for gain in gains:
                dark = scale_input(stored_dark, gain)
                prediction = quantize(inference.predict_image(
                    keras_model, dark, tile=tile, overlap=overlap, stitch=stitch))
                outputs = {label: prediction}
                if exposure_curve is not None:
                    outputs[anchored] = quantize(255.0 * inference.anchor_exposure(
                        prediction / 255.0, dark / 255.0, exposure_curve))
                for name in baseline_names:
                    outputs[name] = quantize(baselines_lib.apply(name, dark))
                for name, output in outputs.items():
                    values = image_metrics(output, bright) + (brightness_ratio(output, bright),)
                    results[(name, gain)].append(values)
                    per_image.append({"dataset": dataset.label, "id": image_id, "method": name,
                                      "gain": gain, "psnr": values[0],
                                      "psnr_gt_mean": values[1], "ssim": values[2],
                                      "brightness_ratio": values[3]})
                if index < save_images:
                    stem = _safe_name(os.path.splitext(image_id)[0])
                    _save_png(report.path(os.path.join(
                        "panels", f"{_safe_name(dataset.label)}_{index:03d}_{stem}"
                        f"{_gain_suffix(gain, gains)}.png")), _panel(dark, prediction, bright))
            bar.update(1)
            first = results[(label, gains[0])]
            bar.set_postfix_str(f"mean PSNR {_mean([v[0] for v in first]):.2f} dB")
    except tf.errors.OpError as e:
        raise _read_error(dataset.spec, index, total, e, report.output_dir) from e
    finally:
        bar.close()
    for gain in gains:
        psnr_text = _mean([v[0] for v in results[(label, gain)]])
        say(f"  {dataset.label}{f' x{gain:g}' if gains != (1.0,) else ''}: {label} mean PSNR "
            f"{psnr_text:.2f} dB over {len(results[(label, gain)])} images")
        for name in names:
            values = results[(name, gain)]
            is_model = name in model_rows
            rows.append({
                "method": name,
                "kind": "model" if is_model else "baseline",
                "dataset": dataset.label,
                "gain": gain,
                "psnr": _mean([v[0] for v in values]),
                "psnr_gt_mean": _mean([v[1] for v in values]),
                "ssim": _mean([v[2] for v in values]),
                "brightness_ratio": geometric_mean([v[3] for v in values]),
                "images": len(values),
                "training_images": facts.images_for(dataset.keys) if is_model else 0,
                "epochs": facts.epochs if is_model else "-",
            })


def _unpaired_inputs(folder):
    """The image and raw files of an --unpaired folder; EvaluationError when there are none."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"--unpaired {folder} is not a folder; pass a folder of ordinary "
                              "photos (PNG, JPEG, TIFF, ...) or raw files.")
    paths = [p for p in inference.expand_inputs([folder]) if os.path.isfile(p)]
    if not paths:
        listed = ", ".join(sorted(formats.IMAGE_EXTENSIONS))
        raise EvaluationError(f"--unpaired {folder} holds no image or raw file (by extension: "
                              f"{listed}, camera raw); add photos or fix the path.")
    return paths


def _evaluate_unpaired(keras_model, folder, paths, label, baseline_names, gains, per_image, rows,
                       skipped, *, tile, overlap, stitch, say, quiet):
    """No-reference statistics of the model and the baselines on photos without references."""
    dataset = f"unpaired:{os.path.basename(os.path.abspath(folder).rstrip(os.sep))}"
    say(f"No-reference check of {label} on {len(paths)} unpaired photos in {folder}")
    names = [label] + baseline_names
    stats = {(name, gain): [] for gain in gains for name in names}
    for path in progress_lib.track(paths, desc=f"Unpaired photos in {folder}", unit="images",
                                   enabled=not quiet):
        try:
            decoded = inference.decode_input(path)
        except inference.UnreadableImageError as e:
            skipped.append((path, str(e)))
            continue
        photo = (np.asarray(decoded.model_input, np.float32)
                 * np.float32(255.0 / decoded.scale))
        for gain in gains:
            dark = scale_input(photo, gain)
            outputs = {label: quantize(inference.predict_image(
                keras_model, dark, tile=tile, overlap=overlap, stitch=stitch))}
            for name in baseline_names:
                outputs[name] = quantize(baselines_lib.apply(name, dark))
            for name, output in outputs.items():
                result = metrics.no_reference_stats(output)
                stats[(name, gain)].append(result)
                per_image.append({"dataset": dataset, "id": os.path.basename(path),
                                  "method": name, "gain": gain,
                                  "mean_brightness": result.mean_brightness,
                                  "clipped_fraction": result.clipped_fraction})
    for gain in gains:
        for name in names:
            values = stats[(name, gain)]
            rows.append({
                "method": name, "kind": "model" if name == label else "baseline",
                "dataset": dataset, "gain": gain,
                "mean_brightness": _mean([v.mean_brightness for v in values]),
                "clipped_fraction": _mean([v.clipped_fraction for v in values]),
                "images": len(values)})


def _mode_text(tile, overlap, stitch):
    if stitch == "paper":
        return f"paper stitching of {tile or 64} px patches"
    if tile:
        return f"tiles of {tile} px blended over {overlap} px"
    return "whole images"


# ----------------------------------------------------------------------------------------------
# Reports.

def _format_number(value, digits):
    if isinstance(value, (int, float)) and np.isfinite(value):
        return f"{value:.{digits}f}"
    return NOT_AVAILABLE


def format_table(rows):
    """Markdown table in the shape of the paper's Table 1 (plus SSIM, GT-mean PSNR, the input
    gain and the output / reference brightness, in their own columns).

    GT-mean PSNR (prediction scaled to the reference's mean first) is never mixed with PSNR.
    """
    lines = [
        "| Model | Dataset | No. training images from dataset | No. epochs initial / transfer "
        "| PSNR (dB) | SSIM | GT-mean PSNR (dB) | Input gain | Output / reference brightness |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        is_baseline = row.get("kind") == "baseline"
        lines.append(
            f"| {row['method']}{' (baseline)' if is_baseline else ''} | {row['dataset']} "
            f"| {'-' if is_baseline else row.get('training_images', NOT_AVAILABLE)} "
            f"| {'-' if is_baseline else row.get('epochs', NOT_AVAILABLE)} "
            f"| {_format_number(row['psnr'], 2)} | {_format_number(row['ssim'], 3)} "
            f"| {_format_number(row['psnr_gt_mean'], 2)} | {row.get('gain', 1.0):g} "
            f"| {_format_number(row.get('brightness_ratio'), 2)} |")
    return "\n".join(lines)


def format_unpaired_table(rows):
    """Markdown table of the no-reference check: mean brightness and clipped highlights."""
    lines = ["| Method | Photos | Input gain | Images | Mean brightness (of 255) "
             "| Clipped-highlight pixels (%) |", "|---|---|---|---|---|---|"]
    for row in rows:
        is_baseline = row.get("kind") == "baseline"
        lines.append(
            f"| {row['method']}{' (baseline)' if is_baseline else ''} | {row['dataset']} "
            f"| {row['gain']:g} | {row['images']} | {_format_number(row['mean_brightness'], 1)} "
            f"| {_format_number(100.0 * row['clipped_fraction'], 2)} |")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _csv_text(fieldnames, lines):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k != "gain" else
                             f"{v:g}" if k == "gain" else v) for k, v in line.items()})
    return buffer.getvalue()


PER_IMAGE_FIELDS = ["dataset", "id", "method", "gain", "psnr", "psnr_gt_mean", "ssim",
                    "brightness_ratio"]
UNPAIRED_FIELDS = ["dataset", "id", "method", "gain", "mean_brightness", "clipped_fraction"]


def write_reports(report, rows, per_image, settings, *, unpaired_rows=(),
                  unpaired_per_image=(), unpaired_skipped=()):
    """Writes per_image.csv, summary.json and table.md (and unpaired.csv) atomically.

    Args:
      report: a ReportFolder (files go to its staging folder), or a folder path (each file
        written atomically in place).
    """
    def path(name):
        if isinstance(report, ReportFolder):
            return report.path(name)
        os.makedirs(report, exist_ok=True)
        return os.path.join(report, name)

    if rows:
        files.write_text(path("per_image.csv"), _csv_text(PER_IMAGE_FIELDS, per_image))
    if unpaired_rows:
        files.write_text(path("unpaired.csv"), _csv_text(UNPAIRED_FIELDS, unpaired_per_image))
    summary = {
        "rows": [{k: _json_safe(v) for k, v in row.items()} for row in rows],
        "settings": settings,
        "metrics": {
            "psnr": "20 log10(255 / sqrt(MSE)) on 8-bit values (paper §3.3), mean over images",
            "psnr_gt_mean": "PSNR after scaling the prediction to the reference's mean "
                            "(GT-mean); not comparable with plain PSNR",
            "ssim": "SSIM, 11x11 Gaussian window sigma 1.5, on [0, 255] (tf.image.ssim)",
            "gain": "input gain: each dark input was clip(round(dark * gain), 0, 255) in 8-bit "
                    "values (gain 1: as stored), scored against the same reference",
            "brightness_ratio": "geometric mean over images of mean(output) / mean(reference) "
                                "(a mean of per-image ratios; 1 = the reference's brightness)",
        },
    }
    if unpaired_rows or unpaired_skipped:
        summary["unpaired_rows"] = [{k: _json_safe(v) for k, v in row.items()}
                                    for row in unpaired_rows]
        summary["unpaired_skipped"] = [{"path": p, "reason": r} for p, r in unpaired_skipped]
        summary["metrics"]["mean_brightness"] = (
            "no reference: mean over pixels and channels of the 8-bit output, of 255, "
            "averaged over photos")
        summary["metrics"]["clipped_fraction"] = (
            "no reference: fraction of pixels with any channel >= 254, averaged over photos")
    files.write_json(path("summary.json"), summary)
    text = []
    if rows:
        text.append(format_table(rows) + "\n\nPSNR by the paper's formula on 8-bit values; "
                    "GT-mean PSNR scales the prediction to the reference's mean brightness first "
                    "and is not comparable with plain PSNR. Baselines are computed on the same "
                    "images. Input gain: each dark input scaled by it (8-bit multiply with "
                    "clipping) before enhancement; output / reference brightness is the "
                    "geometric mean over images of mean(output) / mean(reference).\n")
    if unpaired_rows:
        text.append("## No-reference check on unpaired photos\n\n"
                    + format_unpaired_table(unpaired_rows) + "\n\nMean brightness of the 8-bit "
                    "outputs (of 255) and the share of pixels with a channel >= 254 (clipped "
                    "highlights), averaged over the photos: a blow-out shows as a high mean and "
                    "many clipped pixels.\n")
    files.write_text(path("table.md"), "\n".join(text))
