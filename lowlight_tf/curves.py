"""Per-channel curves over 8-bit values: tone maps, their fits from real pairs, exposure lookups.

A curve is float [3, 256]: curve[c, v] is the output for input value v of channel c (RGB), in
[0, 255]. Three uses, all beyond the paper's §3.1 composite (which is one power law):

- the camera tone curve T (`fit_tone_curve`, `tone_map`): dark ~ gain * T(bright) per channel,
  applied to the bright image before the composite (`lowlight_tf.simulation.apply_tone_curve`
  is the TensorFlow version of `tone_map`);
- the dark-to-bright curve (`fit_dark_to_bright_curve`): the camera's mean bright value per
  8-bit dark value, pooled over the calibration pairs; the `calibrated curve` baseline applies
  it as a lookup table (`lowlight_tf.baselines.apply_curve`) and a preset stores it as its
  `exposure_curve`;
- the exposure lookup (`expected_brightness`): the mean of that curve over a dark image's
  pixels, the brightness the camera's scenes have for that dark image.

Images are NumPy float arrays [H, W, 3] in [0, 255] unless stated otherwise. No TensorFlow.
"""
import numpy as np
from scipy import optimize

LEVELS = 256  # 8-bit values 0..255: the length of every curve
TONE_ITERATIONS = 6  # alternations of curve and gains in fit_tone_curve
TONE_MIN_PIXELS = 50  # pixels a bright value needs to be measured in fit_tone_curve
TONE_TAIL = 16  # measured values whose slope extends the curve above the brightest measured one
TONE_SATURATED = 250.0  # pixels at or above this in either image do not fit tone-curve gains
LOOKUP_ROWS = 256  # image rows per band in expected_brightness (bounds its temporaries)


class CurveError(ValueError):
    """Pairs that cannot give a curve (none, or too few distinct values); says what to do."""


def codes(values):
    """Nearest 8-bit value of float values in [0, 255] (clipped): int64, same shape."""
    return np.clip(np.round(values), 0, 255).astype(np.int64)


def tone_map(image, curve):
    """Map each channel through its curve, linearly interpolated between integer values.

    The NumPy counterpart of `lowlight_tf.simulation.apply_tone_curve`.

    Args:
      image: float [H, W, 3] (any leading shape) in [0, 255]; values outside are clipped to it.
      curve: float [3, 256] in [0, 255].
    Returns:
      float64, the shape of `image`, in the range of `curve`.
    """
    image = np.clip(np.asarray(image, np.float64), 0.0, 255.0)
    grid = np.arange(LEVELS, dtype=np.float64)
    return np.stack([np.interp(image[..., c], grid, curve[c]) for c in range(3)], axis=-1)


def _sums_per_code(indices, weights):
    """Per-code sums of `weights` and pixel counts: float64 [256] each, pooled over images.

    `indices` (int64, from `codes`) and `weights` (float) are matching iterables of flat arrays,
    one per image (generators keep one image's arrays in memory at a time).
    """
    total, count = np.zeros(LEVELS), np.zeros(LEVELS)
    for index, weight in zip(indices, weights):
        total += np.bincount(index, weight, LEVELS)
        count += np.bincount(index, minlength=LEVELS)
    return total, count


def fit_dark_to_bright_curve(pairs):
    """Mean bright value per 8-bit dark value, per channel, pooled over real pairs.

    Args:
      pairs: iterable of objects with `dark` and `bright` float [H, W, 3] in [0, 255]
        (lowlight_tf.calibration.Pair).
    Returns:
      float64 [3, 256] in [0, 255]; dark values no pixel had are linearly interpolated.
    Raises:
      CurveError: no pairs.
    """
    pairs = list(pairs)
    if not pairs:
        raise CurveError("fit_dark_to_bright_curve needs at least one pair.")
    curve = np.zeros((3, LEVELS))
    for c in range(3):
        total, count = _sums_per_code(
            (codes(pair.dark[..., c]).ravel() for pair in pairs),
            (np.asarray(pair.bright[..., c], np.float64).ravel() for pair in pairs))
        seen = np.flatnonzero(count)
        curve[c] = np.interp(np.arange(LEVELS), seen, total[seen] / count[seen])
    return curve


def monotone_curve(total, count, min_pixels=TONE_MIN_PIXELS):
    """Non-decreasing float64 [256] curve, scaled to end at 255, from per-value sums and counts.

    Values with at least `min_pixels` pixels are measured: their means are made monotone by
    weighted isotonic regression; values between them are interpolated linearly and values
    above the brightest one continue the slope of the last `TONE_TAIL` measured values.

    Args:
      total, count: float [256], the sum of the curve's target and the pixel count per value.
      min_pixels: pixels a value needs to count as measured.
    Raises:
      CurveError: fewer than two measured values.
    """
    grid = np.arange(LEVELS, dtype=np.float64)
    measured = count >= min_pixels
    if measured.sum() < 2:
        raise CurveError("Too few distinct bright values to fit a tone curve; use more or "
                         "larger pairs.")
    fitted = optimize.isotonic_regression(total[measured] / count[measured],
                                          weights=count[measured]).x
    values = np.interp(grid, grid[measured], fitted)
    top = int(grid[measured][-1])
    if top < 255:  # continue the last measured slope instead of flattening highlights
        tail_x, tail_y = grid[measured][-TONE_TAIL:], fitted[-TONE_TAIL:]
        slope = max(float(np.polyfit(tail_x, tail_y, 1)[0]), 0.0)
        values[top + 1:] = fitted[-1] + slope * (grid[top + 1:] - top)
    values = np.maximum.accumulate(values)
    return values * 255.0 / max(values[-1], 1e-6)


