"""Per-pair estimators of the paper's composite parameters (paper §3.1).

The composite maps a bright image b to a dark one d = GC(PN(CD(BL(b)))) with the 5-vector
(black_level, w_r, w_g, w_b, gamma_exponent), RGB, 8-bit units (lowlight_tf.simulation).

- `estimate_paper`: the estimators of §3.1 in the authors' order, on pixels in [5, 250]:
    bl  = mean(b - d)                                         (§3.1.1)
    w_c = mean(d_c / BL(b)_c)        per channel c             (§3.1.2)
    e   = mean(log d / log CD(BL(b)))                          (§3.1.4, the paper's 1/gamma)
- `fit_composite`: least squares of the noise-free composite (`composite_noise_free`) against d.
- `fit_joint`: our improvement. `fit_composite` for brightness and colour, and the noise of the
  real dark image for the rest: the Poisson peak matching its high-pass energy
  (`noise.estimate_noise_peak`), and the gamma exponent, which brightness alone hardly
  determines, whose simulated noise-versus-intensity curve is closest to the real one.

Images are NumPy float [H, W, 3] in [0, 255].
"""
import math

import numpy as np
from scipy import optimize

from lowlight_tf.calibration import noise
from lowlight_tf.calibration.pairs import CalibrationError

PIXEL_RANGE = (5.0, 250.0)  # §3.1: "we only consider pixel values in [5, 250]"
METHODS = ("paper", "joint")
# Candidate gamma exponents of the joint fit (the noise shape decides among them).
JOINT_EXPONENTS = (0.6, 0.8, 1.0, 1.25, 1.6, 2.0)


def composite_noise_free(bright, params):
    """Noise-free f = clip((w * max(b - bl, 0)) ** e, 0, 255) on float arrays [..., 3]."""
    level, weights, exponent = params[0], np.asarray(params[1:4]), params[4]
    linear = np.maximum(bright - level, 0.0) * weights
    return np.clip(np.power(linear, exponent), 0.0, 255.0)


def _in_range(values, pixel_range):
    """Bool, the shape of `values`: low <= value <= high for (low, high) = `pixel_range`."""
    return (values >= pixel_range[0]) & (values <= pixel_range[1])


def estimate_paper(dark, bright, pixel_range=PIXEL_RANGE):
    """The §3.1 estimators in the authors' order, on pixels whose values lie in `pixel_range`.

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      pixel_range: (low, high) 8-bit values used, the paper's [5, 250].
    Returns:
      float64 [5] (black_level, w_r, w_g, w_b, gamma_exponent); NaN where no pixel qualifies.
    """
    dark = np.asarray(dark, np.float64)
    bright = np.asarray(bright, np.float64)
    mask = _in_range(dark, pixel_range) & _in_range(bright, pixel_range)
    level = float(np.mean((bright - dark)[mask])) if mask.any() else math.nan
    corrected = np.maximum(bright - level, 0.0)
    weights = []
    for channel in range(3):
        d, b = dark[..., channel], corrected[..., channel]
        mask = _in_range(d, pixel_range) & _in_range(b, pixel_range)
        weights.append(float(np.mean(d[mask] / b[mask])) if mask.any() else math.nan)
    linear = corrected * np.asarray(weights)
    mask = _in_range(dark, pixel_range) & _in_range(linear, pixel_range)
    exponent = (float(np.mean(np.log(dark[mask]) / np.log(linear[mask])))
                if mask.any() else math.nan)
    return np.asarray([level] + weights + [exponent], np.float64)


def fit_composite(dark, bright, *, exponent=None, black_level=None, initial=None,
                  max_pixels=30000, seed=0):
    """Least-squares fit of the noise-free composite f(b) = clip((w * max(b - bl, 0)) ** e) to d.

    Minimises sum((f(b) - d)^2) over up to `max_pixels` randomly chosen pixels (all channels),
    excluding pixels saturated in either image (>= 254.5), with bounds bl in [0, 254],
    w in [1e-4, 20], e in [0.05, 4] (scipy.optimize.least_squares, trust-region reflective).

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      exponent: fix gamma_exponent to this value; None fits it.
      black_level: fix black_level to this value (0 with a tone curve, which carries the
        camera's floor); None fits it.
      initial: float [5] extra start point.
      max_pixels: pixel subsample size.
      seed: subsample seed.
    Returns:
      (params float64 [5], rms residual in 8-bit units).
    """
    dark = np.asarray(dark, np.float64).reshape(-1, 3)
    bright = np.asarray(bright, np.float64).reshape(-1, 3)
    keep = np.all(dark < 254.5, axis=1) & np.all(bright < 254.5, axis=1)
    dark, bright = dark[keep], bright[keep]
    if len(dark) == 0:
        raise CalibrationError("No unsaturated pixels to fit.")
    if len(dark) > max_pixels:
        chosen = np.random.default_rng(seed).choice(len(dark), max_pixels, replace=False)
        dark, bright = dark[chosen], bright[chosen]
    lower = np.asarray([0.0, 1e-4, 1e-4, 1e-4, 0.05])
    upper = np.asarray([254.0, 20.0, 20.0, 20.0, 4.0])
    fixed = {index: float(value) for index, value in ((0, black_level), (4, exponent))
             if value is not None}
    free = np.asarray([index not in fixed for index in range(5)])
    starts = []
    if initial is not None and np.all(np.isfinite(initial)):
        starts.append(np.asarray(initial, np.float64))
    if exponent is None:
        paper = estimate_paper(dark.reshape(-1, 1, 3), bright.reshape(-1, 1, 3))
        if np.all(np.isfinite(paper)):
            starts.append(paper)
    neutral_exponent = 1.0 if exponent is None else float(exponent)
    linear_dark = np.power(dark, 1.0 / neutral_exponent).mean(0)
    ratio = np.clip(linear_dark / np.maximum(bright.mean(0), 1e-3), 1e-3, 10.0)
    starts.append(np.concatenate([[0.0], ratio, [neutral_exponent]]))

    def full(free_params):
        params = np.zeros(5)
        params[free] = free_params
        for index, value in fixed.items():
            params[index] = value
        return params

    def residuals(free_params):
        return (composite_noise_free(bright, full(free_params)) - dark).ravel()

    best = None
    for start in starts:
        start = np.clip(start, lower + 1e-6, upper - 1e-6)[free]
        result = optimize.least_squares(residuals, start, bounds=(lower[free], upper[free]),
                                        x_scale=np.asarray([10.0, 0.1, 0.1, 0.1, 0.1])[free],
                                        method="trf")
        if best is None or result.cost < best.cost:
            best = result
    return full(best.x), math.sqrt(2.0 * best.cost / best.fun.size)


