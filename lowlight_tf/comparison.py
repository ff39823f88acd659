"""Paired comparison of two evaluations, with a confidence interval that respects scenes.

Table rows differ by tenths of a dB between models, and by about as much between identical runs
(training kernels are not deterministic). Whether such a difference means anything depends on how
many *independent* test images stand behind it: ELIEI's test split has 66 images but only 10
scenes (index runs; consecutive captures share one bright reference), so the images are not
independent. `paired_difference` takes two evaluations of the same images (`per_image.csv` of
lowlight_tf.evaluation), pairs them by image, and bootstraps whole scenes (resampling scenes with
replacement, the mean over their images each time) for a percentile confidence interval of the
mean difference. Scenes are runs of consecutive integer ids, as the splits were made
(lowlight_tf.media.ids.index_run_keys); an id that is not an integer is its own scene. With few
scenes the interval is coarse (3 scenes allow only 10 distinct resamples): read it with the scene
count beside it.
"""
import csv
import dataclasses
import json
import os

import numpy as np

from lowlight_tf.media import ids

METRICS = ("psnr", "psnr_gt_mean", "ssim")
METRIC_NAMES = {"psnr": "PSNR", "psnr_gt_mean": "GT-mean PSNR", "ssim": "SSIM"}
PER_IMAGE = "per_image.csv"
SUMMARY = "summary.json"


