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
same reference, one row per (method, dataset, gain), with the output / reference brightness; the
chroma noise of each output in the reference's flat dark regions beside the reference's own on
the same pixels (lowlight_tf.chroma: the coloured blotches in shadows that PSNR barely sees); and
a no-reference check on unpaired photos (`unpaired`: mean brightness and clipped highlights of
each method's outputs, in `unpaired.csv` and `summary.json`'s `unpaired_rows`).

Predictions and baseline outputs are rounded to 8-bit values before the metrics, as if saved.
The report is staged in a hidden folder and put in place only when complete (`ReportFolder`):
a kill or an unreadable dataset never leaves old and new report files mixed.
"""
import dataclasses
import os
import time

import numpy as np

from lowlight_tf import baselines as baselines_lib
from lowlight_tf import brightness as brightness_lib
from lowlight_tf import data
from lowlight_tf import evaluation_scoring as scoring
from lowlight_tf import inference
from lowlight_tf import model as model_lib
from lowlight_tf.evaluation_report import (EvaluationError, ReportFolder, format_table,
                                           format_unpaired_table, write_reports)
from lowlight_tf.training_facts import TrainingFacts, model_dir_of, training_facts

DEFAULT_SPLIT = "test"
DEFAULT_GAINS = (1.0,)


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
# The evaluation (scoring image by image: lowlight_tf.evaluation_scoring).


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


def evaluate(model, datasets, output_dir, *, tile=None, overlap=inference.DEFAULT_OVERLAP,
             stitch="blend", save_images=4, baselines=tuple(baselines_lib.BASELINE_KEYS),
             model_label=None, facts=None, max_images=None, default_split=DEFAULT_SPLIT,
             exposure_curves=None, input_gains=DEFAULT_GAINS, unpaired=None, overwrite=False,
             chroma_filter=False, shift_ensemble=False, brightness="", progress=print):
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
        brightness set by that camera's exposure curve (`brightness.anchor_exposure`), and a
        third "<label> + calibrated colour" with each channel's mean set by it (per_channel).
      input_gains: the exposure sweep: positive floats; every dark input is scaled by each gain
        (`scale_input`, an 8-bit multiply with clipping) and scored against the same
        reference, giving one row per (method, dataset, gain). Default (1.0,): as stored.
      unpaired: optional folder of ordinary photos (or raw files) without references: the
        model and the baselines run on each, at each gain, and `no_reference_stats` of every
        output (mean brightness, clipped-highlight fraction) is reported (`unpaired_rows`).
      overwrite: allow writing into a folder that holds files this tool did not write.
      chroma_filter: also a row "<label> + chroma filter": the model's output with its chroma
        smoothed where its luma is flat (`chroma.filter_chroma`, what `tools/enhance` applies).
      shift_ensemble: run the model as the mean over the four 1-pixel shifts of its input
        (`inference.predict_array`; what `tools/enhance` does by default); its rows are
        labelled "<label> + shift ensemble".
      brightness: "" for none, or a tools/enhance `--brightness` setting ("auto", a mean level
        such as "0.4", an EV change such as "+1ev"): also a row "<label> + brightness SETTING"
        (" + chroma filter" when `chroma_filter`): the model's output with its brightness set
        as tools/enhance sets it (`brightness.apply_brightness`, then the chroma filter), so
        `shift_ensemble=True, chroma_filter=True, brightness="auto"` scores what
        `lowlight-enhance` writes with its defaults.
      progress: callable taking one line of text (None for silence, also of the per-image
        progress bar of lowlight_tf.progress on stderr).

    Returns:
      The summary rows: dicts with method, kind ("model" | "baseline"), dataset, gain, psnr,
      psnr_gt_mean, ssim, brightness_ratio, images, training_images, epochs, chroma_noise,
      chroma_noise_reference. PSNR and GT-mean PSNR in dB; `brightness_ratio` is the geometric
      mean over images of the per-image ratio mean(output) / mean(reference) (a mean of ratios,
      not a ratio of means; 1 = the reference's brightness); `chroma_noise` and
      `chroma_noise_reference` are the mean over images of `chroma.chroma_noise` of the output
      and of the reference, on the reference's flat dark blocks (8-bit units; images without
      such blocks left out, NaN when none has them).

    Raises:
      EvaluationError: missing/corrupt model, model/data mismatch, unusable or empty dataset,
        bad gains, unwritable or foreign output directory (raised before any inference); a
        dataset that turns out unreadable while it is read (a truncated shard; no report is
        written then).
    """
    say = progress or (lambda line: None)
    scorer, resolved, exposure_curves, unpaired_paths, model_path = _check_and_load(
        model, datasets, tile=tile, overlap=overlap, stitch=stitch, baselines=baselines,
        model_label=model_label, default_split=default_split, exposure_curves=exposure_curves,
        input_gains=input_gains, unpaired=unpaired, say=say, quiet=progress is None,
        chroma_filter=chroma_filter, shift_ensemble=shift_ensemble, brightness=brightness)
    if facts is None:
        facts = training_facts(model_path) if model_path else TrainingFacts()
    report = ReportFolder(output_dir, overwrite=overwrite)
    try:
        started = time.time()
        per_image, rows = [], []
        for dataset in resolved:
            scoring.score_dataset(scorer, dataset, facts, exposure_curves.get(dataset.spec),
                                  report, per_image, rows, save_images=save_images,
                                  max_images=max_images)
        unpaired_per_image, unpaired_rows, skipped = [], [], []
        if unpaired is not None:
            scoring.score_unpaired(scorer, unpaired, unpaired_paths, unpaired_per_image,
                                   unpaired_rows, skipped)
        settings = {"model": os.path.abspath(model_path) if model_path else None, "tile": tile,
                    "overlap": overlap if tile else None, "stitch": stitch,
                    "datasets": [d.spec for d in resolved], "max_images": max_images,
                    "input_gains": list(scorer.gains), "shift_ensemble": shift_ensemble,
                    "brightness": scorer.brightness or None,
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


def _check_and_load(model, datasets, *, tile, overlap, stitch, baselines, model_label,
                    default_split, exposure_curves, input_gains, unpaired, say, quiet,
                    chroma_filter=False, shift_ensemble=False, brightness=""):
    """Check every argument of `evaluate` and load the model, before any inference.

    Returns (Scorer, resolved datasets, exposure curves by spec, unpaired paths or None, model
    path or None); raises EvaluationError.
    """
    if stitch not in inference.STITCH_MODES:
        raise EvaluationError(f"stitch must be one of {inference.STITCH_MODES}, got {stitch!r}.")
    baseline_names = [baselines_lib.BASELINE_KEYS.get(b, b) for b in baselines]
    unknown = [b for b in baseline_names if b not in baselines_lib.BASELINES]
    if unknown:
        raise EvaluationError(f"Unknown baseline(s) {unknown}; choose from "
                              f"{', '.join(baselines_lib.BASELINE_KEYS)}.")
    gains = parse_gains(input_gains)
    brightness = str(brightness or "").strip().lower()
    if brightness:
        try:
            brightness_lib.parse_brightness(brightness)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
    unpaired_paths = scoring.unpaired_inputs(unpaired) if unpaired is not None else None
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
    if shift_ensemble:
        label += scoring.SHIFT_ENSEMBLE
    scorer = scoring.Scorer(keras_model, label, tuple(baseline_names), gains, tile=tile,
                            overlap=overlap, stitch=stitch, say=say, quiet=quiet,
                            chroma_filter=chroma_filter, shift_ensemble=shift_ensemble,
                            brightness=brightness)
    return scorer, resolved, exposure_curves, unpaired_paths, model_path
