"""Image quality metrics of the paper (§3.3 PSNR formula) plus SSIM and GT-mean PSNR.

The paper measures PSNR on 8-bit values:

    PSNR(D, B) = 20 * log10(255 / sqrt(MSE(D, B)))          (§3.3, images in [0, 255])

Everything here works on float32 images in [0, 255] (the library's convention,
docs/interfaces.md) and asserts that range: PSNR computed on [0, 1] images with the 255 peak
reads about 48 dB too high (keras-io's MIRNet example shipped exactly that bug), so a range
mix-up fails loudly instead. The Keras metric classes take the model's [0, 1] tensors and
convert to [0, 255] themselves.

SSIM is `tf.image.ssim` with the usual Wang et al. (2004) settings on [0, 255] values:
an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed per channel over the
"valid" part of the image (no padding) and averaged over the channels. This matches
`skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)` to about 1e-6. Images must be at
least 11x11.

"GT-mean" PSNR (common in low-light papers, e.g. KinD, LLFlow) scales the prediction so that its
mean over all pixels and channels equals the reference's, clips to [0, 255], then takes PSNR. It
removes global brightness errors and must always be reported under its own name.

Without a reference (a user's unpaired photos), `no_reference_stats` gives two numbers that
show a blow-out: the mean brightness and the fraction of pixels with a clipped highlight; and
`periodic_texture` one that shows a 2- or 4-pixel periodic texture (the checkerboard of a
transposed convolution or a depth-to-space head) as a peak in the image's power spectrum.
"""
import collections
import math

import keras
import numpy as np
import tensorflow as tf

from lowlight_tf import chroma

PEAK = 255.0
# SSIM settings of Wang et al. (2004), the ones tf.image.ssim and skimage use.
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Float arithmetic (x * 255, v / 257 * 257) can overshoot the range by a few ulps.
RANGE_TOLERANCE = 1e-3
# The Keras metrics cap per-patch PSNR: a flat black patch predicted exactly (MSE 0) would
# otherwise turn the epoch mean into +inf.
METRIC_MAX_DB = 100.0


def _check_images(prediction, reference, check_mixup=True):
    """Convert to float32, check equal shapes, the [0, 255] range and the 0-1 vs 0-255 mix-up.

    Returns (prediction, reference, valid). The assertions raise in eager and graph mode; XLA
    compiles assertions away, so callers also turn their result into NaN when `valid` is False
    (a jit-compiled Keras metric then shows NaN instead of a plausible wrong number).
    """
    prediction = tf.convert_to_tensor(prediction, tf.float32)
    reference = tf.convert_to_tensor(reference, tf.float32)
    if prediction.shape.rank is not None and prediction.shape.rank < 3:
        raise ValueError(f"Images must be [..., H, W, C]; got shape {prediction.shape}.")
    if not prediction.shape.is_compatible_with(reference.shape):
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} "
                         "must have the same shape.")
    tf.debugging.assert_equal(tf.shape(prediction), tf.shape(reference),
                              message="prediction and reference must have the same shape")
    valid = tf.constant(True)
    for name, image in (("prediction", prediction), ("reference", reference)):
        minimum, maximum = tf.reduce_min(image), tf.reduce_max(image)
        tf.debugging.assert_greater_equal(
            minimum, -RANGE_TOLERANCE,
            message=f"{name} has values below 0; metrics expect images in [0, 255]")
        tf.debugging.assert_less_equal(
            maximum, PEAK + RANGE_TOLERANCE,
            message=f"{name} has values above 255; metrics expect images in [0, 255]")
        valid = valid & (minimum >= -RANGE_TOLERANCE) & (maximum <= PEAK + RANGE_TOLERANCE)
    if check_mixup:
        # An image whose maximum is in (0, 1] next to one that goes above 1 is almost surely a
        # [0, 1] image mixed with a [0, 255] one. (An all-black image, maximum 0, is allowed.)
        max_prediction = tf.reduce_max(prediction)
        max_reference = tf.reduce_max(reference)

        def _looks_unit(value):
            return tf.logical_and(value > 0.0, value <= 1.0)

        mixup = tf.logical_or(
            tf.logical_and(_looks_unit(max_prediction), max_reference > 1.0),
            tf.logical_and(_looks_unit(max_reference), max_prediction > 1.0))
        tf.debugging.Assert(
            tf.logical_not(mixup),
            ["Range mix-up: one image looks like [0, 1] and the other like [0, 255]; "
             "scale both to [0, 255]. max(prediction), max(reference) =",
             max_prediction, max_reference])
        valid = valid & tf.logical_not(mixup)
    return prediction, reference, valid


