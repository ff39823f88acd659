"""Scoring for `evaluation.evaluate`: one model and the classical baselines, image by image
(paper §3.3 PSNR on 8-bit values, Table 1 rows; beyond the paper SSIM, GT-mean PSNR, the
exposure sweep and the no-reference check on unpaired photos).

A `Scorer` holds what every dataset is scored with (the model, its row label, the baselines,
the input gains, the inference mode); `score_dataset` scores a pairs or simulated dataset and
appends per-image lines and summary rows, `score_unpaired` does the no-reference check.
Images are float32 [H, W, 3] in [0, 255]; outputs are rounded to 8-bit values before the
metrics, as if saved. Each output's chroma noise in the reference's flat dark regions
(lowlight_tf.chroma) is reported beside the reference's own, measured on the same blocks.
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from lowlight_tf import baselines as baselines_lib
from lowlight_tf import brightness as brightness_lib
from lowlight_tf import chroma
from lowlight_tf import data
from lowlight_tf import enhance as enhance_lib
from lowlight_tf import files
from lowlight_tf import inference
from lowlight_tf import metrics
from lowlight_tf import progress as progress_lib
from lowlight_tf.evaluation_report import UNPAIRED_STATS, EvaluationError
from lowlight_tf.media import formats

# Suffixes of the model's rows with a calibrated exposure curve (brightness.anchor_exposure): one
# gain for the brightness, or a gain per channel (the colour too).
CALIBRATED_EXPOSURE = " + calibrated exposure"
CALIBRATED_COLOUR = " + calibrated colour"
# Suffix of the model's row with its output's chroma filtered (chroma.filter_chroma).
CHROMA_FILTERED = " + chroma filter"
SHIFT_ENSEMBLE = " + shift ensemble"  # suffix of the model's label when it runs as one
# Suffix of the model's row with its output's brightness set as tools/enhance --brightness does
# (brightness.apply_brightness), followed by the setting, e.g. " + brightness auto".
BRIGHTNESS = " + brightness "
PANEL_MAX_SIDE = 800  # panels are downscaled so one image of the triptych is at most this wide


def quantize(image):
    """Rounds float32 [H, W, 3] to 8-bit values in [0, 255] (still float32), as if saved."""
    return np.round(np.clip(image, 0.0, 255.0)).astype(np.float32)


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


@dataclasses.dataclass(frozen=True)
class Scorer:
    """What every dataset is scored with.

    Attributes:
      keras_model: the model (RGB in, RGB out).
      label: the model's row label.
      baseline_names: baseline names of lowlight_tf.baselines.BASELINES.
      gains: the exposure sweep's input gains (tuple of positive floats).
      tile, overlap, stitch: inference mode (inference.predict_array).
      say: callable(str) for progress lines; quiet: no progress bars.
      chroma_filter: also a row of the model's output with its chroma filtered
        (chroma.filter_chroma).
      shift_ensemble: the model runs as the mean over the four 1-pixel shifts of its input
        (inference.predict_array).
      brightness: "" for none, else a `--brightness` setting of tools/enhance ("auto", a mean
        level, an EV change): also a row of the model's output with its brightness set so
        (`brightness.apply_brightness`), then chroma-filtered when `chroma_filter` is on: the
        order and steps of tools/enhance.
    """
    keras_model: object
    label: str
    baseline_names: tuple
    gains: tuple
    tile: int = None
    overlap: int = inference.DEFAULT_OVERLAP
    stitch: str = "blend"
    say: object = print
    quiet: bool = False
    chroma_filter: bool = False
    shift_ensemble: bool = False
    brightness: str = ""

    def model_rows(self, exposure_curve=None):
        """The model's row names, in the order `outputs` gives them."""
        return ([self.label] + ([self.anchored, self.anchored_colour]
                                if exposure_curve is not None else [])
                + ([self.label + CHROMA_FILTERED] if self.chroma_filter else [])
                + ([self.with_brightness] if self.brightness else []))

    def outputs(self, dark, exposure_curve=None):
        """{row name: 8-bit float32 output} of the model (and calibrated exposure, chroma
        filter) and the baselines for one input `dark` float32 [H, W, 3] in [0, 255]."""
        prediction = quantize(inference.predict_image(
            self.keras_model, dark, tile=self.tile, overlap=self.overlap, stitch=self.stitch,
            shift_ensemble=self.shift_ensemble))
        outputs = {self.label: prediction}
        if exposure_curve is not None:
            for per_channel, label in ((False, self.anchored), (True, self.anchored_colour)):
                outputs[label] = quantize(255.0 * brightness_lib.anchor_exposure(
                    prediction / 255.0, dark / 255.0, exposure_curve, per_channel=per_channel))
        if self.chroma_filter:
            outputs[self.label + CHROMA_FILTERED] = quantize(
                255.0 * chroma.filter_chroma(prediction / 255.0))
        if self.brightness:
            adjusted = brightness_lib.apply_brightness(prediction / 255.0, dark / 255.0,
                                                       self.brightness)
            if self.chroma_filter:
                adjusted = chroma.filter_chroma(adjusted)
            outputs[self.with_brightness] = quantize(255.0 * adjusted)
        for name in self.baseline_names:
            outputs[name] = quantize(baselines_lib.apply(name, dark))
        return outputs

    @property
    def with_brightness(self):
        """Row label of the model with its brightness set as tools/enhance --brightness."""
        return (self.label + BRIGHTNESS + self.brightness
                + (CHROMA_FILTERED if self.chroma_filter else ""))

    @property
    def anchored(self):
        """Row label of the model with the calibrated exposure."""
        return self.label + CALIBRATED_EXPOSURE

    @property
    def anchored_colour(self):
        """Row label of the model with the calibrated exposure set per channel (colour too)."""
        return self.label + CALIBRATED_COLOUR

    def mode_text(self):
        """The inference mode in words."""
        if self.stitch == "paper":
            return f"paper stitching of {self.tile or 64} px patches"
        if self.tile:
            return f"tiles of {self.tile} px blended over {self.overlap} px"
        return "whole images"


