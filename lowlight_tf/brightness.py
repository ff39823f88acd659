"""The brightness of an enhanced photo (beyond the paper): calibrated exposure, the user's control.

- `anchor_exposure`: one gain per image so the output's mean is what the calibrated camera's
  exposure curve expects for that dark input;
- `apply_brightness` with `parse_brightness`: `--brightness=auto|MEAN|+-Nev` of tools/enhance
  ("auto" keeps the network's brightness but never brightens a well-exposed input much);
Images are float [H, W, 3] in [0, 1] (or `inference`'s scaled view of an 8/16-bit input).
"""
import dataclasses

import numpy as np

from lowlight_tf import curves


# ----------------------------------------------------------------------------------------------
# Calibrated exposure.

def expected_brightness(dark, exposure_curve):
    """Mean over pixels and channels of the camera's expected bright value for `dark`.

    `curves.expected_brightness`: dark float [H, W, 3] in [0, 1], exposure_curve float
    [3, 256] in [0, 255]; returns a float in [0, 1].
    """
    return curves.expected_brightness(dark, exposure_curve)


def anchor_exposure(prediction, dark, exposure_curve, out=None, per_channel=False):
    """Scale a prediction so its mean brightness is the calibrated camera's expectation.

    A single dark sRGB image does not tell its exposure: a network trained on simulated pairs
    whose exposure varies pulls every output towards its training photos' typical brightness
    (RESULTS.md, issue 6). The calibration pairs do tell how bright this camera's scenes come
    out for a given dark value; this keeps the network's structure and colour and takes the
    global brightness from them (one gain for all channels). With `per_channel`, each channel
    gets its own gain to the camera's expected mean of that channel: the calibration pairs
    then also set the colour balance, e.g. a device whose dark frames carry a colour cast the
    network was not trained to remove (`curves.expected_channel_means`).

    Args:
      prediction: float32 [H, W, 3] in [0, 1], the model output for `dark`.
      dark: float [H, W, 3] in [0, 1], the model input.
      exposure_curve: float [3, 256], see `expected_brightness`.
      out: None, or a float32 array of the prediction's shape to write into (may be
        `prediction` itself: no full-size copy for a large photo).
      per_channel: one gain per channel (colour from the calibration too) instead of one.
    Returns:
      float32 [H, W, 3] in [0, 1] (`out` when given).
    """
    if per_channel:
        current = np.mean(prediction, axis=(0, 1), dtype=np.float64)
        expected = curves.expected_channel_means(dark, exposure_curve)
        gain = np.where(current > 0.0, expected / np.maximum(current, 1e-12), 1.0)
    else:
        current = float(np.mean(prediction, dtype=np.float64))
        gain = expected_brightness(dark, exposure_curve) / current if current > 0.0 else 1.0
    result = np.multiply(prediction, np.asarray(gain, np.float32), out=out, dtype=np.float32)
    return np.clip(result, 0.0, 1.0, out=result)


# ----------------------------------------------------------------------------------------------
# The user's brightness control (beyond the paper).

BRIGHTNESS_AUTO = "auto"
# "auto" never lifts the mean of an input at least this bright (of full scale) ...
WELL_EXPOSED_MEAN = 0.25
# ... by more than this factor: a photo that is already well exposed stays about as it is.
AUTO_MAX_GAIN = 1.15


@dataclasses.dataclass(frozen=True)
class Brightness:
    """A parsed `--brightness`: kind "auto", "mean" (value: target mean in (0, 1)) or "ev"
    (value: exposure change in stops, linear light)."""
    kind: str = BRIGHTNESS_AUTO
    value: float = 0.0

    def __str__(self):
        if self.kind == "mean":
            return f"{self.value:g}"
        if self.kind == "ev":
            return f"{self.value:+g}ev"
        return BRIGHTNESS_AUTO


def parse_brightness(text):
    """Parses a brightness setting: "auto", a mean level in (0, 1) such as "0.4", or an exposure
    change in EV such as "+1ev", "-0.5EV".

    Returns:
      Brightness. A Brightness is returned as it is.
    Raises:
      ValueError: with the accepted forms, for anything else.
    """
    if isinstance(text, Brightness):
        return text
    raw = str(text).strip().lower()
    usage = ("use 'auto' (keep the network's brightness), a mean level between 0 and 1 such as "
             "'0.4', or an exposure change in EV such as '+1ev' or '-0.5ev'")
    if raw in ("", BRIGHTNESS_AUTO):
        return Brightness()
    try:
        if raw.endswith("ev"):
            value = float(raw[:-2])
            if not np.isfinite(value) or abs(value) > 16:
                raise ValueError
            return Brightness("ev", value)
        value = float(raw)
    except ValueError:
        raise ValueError(f"Invalid brightness {text!r}: {usage} (EV within +-16).") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"Invalid brightness {text!r}: a mean level must lie strictly between 0 "
                         f"and 1 (fraction of full scale); {usage}.")
    return Brightness("mean", value)


