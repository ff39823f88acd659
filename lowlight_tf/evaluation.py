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

Predictions and baseline outputs are rounded to 8-bit values before the metrics, as if saved.
"""
import csv
import dataclasses
import json
import os
import re
import time

import numpy as np

from lowlight_tf import baselines as baselines_lib
from lowlight_tf import inference
from lowlight_tf import metrics
from lowlight_tf import model as model_lib

DEFAULT_SPLIT = "test"
PANEL_MAX_SIDE = 800  # panels are downscaled so one image of the triptych is at most this wide
NOT_AVAILABLE = "n/a"
FLAGS_NAME = "flags.txt"


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
    from lowlight_tf import training
    with open(path, encoding="utf-8") as f:
        return training.parse_flag_lines(f)


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
    from lowlight_tf import data
    if spec_text in ("", "sample"):
        if not sample_root:
            return None, None
        spec_text = os.path.join(sample_root, "tfrecords", "sample") + ":train"
    parsed = data.parse_dataset_spec(spec_text, default_split="train")
    return os.path.abspath(os.path.join(parsed.output_dir, parsed.name)), parsed.split


def _count_training_images(flags):
    """(dataset key, number of images a tools/train run used), or (None, None) if unknown."""
    from lowlight_tf import data
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
    from lowlight_tf import data
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
    from lowlight_tf import data
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


def image_metrics(prediction, reference):
    """(psnr, psnr_gt_mean, ssim) of float32 [H, W, 3] images in [0, 255] (lowlight_tf.metrics)."""
    return (float(metrics.psnr(prediction, reference)),
            float(metrics.psnr_gt_mean(prediction, reference)),
            float(metrics.ssim(prediction, reference)))


def _panel(dark, prediction, bright):
    """uint8 [h, 3w, 3]: input | prediction | reference, downscaled to PANEL_MAX_SIDE wide each."""
    from PIL import Image
    parts = [np.round(np.clip(p, 0, 255)).astype(np.uint8) for p in (dark, prediction, bright)]
    height, width = parts[0].shape[:2]
    if max(height, width) > PANEL_MAX_SIDE:
        scale = PANEL_MAX_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        parts = [np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BOX)) for p in parts]
    return np.concatenate(parts, axis=1)


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "image"


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluate(model, datasets, output_dir, *, tile=None, overlap=inference.DEFAULT_OVERLAP,
             stitch="blend", save_images=4, baselines=tuple(baselines_lib.BASELINE_KEYS),
             model_label=None, facts=None, max_images=None, default_split=DEFAULT_SPLIT,
             exposure_curves=None, progress=print):
    """Evaluates a model and the classical baselines on test sets; writes the reports.

    Args:
      model: a keras.Model, or a path: a .keras file, a model_dir of tools/train, or one of its
        checkpoints (lowlight_tf.model.load_model).
      datasets: spec strings `OUTPUT_DIR/NAME[:split]` (split default "test") of `pairs` or
        `simulated` datasets.
      output_dir: where per_image.csv, summary.json, table.md and panels/ go (created).
      tile, overlap, stitch: inference mode, see `inference.predict_array`: tile None = whole
        image; stitch "paper" = the paper's non-overlapping patches of `tile` (default 64) px.
      save_images: number of panels (input | prediction | reference) per dataset.
      baselines: baseline keys of lowlight_tf.baselines (input, gamma, he, auto_gain) to add
        as rows; empty for none.
      model_label: the model's row label (default: its model_dir or file name).
      facts: TrainingFacts for Table 1 (default: read from the model_dir's flags.txt).
      max_images: evaluate only the first N images of each dataset (quick checks).
      default_split: split used when a spec has none.
      exposure_curves: optional {dataset spec (as given in `datasets`): float [3, 256]}: for those
        datasets, a second model row "<label> + calibrated exposure" with each prediction's
        brightness set by that camera's exposure curve (`inference.anchor_exposure`).
      progress: callable taking one line of text (None for silence).

    Returns:
      The summary rows: dicts with method, kind ("model" | "baseline"), dataset, psnr,
      psnr_gt_mean, ssim, images, training_images, epochs. PSNR and GT-mean PSNR in dB.

    Raises:
      EvaluationError: missing/corrupt model, model/data mismatch, unusable or empty dataset,
        unwritable output directory; raised before any inference.
    """
    progress = progress or (lambda line: None)
    if stitch not in inference.STITCH_MODES:
        raise EvaluationError(f"stitch must be one of {inference.STITCH_MODES}, got {stitch!r}.")
    baseline_names = [baselines_lib.BASELINE_KEYS.get(b, b) for b in baselines]
    unknown = [b for b in baseline_names if b not in baselines_lib.BASELINES]
    if unknown:
        raise EvaluationError(f"Unknown baseline(s) {unknown}; choose from "
                              f"{', '.join(baselines_lib.BASELINE_KEYS)}.")
    resolved = _resolve_datasets(datasets, default_split)
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
    try:
        inference.check_output_dir(output_dir)
    except inference.OutputDirError as e:
        raise EvaluationError(str(e)) from e
    label = model_label or default_model_label(model_path)
    if facts is None:
        facts = training_facts(model_path) if model_path else TrainingFacts()
    panels_dir = os.path.join(output_dir, "panels")
    if save_images:
        os.makedirs(panels_dir, exist_ok=True)

    per_image = []
    rows = []
    started = time.time()
    for dataset in resolved:
        from lowlight_tf import data
        source = data.load(dataset.output_dir, dataset.name, dataset.split)
        total = dataset.count if max_images is None else min(dataset.count, max_images)
        progress(f"Evaluating {label} on {dataset.label} ({total} images, "
                 f"{_mode_text(tile, overlap, stitch)})")
        exposure_curve = exposure_curves.get(dataset.spec)
        anchored = f"{label} + calibrated exposure"
        model_rows = [label] + ([anchored] if exposure_curve is not None else [])
        results = {name: [] for name in model_rows + baseline_names}
        dataset_started = time.time()
        for index, example in enumerate(source.take(total).as_numpy_iterator()):
            dark = np.asarray(example["dark"], np.float32)
            bright = np.asarray(example["bright"], np.float32)
            image_id = example["id"].decode("utf-8", "replace")
            if dark.shape != bright.shape:
                raise EvaluationError(f"Dataset {dataset.spec}: image {image_id} has dark "
                                      f"{dark.shape} and bright {bright.shape} of different sizes.")
            prediction = quantize(inference.predict_image(keras_model, dark, tile=tile,
                                                          overlap=overlap, stitch=stitch))
            outputs = {label: prediction}
            if exposure_curve is not None:
                outputs[anchored] = quantize(255.0 * inference.anchor_exposure(
                    prediction / 255.0, dark / 255.0, exposure_curve))
            for name in baseline_names:
                outputs[name] = quantize(baselines_lib.apply(name, dark))
            for name, output in outputs.items():
                values = image_metrics(output, bright)
                results[name].append(values)
                per_image.append({"dataset": dataset.label, "id": image_id, "method": name,
                                  "psnr": values[0], "psnr_gt_mean": values[1],
                                  "ssim": values[2]})
            if index < save_images:
                from PIL import Image
                Image.fromarray(_panel(dark, prediction, bright)).save(os.path.join(
                    panels_dir, f"{_safe_name(dataset.label)}_{index:03d}_"
                    f"{_safe_name(os.path.splitext(image_id)[0])}"
                    ".png"))
            if (index + 1) % 10 == 0 or index + 1 == total:
                psnr_so_far = _mean([v[0] for v in results[label]])
                progress(f"  [{index + 1}/{total}] mean PSNR {psnr_so_far:.2f} dB, "
                         f"{(time.time() - dataset_started) / (index + 1):.2f} s/image")
        for name, values in results.items():
            is_model = name in model_rows
            rows.append({
                "method": name,
                "kind": "model" if is_model else "baseline",
                "dataset": dataset.label,
                "psnr": _mean([v[0] for v in values]),
                "psnr_gt_mean": _mean([v[1] for v in values]),
                "ssim": _mean([v[2] for v in values]),
                "images": len(values),
                "training_images": facts.images_for(dataset.keys) if is_model else 0,
                "epochs": facts.epochs if is_model else "-",
            })

    settings = {"model": os.path.abspath(model_path) if model_path else None, "tile": tile,
                "overlap": overlap if tile else None, "stitch": stitch,
                "datasets": [d.spec for d in resolved], "max_images": max_images,
                "seconds": round(time.time() - started, 1)}
    write_reports(output_dir, rows, per_image, settings)
    progress(format_table(rows))
    progress(f"Reports in {output_dir}: per_image.csv, summary.json, table.md"
             + (", panels/" if save_images else ""))
    return rows


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
    """Markdown table in the shape of the paper's Table 1 (plus SSIM and GT-mean PSNR columns).

    GT-mean PSNR (prediction scaled to the reference's mean first) is never mixed with PSNR.
    """
    lines = [
        "| Model | Dataset | No. training images from dataset | No. epochs initial / transfer "
        "| PSNR (dB) | SSIM | GT-mean PSNR (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        is_baseline = row.get("kind") == "baseline"
        lines.append(
            f"| {row['method']}{' (baseline)' if is_baseline else ''} | {row['dataset']} "
            f"| {'-' if is_baseline else row.get('training_images', NOT_AVAILABLE)} "
            f"| {'-' if is_baseline else row.get('epochs', NOT_AVAILABLE)} "
            f"| {_format_number(row['psnr'], 2)} | {_format_number(row['ssim'], 3)} "
            f"| {_format_number(row['psnr_gt_mean'], 2)} |")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_reports(output_dir, rows, per_image, settings):
    """Writes per_image.csv, summary.json and table.md into output_dir."""
    with open(os.path.join(output_dir, "per_image.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "id", "method", "psnr",
                                               "psnr_gt_mean", "ssim"])
        writer.writeheader()
        for line in per_image:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v)
                             for k, v in line.items()})
    summary = {
        "rows": [{k: _json_safe(v) for k, v in row.items()} for row in rows],
        "settings": settings,
        "metrics": {
            "psnr": "20 log10(255 / sqrt(MSE)) on 8-bit values (paper §3.3), mean over images",
            "psnr_gt_mean": "PSNR after scaling the prediction to the reference's mean "
                            "(GT-mean); not comparable with plain PSNR",
            "ssim": "SSIM, 11x11 Gaussian window sigma 1.5, on [0, 255] (tf.image.ssim)",
        },
    }
    with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(os.path.join(output_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(format_table(rows) + "\n\nPSNR by the paper's formula on 8-bit values; GT-mean "
                "PSNR scales the prediction to the reference's mean brightness first and is not "
                "comparable with plain PSNR. Baselines are computed on the same images.\n")