def _unsaturated(pair):
    """Bool [H, W]: pixels unsaturated in both images (all channels < TONE_SATURATED)."""
    return (pair.bright < TONE_SATURATED).all(-1) & (pair.dark < TONE_SATURATED).all(-1)


def fit_tone_curve(pairs, *, iterations=TONE_ITERATIONS, min_pixels=TONE_MIN_PIXELS):
    """Fit one monotone tone curve per channel, shared by all pairs, up to a per-pair gain.

    Model: dark[..., c] ~ gain[pair, c] * T_c(bright[..., c]). Alternates (a) T_c(v) = pooled
    mean of dark / gain over pixels whose bright value rounds to v, made monotone and filled in
    by `monotone_curve`, scaled so T_c(255) = 255; and (b) per-pair gains by least squares
    over unsaturated pixels. The per-image exposure and colour then stay in the composite's
    parameters, fitted on (dark, T(bright)).

    Args:
      pairs: list of objects with `dark` and `bright` float [H, W, 3] in [0, 255] (at least one;
        lowlight_tf.calibration.Pair).
      iterations: alternations of (a) and (b).
      min_pixels: pixels a bright value needs to count as measured.
    Returns:
      (curve float64 [3, 256] in [0, 255], non-decreasing; gains float64 [len(pairs), 3]).
    Raises:
      CurveError: no pairs, or too few distinct bright values
        (`lowlight_tf.calibration.fit_tone_curve` raises CalibrationError instead).
    """
    if not pairs:
        raise CurveError("fit_tone_curve needs at least one pair.")
    grid = np.arange(LEVELS, dtype=np.float64)
    indices = [codes(pair.bright) for pair in pairs]
    masks = [_unsaturated(pair) for pair in pairs]
    gains = np.ones((len(pairs), 3))
    curve = np.tile(grid, (3, 1))
    for _ in range(iterations):
        for c in range(3):
            total, count = _sums_per_code(
                (index[..., c].ravel() for index in indices),
                (pair.dark[..., c].ravel() / gains[k, c] for k, pair in enumerate(pairs)))
            curve[c] = monotone_curve(total, count, min_pixels)
        for k, pair in enumerate(pairs):
            mapped = tone_map(pair.bright, curve)[masks[k]]
            dark = np.asarray(pair.dark, np.float64)[masks[k]]
            gains[k] = (dark * mapped).sum(0) / np.maximum((mapped ** 2).sum(0), 1e-9)
    return np.clip(curve, 0.0, 255.0), gains


def expected_brightness(dark, exposure_curve):
    """Mean over pixels and channels of the camera's expected bright value for `dark`.

    The mean of `expected_channel_means` (every channel has as many pixels). Args and raises
    as there; returns a float in [0, 1].
    """
    return float(np.mean(expected_channel_means(dark, exposure_curve)))


def expected_channel_means(dark, exposure_curve):
    """Per channel, the mean over pixels of the camera's expected bright value for `dark`.

    The mean of exposure_curve[c, v] over every pixel's 8-bit value v of channel c.
    Computed from per-channel histograms of bands of `LOOKUP_ROWS` rows: no full-size
    temporaries, so it suits large photos.

    Args:
      dark: float [H, W, 3] in [0, 1] (an 8-bit sRGB dark image of the calibrated camera).
      exposure_curve: float [3, 256] in [0, 255], the mean bright value per 8-bit dark value
        (`SimulationPreset.exposure_curve`, `fit_dark_to_bright_curve`).
    Returns:
      float64 [3] in [0, 1] (R, G, B).
    Raises:
      ValueError: `exposure_curve` is not [3, 256].
    """
    curve = np.asarray(exposure_curve, np.float64)
    if curve.shape != (3, LEVELS):
        raise ValueError(f"exposure_curve must be [3, 256], got {curve.shape}.")
    totals, count = np.zeros(3), 0
    for begin in range(0, dark.shape[0], LOOKUP_ROWS):
        band = codes(np.asarray(dark[begin:begin + LOOKUP_ROWS], np.float32) * 255.0)
        for c in range(3):
            totals[c] += float(np.bincount(band[..., c].ravel(), minlength=LEVELS) @ curve[c])
        count += band[..., 0].size
    return totals / max(count, 1) / 255.0


# ---------------------------------------------------------------------------------------------
# Transfer curves of rendered images (NumPy, values in [0, 1]).
# ---------------------------------------------------------------------------------------------
def srgb_to_linear(x):
    """Inverse sRGB transfer curve (IEC 61966-2-1) on [0, 1] values."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """sRGB transfer curve (IEC 61966-2-1) on [0, 1] values."""
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def bt709_to_linear(x):
    """Inverse of LibRaw's default output curve (BT.709: power 1/2.222, toe slope 4.5)."""
    return np.where(x < 0.081, x / 4.5, ((x + 0.099) / 1.099) ** (1.0 / 0.45))


def linear_to_bt709(x):
    """LibRaw's default output curve (rawpy postprocess gamma=(2.222, 4.5))."""
    return np.where(x < 0.018, x * 4.5, 1.099 * np.power(x, 0.45) - 0.099)