def image_mean(image):
    """Mean over pixels and channels of float [H, W, C] in [0, 1] (or a `ScaledArray`), in row
    bands (no full-size temporary); 0.0 for an empty image."""
    total, count = 0.0, 0
    for begin in range(0, image.shape[0], 256):
        band = np.asarray(image[begin:begin + 256], np.float32)
        total += float(np.sum(band, dtype=np.float64))
        count += band.size
    return total / count if count else 0.0


def _input_brightness(dark):
    """Display mean of a model input in [0, 1]: sRGB images as they are; a packed bayer mosaic
    [h, w, 4] is linear, so its values are sRGB-encoded first (roughly what it looks like)."""
    if dark.shape[-1] != 4:
        return image_mean(dark)
    total, count = 0.0, 0
    for begin in range(0, dark.shape[0], 256):
        band = np.clip(np.asarray(dark[begin:begin + 256], np.float64), 0.0, 1.0)
        total += float(np.sum(curves.linear_to_srgb(band)))
        count += band.size
    return total / count if count else 0.0


def _gain_for_mean(prediction, target, bins=4096):
    """The gain g with mean(clip(g * prediction, 0, 1)) = target (as close as clipping allows).

    One pass collects the count and the sum of the values in each of `bins` bins; the clipped
    mean of a gain is then sum_b min(g * sum_b, count_b), exact except in the one bin that
    straddles the clipping point 1 / g. Bisection on that.
    """
    counts = np.zeros(bins, np.float64)
    sums = np.zeros(bins, np.float64)
    for begin in range(0, prediction.shape[0], 256):
        band = np.clip(np.asarray(prediction[begin:begin + 256], np.float64).ravel(), 0.0, 1.0)
        index = np.minimum((band * bins).astype(np.int64), bins - 1)
        counts += np.bincount(index, minlength=bins)
        sums += np.bincount(index, weights=band, minlength=bins)
    total = counts.sum()
    if total == 0 or sums.sum() <= 0.0:
        return 1.0  # an all-black output cannot be brightened by a gain

    def clipped_mean(gain):
        return float(np.minimum(sums * gain, counts).sum()) / total

    low, high = 0.0, target * total / sums.sum()  # the gain without clipping
    while clipped_mean(high) < target and high < 1e6:  # clipping needs more gain
        low, high = high, high * 2.0
    for _ in range(50):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if clipped_mean(middle) < target else (low, middle)
    return 0.5 * (low + high)


def apply_brightness(prediction, dark, brightness=BRIGHTNESS_AUTO, out=None):
    """Sets the brightness of a model output as the user asked (one gain for every pixel and
    channel, clipped to [0, 1]).

    - "auto": the network's output as it is, except that an input already well exposed (mean
      >= WELL_EXPOSED_MEAN of full scale) is never brightened by more than AUTO_MAX_GAIN in mean:
      the output is scaled down until mean(output) <= 1.15 * mean(input).
    - a mean level m in (0, 1): the gain that makes the clipped output's mean m (below m only if
      even white everywhere cannot reach it).
    - an exposure change of E stops ("+1ev"): the output's linear light (inverse sRGB curve) is
      multiplied by 2**E, clipped at white and re-encoded, as a camera exposure change would;
      sRGB values of mid-tones rise by about 2**(E / 2.2).

    Args:
      prediction: float32 [H, W, 3] in [0, 1], the model output for `dark`.
      dark: the model input: float [H, W, 3] in [0, 1] (or a `ScaledArray`), or a packed bayer
        mosaic [H/2, W/2, 4] in [0, 1] (linear); only its mean is used, by "auto".
      brightness: "auto", a mean level, an EV text (see `parse_brightness`) or a Brightness.
      out: None, or a float32 array of the prediction's shape to write into (may be
        `prediction` itself).
    Returns:
      float32 [H, W, 3] in [0, 1] (`out` when given).
    Raises:
      ValueError: an invalid brightness setting.
    """
    setting = parse_brightness(brightness)
    if out is None:
        out = np.empty(prediction.shape, np.float32)
    if setting.kind == "ev":
        ratio = 2.0 ** setting.value
        for begin in range(0, prediction.shape[0], 256):
            band = np.clip(np.asarray(prediction[begin:begin + 256], np.float64), 0.0, 1.0)
            linear = np.minimum(curves.srgb_to_linear(band) * ratio, 1.0)
            out[begin:begin + 256] = curves.linear_to_srgb(linear)
        return out
    gain = 1.0
    if setting.kind == "mean":
        gain = _gain_for_mean(prediction, setting.value)
    else:
        input_mean = _input_brightness(dark)
        output_mean = image_mean(prediction)
        if input_mean >= WELL_EXPOSED_MEAN and output_mean > AUTO_MAX_GAIN * input_mean:
            gain = AUTO_MAX_GAIN * input_mean / output_mean
    result = np.multiply(prediction, np.float32(gain), out=out, dtype=np.float32)
    return np.clip(result, 0.0, 1.0, out=result)