def _nan_unless(valid, value):
    """Return value where valid is True, NaN otherwise (see `_check_images`)."""
    return tf.where(valid, value, tf.fill(tf.shape(value), float("nan")))


def _psnr_unchecked(prediction, reference, max_db=None):
    """PSNR over the last three axes of [0, 255] images, MSE accumulated in float64."""
    difference = tf.cast(prediction, tf.float64) - tf.cast(reference, tf.float64)
    mse = tf.reduce_mean(tf.square(difference), axis=[-3, -2, -1])
    # 20 * log10(255 / sqrt(MSE)) == 10 * log10(255^2 / MSE); +inf for identical images.
    value = 10.0 * tf.math.log(PEAK * PEAK / mse) / tf.math.log(tf.constant(10.0, tf.float64))
    if max_db is not None:
        value = tf.minimum(value, max_db)
    return tf.cast(value, tf.float32)


def psnr(prediction, reference, *, max_db=None):
    """Return the paper's PSNR, 20 * log10(255 / sqrt(MSE)), per image.

    Args:
        prediction: float32 [B, H, W, C] (or [H, W, C]) in [0, 255].
        reference: float32, same shape, in [0, 255].
        max_db: optional cap in dB; by default identical images give +inf.

    Returns:
        float32 [B] (or a scalar for a single image), in dB.

    Raises:
        tf.errors.InvalidArgumentError: values outside [0, 255], or one image in (0, 1] while
            the other goes above 1 (a range mix-up). Under XLA, where assertions are compiled
            away, the result is NaN instead.
    """
    prediction, reference, valid = _check_images(prediction, reference)
    return _nan_unless(valid, _psnr_unchecked(prediction, reference, max_db))


def ssim(prediction, reference):
    """Return SSIM per image (11x11 Gaussian window, sigma 1.5, max_val 255; see module doc).

    Args:
        prediction: float32 [B, H, W, C] (or [H, W, C]) in [0, 255], H and W >= 11.
        reference: float32, same shape, in [0, 255].

    Returns:
        float32 [B] (or a scalar), in [-1, 1], 1 for identical images.
    """
    prediction, reference, valid = _check_images(prediction, reference)
    value = tf.image.ssim(prediction, reference, max_val=PEAK, filter_size=SSIM_FILTER_SIZE,
                          filter_sigma=SSIM_FILTER_SIGMA, k1=SSIM_K1, k2=SSIM_K2)
    return _nan_unless(valid, value)


def match_mean(prediction, reference):
    """Scale each prediction so its mean equals the reference's mean, clipped to [0, 255].

    Args:
        prediction: float32 [B, H, W, C] (or [H, W, C]) in [0, 255].
        reference: float32, same shape, in [0, 255].

    Returns:
        float32, same shape, in [0, 255]. An all-black prediction stays black.
    """
    prediction, reference, _ = _check_images(prediction, reference, check_mixup=False)
    mean_prediction = tf.reduce_mean(prediction, axis=[-3, -2, -1], keepdims=True)
    mean_reference = tf.reduce_mean(reference, axis=[-3, -2, -1], keepdims=True)
    scale = mean_reference / tf.maximum(mean_prediction, 1e-12)
    return tf.clip_by_value(prediction * scale, 0.0, PEAK)


def psnr_float64(reference, image):
    """The same PSNR formula in NumPy float64, without `psnr`'s range checks.

    For reports on float images in [0, 255] that may legitimately sit in (0, 1] (a very dark
    simulated image, which `psnr` would reject as a [0, 1] / [0, 255] mix-up), e.g. the
    simulation fidelity of `calibration.report`.

    Args:
        reference, image: float [H, W, C] arrays in [0, 255].
    Returns:
        float in dB (inf for identical images).
    """
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def psnr_gt_mean(prediction, reference, *, max_db=None):
    """Return "GT-mean" PSNR: PSNR after `match_mean(prediction, reference)`.

    Args:
        prediction: float32 [B, H, W, C] (or [H, W, C]) in [0, 255].
        reference: float32, same shape, in [0, 255].
        max_db: optional cap in dB.

    Returns:
        float32 [B] (or a scalar), in dB. Always label it "GT-mean", never as plain PSNR.
    """
    prediction, reference, valid = _check_images(prediction, reference)
    return _nan_unless(valid, _psnr_unchecked(match_mean(prediction, reference), reference,
                                              max_db))


