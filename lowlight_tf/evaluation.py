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
import dataclasses
import os
import re
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from lowlight_tf import baselines as baselines_lib
from lowlight_tf import data
from lowlight_tf import files
from lowlight_tf import brightness as brightness_lib
from lowlight_tf import enhance as enhance_lib
from lowlight_tf import inference
from lowlight_tf import metrics
from lowlight_tf import model as model_lib
from lowlight_tf import progress as progress_lib
from lowlight_tf.evaluation_report import (EvaluationError, ReportFolder, format_table,
                                           format_unpaired_table, write_reports)
from lowlight_tf.training_facts import TrainingFacts, model_dir_of, training_facts
from lowlight_tf.media import formats

DEFAULT_SPLIT = "test"
DEFAULT_GAINS = (1.0,)
PANEL_MAX_SIDE = 800  # panels are downscaled so one image of the triptych is at most this wide


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
        brightness set by that camera's exposure curve (`brightness.anchor_exposure`).
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
                    outputs[anchored] = quantize(255.0 * brightness_lib.anchor_exposure(
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
    paths = [p for p in enhance_lib.expand_inputs([folder]) if os.path.isfile(p)]
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
