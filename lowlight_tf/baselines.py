"""Classical baselines for the evaluation table (paper §4 compares against a reference method).

The paper's Table 1 has no classical rows; we add them so that a learned model's PSNR can be
judged against what a one-line brightening achieves on the same images. Each baseline maps a
dark image, float32 [H, W, 3] in [0, 255], to an enhanced one in [0, 255]:

- `input`: the dark image itself (the floor every method must beat);
- `gamma`: 255 * (x / 255) ** 0.4;
- `histogram_equalization`: one histogram over all pixels and channels (256 bins spanning the
  image's own min..max), each value mapped to the cumulative distribution at its bin centre
  (the method of skimage.exposure.equalize_hist);
- `auto_gain`: one global gain that moves the image mean to 0.45 * 255.

One more needs real pairs, so it is not in `apply`: `calibrated_curve` pools the camera's mean
bright value per 8-bit dark value and channel over a few pairs
(`lowlight_tf.curves.fit_dark_to_bright_curve`, also reachable as `fit_dark_to_bright_curve`
here; the same pairs the simulation is calibrated on) and applies it as a lookup table after a
1-pixel Gaussian blur (`apply_curve`). It is the classical bar for a zero-shot model of that
camera. No TensorFlow: this module imports only NumPy, SciPy and `lowlight_tf.curves`.

With the metrics of lowlight_tf.metrics on 8-bit quantised outputs these reproduce the figures
measured on eliei/rgb_dev in ../shared/data/README.md (PSNR 7.38, 12.33, 13.18, 14.73).
"""
import numpy as np
from scipy import ndimage

from lowlight_tf import curves

GAMMA_EXPONENT = 0.4
AUTO_GAIN_TARGET_MEAN = 0.45 * 255.0
HISTOGRAM_BINS = 256
CURVE_BLUR_SIGMA = 1.0  # pixels: the best of 0, 1 and 1.5 in benchmarks/curve_baseline.py
# The calibrated-curve baseline's fit, kept under this module's name for its callers.
fit_dark_to_bright_curve = curves.fit_dark_to_bright_curve


def identity(dark):
    """Returns the dark image unchanged, float32 [H, W, 3] in [0, 255]."""
    return np.asarray(dark, np.float32)


def gamma(dark, exponent=GAMMA_EXPONENT):
    """Returns 255 * (dark / 255) ** exponent, float32 [H, W, 3] in [0, 255]."""
    dark = np.asarray(dark, np.float32)
    return (255.0 * np.power(np.clip(dark, 0.0, 255.0) / 255.0, exponent)).astype(np.float32)


def histogram_equalization(dark, bins=HISTOGRAM_BINS):
    """Global histogram equalisation over all pixels and channels (skimage's equalize_hist).

    Args:
      dark: float32 [H, W, 3] in [0, 255].
      bins: histogram bins spanning [min(dark), max(dark)].

    Returns:
      float32 [H, W, 3] in [0, 255]: 255 * CDF(value), the CDF linearly interpolated between
      bin centres. A constant image is returned unchanged.
    """
    dark = np.asarray(dark, np.float32)
    low, high = float(dark.min()), float(dark.max())
    if high <= low:
        return dark.copy()
    counts, edges = np.histogram(dark, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    cdf = np.cumsum(counts, dtype=np.float64)
    cdf /= cdf[-1]
    return (255.0 * np.interp(dark, centres, cdf)).astype(np.float32)


def auto_gain(dark, target_mean=AUTO_GAIN_TARGET_MEAN):
    """Multiplies by one global gain so the mean becomes `target_mean`, clipping at 255.

    Args:
      dark: float32 [H, W, 3] in [0, 255].
      target_mean: the wanted mean in [0, 255] (0.45 * 255 by default).

    Returns:
      float32 [H, W, 3] in [0, 255]; an all-black image is returned unchanged.
    """
    dark = np.asarray(dark, np.float32)
    mean = float(dark.mean())
    if mean <= 0.0:
        return dark.copy()
    return np.clip(dark * np.float32(target_mean / mean), 0.0, 255.0)


# Row label -> function, in table order.
BASELINES = {
    "input": identity,
    "gamma 0.4": gamma,
    "histogram equalisation": histogram_equalization,
    "auto-gain (mean 0.45)": auto_gain,
}
# Short names for command lines.
BASELINE_KEYS = {
    "input": "input",
    "gamma": "gamma 0.4",
    "he": "histogram equalisation",
    "auto_gain": "auto-gain (mean 0.45)",
}


def apply(name, dark):
    """Applies the baseline `name` (a row label or a short key) to float32 [H, W, 3] in [0, 255]."""
    name = BASELINE_KEYS.get(name, name)
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline {name!r}; choose from {', '.join(BASELINE_KEYS)}.")
    return BASELINES[name](dark)


def apply_curve(dark, curve, blur=CURVE_BLUR_SIGMA):
    """Blur dark (Gaussian, `blur` pixels; 0 skips it), then map each channel through `curve`.

    Args:
      dark: float [H, W, 3] in [0, 255].
      curve: float [3, 256] from `curves.fit_dark_to_bright_curve`.
    Returns:
      float32 [H, W, 3] in [0, 255].
    """
    dark = np.asarray(dark, np.float64)
    if blur > 0:
        dark = ndimage.gaussian_filter(dark, (blur, blur, 0))
    return curves.tone_map(dark, curve).astype(np.float32)