def fit_joint(dark, bright, *, exponents=JOINT_EXPONENTS, black_level=None, quantize=True,
              max_pixels=30000, seed=0):
    """Our joint fit: brightness and colour by least squares, noise level and shape from d.

    Brightness alone leaves the exponent e nearly undetermined (w^e and e trade off), but e
    decides how the Poisson noise, added before GC, varies with intensity: the simulated noise
    variance grows like d^(2 - 1/e). So for each e of `exponents`: fit (bl, w_r, w_g, w_b) by
    least squares (`fit_composite`), find the peak that matches the real image's high-pass noise
    energy (`noise.estimate_noise_peak`), and compare the noise energy per intensity level
    (`noise.noise_curve`) of the simulated and real dark images (both on the central
    `noise.NOISE_CROP` square); keep the e with the closest curve (mean squared log ratio).

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      exponents: candidate gamma exponents.
      black_level: fix the black level (see `fit_composite`); None fits it.
      quantize: simulate 8-bit dark images (as the real ones are) when matching noise.
      max_pixels, seed: least-squares subsample.
    Returns:
      dict: `params` float64 [5], `noise_peak` float, `rms` (8-bit units), `curve_error`,
      `candidates` (per exponent: exponent, params, noise_peak, rms, curve_error).
    """
    dark_crop, bright_crop = noise.central_crop(dark), noise.central_crop(bright)
    mask = noise.noise_mask(dark_crop)
    level = noise.noise_level(dark_crop)
    real_curve = noise.noise_curve(dark_crop, level, mask)
    candidates = []
    previous = None
    for exponent in exponents:
        params, rms = fit_composite(dark, bright, exponent=exponent, black_level=black_level,
                                    max_pixels=max_pixels, seed=seed, initial=previous)
        previous = params
        peak = noise.estimate_noise_peak(dark_crop, bright_crop, params, quantize=quantize,
                                         seed=seed)
        simulated = noise.simulate_one(bright_crop, params, seed=seed, noise_peak=peak,
                                       quantize=quantize)
        curve = noise.noise_curve(simulated, level, mask)
        valid = np.isfinite(real_curve) & np.isfinite(curve)
        log_ratio = np.log(curve[valid] + 0.05) - np.log(real_curve[valid] + 0.05)
        error = float(np.mean(log_ratio ** 2))
        candidates.append({"exponent": float(exponent), "params": params.tolist(),
                           "noise_peak": peak, "rms": rms, "curve_error": error})
    best = min(candidates, key=lambda c: c["curve_error"])
    return {"params": np.asarray(best["params"]), "noise_peak": best["noise_peak"],
            "rms": best["rms"], "curve_error": best["curve_error"], "candidates": candidates}


def estimate_pair(pair, method, *, pixel_range=PIXEL_RANGE, quantize=True, max_pixels=30000,
                  seed=0, exponents=JOINT_EXPONENTS, black_level=None):
    """Per-pair estimate with the given method ("paper" or "joint").

    Returns:
      dict with `params` float64 [5] and `noise_peak` (the joint fit's peak; None for `paper`,
      whose §3.1 estimators have no noise parameter), plus method-specific details.
    """
    if method == "paper":
        return {"params": estimate_paper(pair.dark, pair.bright, pixel_range), "noise_peak": None}
    if method == "joint":
        return fit_joint(pair.dark, pair.bright, exponents=exponents, black_level=black_level,
                         quantize=quantize, max_pixels=max_pixels, seed=seed)
    raise ValueError(f"Unknown calibration method {method!r}; use one of {METHODS}.")