# An 8-bit channel value from which a pixel counts as a clipped highlight (254 and 255: the
# top code and the one below it, which JPEG and rounding produce from clipped values too).
CLIPPED_LEVEL = 254.0

NoReferenceStats = collections.namedtuple("NoReferenceStats",
                                          ["mean_brightness", "clipped_fraction"])


def no_reference_stats(image, peak=PEAK):
    """Mean brightness and clipped-highlight fraction of one image (no reference needed).

    The one definition behind `tools/evaluate --unpaired`, the sweep's DIM/WELL figures and
    `tools/enhance`'s per-photo line. Read in row bands, so a full-size photo needs no
    full-size temporary.

    Args:
        image: [H, W, C] array-like (or `inference`'s scaled view) with values in [0, peak],
            e.g. an output rounded to 8 bits (peak 255) or a float output before quantisation
            (peak 1).
        peak: the image's full scale (255.0 or 1.0).

    Returns:
        NoReferenceStats(mean_brightness, clipped_fraction): `mean_brightness` is the mean over
        all pixels and channels, float in [0, peak]; `clipped_fraction` is the fraction of
        pixels with any channel that rounds to >= 254 in 8 bits (CLIPPED_LEVEL), float in
        [0, 1].

    Raises:
        ValueError: not an [H, W, C] image, empty, or values outside [0, peak].
    """
    shape = tuple(getattr(image, "shape", np.shape(image)))
    if len(shape) != 3 or 0 in shape:
        raise ValueError(f"no_reference_stats needs one [H, W, C] image; got shape {shape}.")
    peak = float(peak)
    threshold = (CLIPPED_LEVEL - 0.5) / PEAK * peak  # rounds to >= CLIPPED_LEVEL in 8 bits
    tolerance = RANGE_TOLERANCE / PEAK * peak
    total, clipped = 0.0, 0
    for begin in range(0, shape[0], 256):
        band = np.asarray(image[begin:begin + 256], np.float32)
        low, high = float(band.min()), float(band.max())
        if low < -tolerance or high > peak + tolerance or not np.isfinite(low + high):
            raise ValueError(f"no_reference_stats expects values in [0, {peak:g}]; got values "
                             f"in [{low}, {high}] (pass peak=1.0 for [0, 1] images).")
        total += float(np.sum(band, dtype=np.float64))
        clipped += int(np.count_nonzero(np.any(band >= threshold, axis=-1)))
    pixels = shape[0] * shape[1]
    return NoReferenceStats(total / (pixels * shape[2]), clipped / pixels)


# periodic_texture: the periods (pixels) it looks at, and the spectral neighbours a period's power
# is compared with (bins 3-10 away on either side; a Hann window leaks a line into +-2 bins).
TEXTURE_PERIODS = (2, 4)
_TEXTURE_NEIGHBOURS = range(3, 11)


