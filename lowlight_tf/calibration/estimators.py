"""Per-pair estimators of the paper's composite parameters (paper §3.1).

The composite maps a bright image b to a dark one d = GC(PN(CD(BL(b)))) with the 5-vector
(black_level, w_r, w_g, w_b, gamma_exponent), RGB, 8-bit units (lowlight_tf.simulation).

- `estimate_paper`: the estimators of §3.1 in the authors' order, on pixels in [5, 250]:
    bl  = mean(b - d)                                         (§3.1.1)
    w_c = mean(d_c / BL(b)_c)        per channel c             (§3.1.2)
    e   = mean(log d / log CD(BL(b)))                          (§3.1.4, the paper's 1/gamma)
- `fit_composite`: least squares of the noise-free composite (`composite_noise_free`) against d.
- `fit_joint`: our improvement. The gamma exponent and the Poisson peak are searched together
  (`joint.search`), each (e, peak) scored on brightness (dark means against the exact mean of
  the noisy, 8-bit composite, `moments`, with bl and w fitted by least squares) and noise (the
  high-pass residual against the model's variance) at once.

Images are NumPy float [H, W, 3] in [0, 255].
"""
import math

import numpy as np
from scipy import optimize

from lowlight_tf.calibration import joint
from lowlight_tf.calibration.pairs import CalibrationError

PIXEL_RANGE = (5.0, 250.0)  # §3.1: "we only consider pixel values in [5, 250]"
METHODS = ("paper", "joint")
# Candidate gamma exponents of the joint fit (refined between them, `joint.search`).
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
              max_pixels=None, seed=0, refine=True):
    """Our joint fit: exponent and noise peak searched together, each scored on brightness and
    noise at once (`joint.search`).

    Brightness alone fixes only w^e, and the noise curve alone cannot tell exponents apart when
    there is little noise, so every (e, peak) is scored by chi^2 of the dark means per bright
    value against the exact mean of the noisy composite (`moments`; black level and colour
    weights fitted by least squares at that (e, peak)) plus the Gaussian -2 log-likelihood of
    the dark image's high-pass noise under the model's variance. For each candidate exponent the
    best peak is searched (log grid, then Brent); with `refine`, e is then searched between the
    best candidate's neighbours and kept if significantly better (`joint.SIGNIFICANT`).

    Args:
      dark, bright: float [H, W, 3] in [0, 255].
      exponents: candidate gamma exponents (increasing).
      black_level: fix the black level (see `fit_composite`); None fits it.
      quantize: model the 8-bit rounding of the dark image (as real ones are written); it is
        modelled only when `dark` holds integer values (a float dark image is not rounded).
      max_pixels, seed: fit the brightness on a random subsample of this many pixels (None:
        all of them).
      refine: search exponents between the candidates (off for `calibrate`, which shares one
        candidate exponent between pairs).
    Returns:
      dict: `params` float64 [5], `noise_peak` float, `rms` (dark means' misfit, 8-bit units),
      `score` (-2 log L), `candidates` (per exponent: exponent, params, noise_peak, rms, score).
    """
    dark = np.asarray(dark, np.float64)
    bright = np.asarray(bright, np.float64)
    if max_pixels is not None and dark.shape[0] * dark.shape[1] > max_pixels:
        chosen = np.random.default_rng(seed).choice(dark.shape[0] * dark.shape[1], max_pixels,
                                                    replace=False)
        sample = (dark.reshape(-1, 1, 3)[chosen], bright.reshape(-1, 1, 3)[chosen])
    else:
        sample = (dark, bright)
    rounded = bool(quantize) and bool(np.all(dark == np.round(dark)))
    best, candidates = joint.search(dark, bright, list(exponents), black_level=black_level,
                                    rounded=rounded, refine=refine, brightness_pixels=sample)

    def row(point):
        return {"exponent": float(point.params[4]), "params": point.params.tolist(),
                "noise_peak": point.noise_peak, "rms": point.rms, "score": point.score}

    return {"params": np.asarray(best.params), "noise_peak": best.noise_peak, "rms": best.rms,
            "score": best.score, "candidates": [row(point) for point in candidates]}


def estimate_pair(pair, method, *, pixel_range=PIXEL_RANGE, quantize=True, max_pixels=30000,
                  seed=0, exponents=JOINT_EXPONENTS, black_level=None, refine=True):
    """Per-pair estimate with the given method ("paper" or "joint").

    `refine` (joint only): see `fit_joint`.

    Returns:
      dict with `params` float64 [5] and `noise_peak` (the joint fit's peak; None for `paper`,
      whose §3.1 estimators have no noise parameter), plus method-specific details.
    """
    if method == "paper":
        return {"params": estimate_paper(pair.dark, pair.bright, pixel_range), "noise_peak": None}
    if method == "joint":
        return fit_joint(pair.dark, pair.bright, exponents=exponents, black_level=black_level,
                         quantize=quantize, max_pixels=max_pixels, seed=seed, refine=refine)
    raise ValueError(f"Unknown calibration method {method!r}; use one of {METHODS}.")