def score_dataset(scorer, dataset, facts, exposure_curve, report, per_image, rows, *,
                  save_images, max_images):
    """Score one pairs or simulated dataset (evaluation._Dataset) at every gain.

    Appends one per-image dict per (image, method, gain) to `per_image` and one summary row per
    (method, gain) to `rows`; writes the first `save_images` panels into `report`.
    Raises EvaluationError for a pair of different sizes or a shard that fails while read.
    """
    source = data.load(dataset.output_dir, dataset.name, dataset.split)
    total = dataset.count if max_images is None else min(dataset.count, max_images)
    gains = scorer.gains
    gain_text = "" if gains == (1.0,) else f", input gains {', '.join(f'{g:g}' for g in gains)}"
    scorer.say(f"Evaluating {scorer.label} on {dataset.label} ({total} images, "
               f"{scorer.mode_text()}{gain_text})")
    model_rows = scorer.model_rows(exposure_curve)
    results = {(name, gain): [] for gain in gains
               for name in model_rows + list(scorer.baseline_names)}
    bar = progress_lib.bar(total=total, desc=f"Evaluating on {dataset.label}", unit="images",
                           enabled=not scorer.quiet)
    index = 0
    try:
        for index, example in enumerate(source.take(total).as_numpy_iterator()):
            _score_example(scorer, dataset, example, index, exposure_curve, report, results,
                           per_image, save_images)
            bar.update(1)
            first = results[(scorer.label, gains[0])]
            bar.set_postfix_str(f"mean PSNR {_mean([v[0] for v in first]):.2f} dB")
    except tf.errors.OpError as e:
        raise _read_error(dataset.spec, index, total, e, report.output_dir) from e
    finally:
        bar.close()
    for gain in gains:
        values = results[(scorer.label, gain)]
        scorer.say(f"  {dataset.label}{f' x{gain:g}' if gains != (1.0,) else ''}: {scorer.label} "
                   f"mean PSNR {_mean([v[0] for v in values]):.2f} dB over {len(values)} images")
    for (name, gain), values in results.items():
        is_model = name in model_rows
        rows.append({
            "method": name, "kind": "model" if is_model else "baseline",
            "dataset": dataset.label, "gain": gain,
            "psnr": _mean([v[0] for v in values]),
            "psnr_gt_mean": _mean([v[1] for v in values]),
            "ssim": _mean([v[2] for v in values]),
            "brightness_ratio": geometric_mean([v[3] for v in values]),
            "images": len(values),
            "training_images": facts.images_for(dataset.keys) if is_model else 0,
            "epochs": facts.epochs if is_model else "-",
            "chroma_noise": _mean([v[4] for v in values]),
            "chroma_noise_reference": _mean([v[5] for v in values if np.isfinite(v[4])]),
        })