class ComparisonError(ValueError):
    """Two evaluations cannot be compared; the message says which file and what to do."""


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Mean of (A - B) over the images both evaluated, with a scene-bootstrap interval.

    `mean`, `low`, `high` are in the metric's unit (dB for PSNR); `low`/`high` bound the
    `confidence` percentile interval. `a_better` counts images where A scored higher.
    """
    metric: str
    mean: float
    low: float
    high: float
    confidence: float
    images: int
    scenes: int
    a_better: int


def _model_method(output_dir):
    """The first model row's method in an evaluation's summary.json (None without the file)."""
    path = os.path.join(output_dir, SUMMARY)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
    except (OSError, ValueError, KeyError) as error:
        raise ComparisonError(f"{path} is not an evaluation summary: {error}") from error
    methods = [row["method"] for row in rows if row.get("kind") == "model"]
    return methods[0] if methods else None


def read_per_image(path, method=None, gain=1.0):
    """Per-image metrics of one method from a tools/evaluate output.

    Args:
      path: an evaluation output folder (holding per_image.csv) or a per_image.csv file.
      method: the row label to read; default the first model row of the folder's summary.json
        (the model itself, not its "+ calibrated exposure" row or a baseline).
      gain: the input gain of an exposure sweep (`tools/evaluate --input_gains`) to read; files
        written before the sweep existed have no gain column and count as gain 1.

    Returns:
      (method, {(dataset, image id): {metric: float}}) for the metrics in METRICS.

    Raises:
      ComparisonError: missing or malformed file, or no rows of `method` (the message lists the
        methods the file has).
    """
    folder, csv_path = (path, os.path.join(path, PER_IMAGE)) if os.path.isdir(path) else (
        os.path.dirname(path), path)
    if not os.path.exists(csv_path):
        raise ComparisonError(f"{csv_path} does not exist: pass an output folder of "
                              "tools/evaluate (or its per_image.csv).")
    method = method or _model_method(folder)
    values, methods = {}, []
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            for line in csv.DictReader(f):
                if line["method"] not in methods:
                    methods.append(line["method"])
                if method is None:
                    method = line["method"]  # no summary.json: the file's first method
                if line["method"] == method and float(line.get("gain") or 1.0) == gain:
                    values[(line["dataset"], line["id"])] = {
                        name: float(line[name]) for name in METRICS}
    except (OSError, KeyError, ValueError) as error:
        raise ComparisonError(f"{csv_path} is not a per_image.csv of tools/evaluate: "
                              f"{error!r}") from error
    if not values:
        raise ComparisonError(f"{csv_path} has no rows of method {method!r} at input gain "
                              f"{gain:g}; it has: "
                              + ", ".join(repr(m) for m in methods))
    return method, values


def scene_keys(keys):
    """{(dataset, id): scene} with scenes = index runs of ids within each dataset."""
    by_dataset = {}
    for dataset, image_id in keys:
        by_dataset.setdefault(dataset, []).append(image_id)
    runs = {dataset: ids.index_run_keys(image_ids) for dataset, image_ids in by_dataset.items()}
    return {(dataset, image_id): (dataset, runs[dataset][image_id])
            for dataset, image_id in keys}


def paired_difference(a, b, *, metric="psnr", confidence=0.95, resamples=10000, seed=0):
    """Mean of A - B over the images both evaluated, with a scene-bootstrap interval.

    Args:
      a, b: {(dataset, image id): {metric: float}} (read_per_image's second value).
      metric: one of METRICS.
      confidence: in (0, 1), the percentile interval's coverage.
      resamples: bootstrap draws of the scenes (each draw: as many scenes as there are, with
        replacement; the statistic is the mean over the drawn scenes' images, the same
        image-weighted mean as the table's rows).
      seed: the bootstrap's random seed (the result is deterministic for a seed).

    Returns:
      PairedDifference. With a single scene the interval is the point itself.

    Raises:
      ComparisonError: no image in common, or a bad metric or confidence.
    """
    if metric not in METRICS:
        raise ComparisonError(f"metric {metric!r} must be one of {', '.join(METRICS)}")
    if not 0.0 < confidence < 1.0:
        raise ComparisonError(f"confidence {confidence} must be in (0, 1)")
    common = sorted(set(a) & set(b))
    if not common:
        raise ComparisonError("the two evaluations share no (dataset, image) pair: they were "
                              "made on different test sets")
    difference = np.asarray([a[k][metric] - b[k][metric] for k in common], np.float64)
    scenes = scene_keys(common)
    names = {name: i for i, name in enumerate(sorted(set(scenes.values())))}
    index = np.asarray([names[scenes[k]] for k in common])
    sums = np.bincount(index, weights=difference, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedDifference(metric=metric, mean=float(difference.mean()), low=float(low),
                            high=float(high), confidence=confidence, images=len(common),
                            scenes=len(names), a_better=int(np.sum(difference > 0)))


def format_difference(label_a, label_b, result):
    """One line, e.g. 'transfer - scratch: +0.29 dB PSNR (95% CI -1.06 to +1.86; 66 images,
    10 scenes, higher on 36)'."""
    unit = "" if result.metric == "ssim" else " dB"
    digits = 3 if result.metric == "ssim" else 2
    return (f"{label_a} - {label_b}: {result.mean:+.{digits}f}{unit} "
            f"{METRIC_NAMES[result.metric]} ({result.confidence:.0%} CI "
            f"{result.low:+.{digits}f} to {result.high:+.{digits}f}; {result.images} images, "
            f"{result.scenes} scenes, higher on {result.a_better})")


def spread(values):
    """{"mean", "std" (ddof 1; 0 for one value), "min", "max"} of a sequence of floats, e.g.
    one margin per draw of a device subset: how much a result moves with the draw."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ComparisonError("no values to summarise: pass at least one")
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max())}


def format_spread(label_a, label_b, results):
    """One line over several draws' PairedDifference of one metric, e.g. 'over 3 draws,
    transfer - scratch: +0.95 ± 0.54 dB PSNR (min +0.33, max +1.34; transfer higher on 3 of 3
    draws)'."""
    unit = "" if results[0].metric == "ssim" else " dB"
    digits = 3 if results[0].metric == "ssim" else 2
    s = spread([r.mean for r in results])
    ahead = sum(r.mean > 0 for r in results)
    return (f"over {len(results)} draws, {label_a} - {label_b}: {s['mean']:+.{digits}f} ± "
            f"{s['std']:.{digits}f}{unit} {METRIC_NAMES[results[0].metric]} (min "
            f"{s['min']:+.{digits}f}, max {s['max']:+.{digits}f}; {label_a} higher on {ahead} of "
            f"{len(results)} draws)")