def periodic_texture(image):
    """How much a 2- or 4-pixel periodic texture stands out of an image (no reference needed).

    For each axis, the power spectrum of the luma along that axis (Hann window, each line's
    mean removed, averaged over lines) at the frequency of each period in TEXTURE_PERIODS,
    divided by the mean power of the neighbouring frequencies (3-10 bins away); the index is
    the largest ratio. About 1 for a photo without periodic structure (a natural image's
    spectrum is smooth there); a checkerboard texture of a few code values gives 5-50.

    Args:
        image: float [H, W, 3] (or [H, W, 1]) in [0, 255], e.g. an output rounded to 8 bits.

    Returns:
        float >= 0, or NaN when neither side is long enough (40 pixels) or the image is flat.

    Raises:
        ValueError: not an [H, W, C] image with 1 or 3 channels.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"periodic_texture needs one [H, W, 3] or [H, W, 1] image; got shape "
                         f"{image.shape}.")
    luma = image[..., 0] if image.shape[-1] == 1 else image @ chroma.YCBCR[0].astype(np.float32)
    ratios = []
    for lines in (luma, luma.T):  # rows: period along x; then columns: along y
        length = lines.shape[1]
        if length < 40:
            continue
        lines = lines - lines.mean(axis=1, keepdims=True)
        power = np.mean(np.abs(np.fft.rfft(lines * np.hanning(length), axis=1)) ** 2, axis=0)
        for period in TEXTURE_PERIODS:
            k = int(round(length / period))
            neighbours = [k + sign * d for d in _TEXTURE_NEIGHBOURS for sign in (-1, 1)
                          if 0 < k + sign * d < power.size]
            reference = float(np.mean(power[neighbours]))
            if reference > 0:
                ratios.append(float(power[min(k, power.size - 1)]) / reference)
    return max(ratios) if ratios else float("nan")


def _model_range_to_8bit(y_true, y_pred):
    """Map model-range tensors to [0, 255]: the reference as is, the prediction clipped.

    The reference must already be in [0, 1] (a [0, 255] reference fails the range assertion
    after scaling); the prediction of the linear head may overshoot [0, 1] slightly and is
    clipped, as it would be when written as an image.
    """
    y_true = tf.convert_to_tensor(y_true, tf.float32) * PEAK
    y_pred = tf.clip_by_value(tf.convert_to_tensor(y_pred, tf.float32), 0.0, 1.0) * PEAK
    return y_true, y_pred


def _psnr_model_range(y_true, y_pred):
    y_true, y_pred = _model_range_to_8bit(y_true, y_pred)
    return psnr(y_pred, y_true, max_db=METRIC_MAX_DB)


def _ssim_model_range(y_true, y_pred):
    y_true, y_pred = _model_range_to_8bit(y_true, y_pred)
    return ssim(y_pred, y_true)


@keras.saving.register_keras_serializable(package="lowlight_tf")
class PSNRMetric(keras.metrics.MeanMetricWrapper):
    """Mean per-patch PSNR (paper §3.3, on 8-bit values) for model tensors in [0, 1].

    `update_state(y_true, y_pred)`: float32 [B, H, W, 3]; y_true in [0, 1] (asserted after
    scaling to [0, 255]), y_pred clipped to [0, 1]. Per-patch values are capped at
    `METRIC_MAX_DB` so an exactly predicted flat patch cannot make the mean infinite.
    """

    def __init__(self, name="psnr", dtype=None):
        super().__init__(fn=_psnr_model_range, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="lowlight_tf")
class SSIMMetric(keras.metrics.MeanMetricWrapper):
    """Mean per-patch SSIM (see module doc for the window) for model tensors in [0, 1].

    `update_state(y_true, y_pred)`: float32 [B, H, W, 3], H and W >= 11; y_true in [0, 1]
    (asserted), y_pred clipped to [0, 1].
    """

    def __init__(self, name="ssim", dtype=None):
        super().__init__(fn=_ssim_model_range, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="lowlight_tf")
class MAESSIMLoss(keras.losses.Loss):
    """Training loss MAE + ssim_weight * (1 - SSIM) on the model's [0, 1] tensors.

    The paper trains with MAE alone (§3.3; `ssim_weight` 0 gives exactly that). The SSIM term
    (the window of the module doc, max_val 1, predictions clipped to [0, 1] for it) penalises
    the blotchy texture and amplified noise MAE tolerates, as in Zhao et al. 2017, "Loss
    Functions for Image Restoration with Neural Networks".

    `call(y_true, y_pred)`: float32 [B, H, W, 3], H and W >= 11; returns float32 [B].
    """

    def __init__(self, ssim_weight=0.0, name="mae_ssim", **kwargs):
        super().__init__(name=name, **kwargs)
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight}.")
        self.ssim_weight = float(ssim_weight)

    def call(self, y_true, y_pred):
        y_true = tf.convert_to_tensor(y_true, tf.float32)
        y_pred = tf.convert_to_tensor(y_pred, tf.float32)
        loss = tf.reduce_mean(tf.abs(y_true - y_pred), axis=[1, 2, 3])
        if self.ssim_weight:
            similarity = tf.image.ssim(tf.clip_by_value(y_pred, 0.0, 1.0), y_true, max_val=1.0,
                                       filter_size=SSIM_FILTER_SIZE,
                                       filter_sigma=SSIM_FILTER_SIGMA, k1=SSIM_K1, k2=SSIM_K2)
            loss += self.ssim_weight * (1.0 - similarity)
        return loss

    def get_config(self):
        return {**super().get_config(), "ssim_weight": self.ssim_weight}