def _score_example(scorer, dataset, example, index, exposure_curve, report, results, per_image,
                   save_images):
    """Score one stored example at every gain into `results` and `per_image`; save panels."""
    stored_dark = np.asarray(example["dark"], np.float32)
    bright = np.asarray(example["bright"], np.float32)
    image_id = example["id"].decode("utf-8", "replace")
    if stored_dark.shape != bright.shape:
        raise EvaluationError(
            f"Dataset {dataset.spec}: image {image_id} has dark {stored_dark.shape} and "
            f"bright {bright.shape} of different sizes; rebuild it with tools/make_tfrecords, "
            "which aligns pairs.")
    flat_dark = chroma.flat_dark_blocks(bright)  # chosen once on the reference
    real_chroma_noise = chroma.chroma_noise(bright, bright, flat_dark)
    for gain in scorer.gains:
        dark = scale_input(stored_dark, gain)
        outputs = scorer.outputs(dark, exposure_curve)
        for name, output in outputs.items():
            values = image_metrics(output, bright) + (
                brightness_ratio(output, bright), chroma.chroma_noise(output, bright, flat_dark),
                real_chroma_noise)
            results[(name, gain)].append(values)
            per_image.append({"dataset": dataset.label, "id": image_id, "method": name,
                              "gain": gain, "psnr": values[0], "psnr_gt_mean": values[1],
                              "ssim": values[2], "brightness_ratio": values[3],
                              "chroma_noise": values[4], "chroma_noise_reference": values[5]})
        if index < save_images:
            stem = _safe_name(os.path.splitext(image_id)[0])
            _save_png(report.path(os.path.join(
                "panels", f"{_safe_name(dataset.label)}_{index:03d}_{stem}"
                f"{_gain_suffix(gain, scorer.gains)}.png")),
                _panel(dark, outputs[scorer.label], bright))


def unpaired_inputs(folder):
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


def score_unpaired(scorer, folder, paths, per_image, rows, skipped):
    """No-reference statistics (UNPAIRED_STATS: metrics.no_reference_stats and
    metrics.periodic_texture) of the model and the baselines on photos without references, at
    every gain, averaged over the photos; unreadable photos go to `skipped`."""
    dataset = f"unpaired:{os.path.basename(os.path.abspath(folder).rstrip(os.sep))}"
    scorer.say(f"No-reference check of {scorer.label} on {len(paths)} unpaired photos in "
               f"{folder}")
    stats = {(name, gain): [] for gain in scorer.gains
             for name in scorer.model_rows() + list(scorer.baseline_names)}
    for path in progress_lib.track(paths, desc=f"Unpaired photos in {folder}", unit="images",
                                   enabled=not scorer.quiet):
        try:
            decoded = inference.decode_input(path)
        except inference.UnreadableImageError as e:
            skipped.append((path, str(e)))
            continue
        photo = (np.asarray(decoded.model_input, np.float32)
                 * np.float32(255.0 / decoded.scale))
        for gain in scorer.gains:
            for name, output in scorer.outputs(scale_input(photo, gain)).items():
                result = {**metrics.no_reference_stats(output)._asdict(),
                          "periodic_texture": metrics.periodic_texture(output)}
                stats[(name, gain)].append(result)
                per_image.append({"dataset": dataset, "id": os.path.basename(path),
                                  "method": name, "gain": gain, **result})
    for (name, gain), values in stats.items():
        rows.append({
            "method": name, "kind": "model" if name in scorer.model_rows() else "baseline",
            "dataset": dataset, "gain": gain,
            **{key: _mean([v[key] for v in values]) for key in UNPAIRED_STATS},
            "images": len(values)})
