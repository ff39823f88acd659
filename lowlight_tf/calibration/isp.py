"""Calibrating the ISP-aware simulation (`lowlight_tf.simulation_isp`) from a few real pairs.

Measured on real dark/bright pairs (NumPy float [H, W, 3] in [0, 255], RGB), after Brooks et
al. (CVPR 2019, §3) for the rendering, and the Poissonian-Gaussian noise level function of ELD
(Wei et al., CVPR 2020, §3.1; Foi et al., TIP 2008) for the noise:

1. Linear light: both images through the inverse sRGB curve (the model's tone). The colour
   matrix and white balance stay the identity: from rendered pairs they cannot be told apart
   from the per-channel exposure ratio, which absorbs the dark image's colour cast. Optionally
   (`fit_bright_tone_curve`) the bright image's linear light is a fitted tone curve instead:
   one monotone curve per channel shared by the pairs, with linear dark ~ k * T(bright) / 255.
2. `exposure_ratio` per pair and channel: mean linear dark / mean linear bright over the pixels
   that are unsaturated in the bright image.
3. Noise level function per pair and channel (`noise_level_bins`, `fit_noise_level`): the
   high-pass residual r = x - G_1 * x of the linear dark image (`noise.high_pass`) has, at
   local linear level x, robust variance (`robust_variance`: median(r^2) / 0.455 per Bayer
   site class) c (g x + read^2) + c_q q(x):
   c is the fraction of the noise's variance the high-pass keeps (`residual_factors`, measured
   on the simulation's own noise path), q the 8-bit quantisation variance in linear units.
   Levels where the dark image clips at 0 are left out. A weighted non-negative least-squares
   line gives shot_gain g and read_noise per channel. The read noise is identifiable only when
   the dark image has unclipped pixels near 0 (see the tests).
4. Spatial correlation (`choose_noise_path`): the real dark images' per-channel
   `neighbour_correlation` is compared with simulations of the fit pairs along `NOISE_PATHS`
   (i.i.d. noise, blurred or not, a stand-in for an ISP's denoising; or a Bayer mosaic with
   bilinear demosaic, blurred or not); the closest path (sum of squares over channels) is kept.

The pairs' parameters give the preset: ln(exposure_ratio) ~ N(mean, cov) across pairs, the
geometric-mean shot gain per channel with the pairs' spread as the shot scale, the median read
noise. `calibrate_isp` returns the preset and its fidelity rows on held-out pairs.
"""
import datetime
import functools

import numpy as np
from scipy import optimize

from lowlight_tf import curves
from lowlight_tf import simulation
from lowlight_tf import simulation_isp
from lowlight_tf.calibration import fit
from lowlight_tf.calibration import noise
from lowlight_tf.calibration import report
from lowlight_tf.calibration.pairs import CalibrationError, Pair

SATURATED = 250.0  # bright pixels at or above this (any channel) do not measure the exposure
LEVEL_EDGES = tuple(np.geomspace(1e-4, 0.5, 31))  # linear-level bins of the noise level function
MIN_BIN_PIXELS = 200  # pixels a level bin needs
MAX_ZERO_FRACTION = 0.01  # bins where more dark pixels are 0 are clipped: left out
CHI2_MEDIAN = 0.4549364231195724  # median of chi-square(1): median(r^2) / this = var(r)
MIN_MEAN_LEVEL = 1e-6  # linear mean a bright channel needs to define an exposure ratio
NOISE_CROP = 512  # central crop used for the noise statistics (speed)
MIN_FIT_PAIRS = 2  # measurable fit pairs the pooled noise and exposure distribution need
# (bayer, noise_blur px) in order of increasing spatial correlation.
# Without a mosaic every channel's noise is equally correlated; with one, red and blue (sparser
# sites) more than green: per-channel correlations tell a blur from a Bayer path.
NOISE_PATHS = ((False, 0.0), (False, 0.5), (False, 0.8), (False, 1.2), (True, 0.0), (True, 0.8),
               (True, 1.2), (True, 2.0))
FACTOR_FIELD = (4, 128)  # images and size of the flat fields of `residual_factors`


def linear(image):
    """sRGB float [H, W, 3] in [0, 255] -> linear light float64 in [0, 1] (inverse sRGB)."""
    return curves.srgb_to_linear(np.clip(np.asarray(image, np.float64) / 255.0, 0.0, 1.0))


def bright_linear(bright, tone_curve=None):
    """The bright image's linear light float64 [H, W, 3] in [0, 1]: inverse sRGB, or
    `tone_curve` (float [3, 256], linear light x 255 per 8-bit value) when given."""
    if tone_curve is None:
        return linear(bright)
    return curves.tone_map(bright, tone_curve) / 255.0


def fit_bright_tone_curve(pairs):
    """Tone curve T [3, 256] with linear(dark) * 255 ~ k_pair * T(bright) per channel.

    `curves.fit_tone_curve` on the pairs with their dark images in linear light: T(255) = 255,
    monotone, shared by the pairs; the camera's rendering of bright images where the sRGB curve
    does not describe it (highlight compression). CalibrationError if the pairs cannot give one.
    """
    curve, _ = fit.fit_tone_curve([Pair(p.id, linear(p.dark) * 255.0, p.bright) for p in pairs])
    return curve


def exposure_ratio(pair, tone_curve=None):
    """Per-channel linear-light ratio dark / bright of a pair: float64 [3], > 0.

    Means over the pixels where the bright image is below `SATURATED` in every channel (the
    dark image's noise averages out; its clipping at 0 biases very dark pairs slightly up);
    the bright image's linear light from `bright_linear(bright, tone_curve)`.
    """
    unsaturated = np.all(pair.bright < SATURATED, axis=-1)
    if unsaturated.sum() < 100:
        raise CalibrationError(f"Pair {pair.id}: fewer than 100 unsaturated bright pixels; its "
                               "exposure ratio is undefined. Leave this pair out.")
    bright = bright_linear(pair.bright, tone_curve)[unsaturated].mean(axis=0)
    dark = linear(pair.dark)[unsaturated].mean(axis=0)
    if bright.min() < MIN_MEAN_LEVEL or dark.min() <= 0:
        raise CalibrationError(f"Pair {pair.id}: a channel is black in the bright or the dark "
                               f"image (linear means {bright} / {dark}); leave this pair out.")
    return dark / bright


def quantisation_variance(dark):
    """Variance of 8-bit rounding in linear units at each pixel's code: float64 [H, W, 3]."""
    code = np.clip(np.round(dark), 0.0, 255.0)
    upper = linear(np.minimum(code + 0.5, 255.0))
    lower = linear(np.maximum(code - 0.5, 0.0))
    return (upper - lower) ** 2 / 12.0


@functools.lru_cache(maxsize=None)
def residual_factors(bayer, noise_blur):
    """Fraction of the noise variance the high-pass residual keeps, per channel: float64 [3].

    Measured on flat fields of unit-variance noise drawn through `simulation_isp`'s noise path
    (`bayer`, `noise_blur`), so the noise level function reads raw variances whatever the path.
    The same estimator as `noise_level_bins` (`robust_variance`).
    """
    isp = simulation_isp.IspParams(np.zeros(3), np.zeros((3, 3)), np.zeros(3), np.ones(3),
                                   bayer=bool(bayer), noise_blur=float(noise_blur))
    count, size = FACTOR_FIELD
    field = simulation_isp.add_sensor_noise(np.zeros((count, size, size, 3), np.float32),
                                            np.zeros((count, 3), np.float32), np.ones(3), isp,
                                            seed=[17, 29]).numpy()
    residual = np.stack([noise.high_pass(image) for image in field])[:, 4:-4, 4:-4]
    parity = np.broadcast_to(bayer_parity(size)[4:-4, 4:-4], residual.shape[:3])
    return np.array([robust_variance(residual[..., c], parity) for c in range(3)])


def bayer_parity(height, width=None):
    """The RGGB site class (2 * row parity + column parity) of each pixel: int [H, W] in 0..3."""
    rows, cols = np.mgrid[0:height, 0:(width or height)]
    return 2 * (rows % 2) + cols % 2


def robust_variance(residual, parity):
    """Mean over the 4 Bayer site classes of median(r^2) / CHI2_MEDIAN: float.

    The median resists image texture; per site class because after a demosaic the residual's
    variance differs between sensed and interpolated sites, and the median of such a mixture
    is not its mean. `residual` and `parity` (`bayer_parity`) are matching arrays.
    """
    return float(np.mean([np.median(residual[parity == k] ** 2) for k in range(4)
                          if np.any(parity == k)]) / CHI2_MEDIAN)


def noise_level_bins(pair):
    """The high-pass residual's variance per linear level and channel of a pair's dark image.

    Returns:
      list of 3 (one per channel) float64 arrays [bins, 3]: mean linear level x, residual
      variance minus the i.i.d. quantisation share (`quantisation_variance` times the i.i.d.
      residual factor), and the least-squares weight n / variance^2. Bins with fewer than
      `MIN_BIN_PIXELS` pixels or clipped at 0 are left out.
    """
    dark = noise.central_crop(pair.dark, NOISE_CROP)
    dark_linear = linear(dark)
    residual = noise.high_pass(dark_linear)
    level = noise.noise_level(dark_linear)
    mask = noise.noise_mask(dark)
    quantisation = quantisation_variance(dark) * residual_factors(False, 0.0)
    index = np.digitize(level, LEVEL_EDGES) - 1
    parity = bayer_parity(*dark.shape[:2])
    bins = []
    for channel in range(3):
        rows = []
        for k in range(len(LEVEL_EDGES) - 1):
            chosen = mask[..., channel] & (index[..., channel] == k)
            count = int(chosen.sum())
            if count < MIN_BIN_PIXELS or np.mean(dark[..., channel][chosen] < 0.5) \
                    > MAX_ZERO_FRACTION:
                continue
            variance = robust_variance(residual[..., channel][chosen], parity[chosen])
            rows.append((level[..., channel][chosen].mean(),
                         variance - quantisation[..., channel][chosen].mean(),
                         count / max(variance, 1e-20) ** 2))
        bins.append(np.asarray(rows, np.float64).reshape(-1, 3))
    return bins


def fit_noise_level(bins, pair_id):
    """Residual variance = shot * x + read per channel, non-negative weighted least squares.

    Args:
      bins: `noise_level_bins` output.
      pair_id: for the error message.
    Returns:
      float64 [3, 2]: per channel (shot slope, read variance) of the residual (divide by
      `residual_factors` for the raw noise).
    """
    fitted = np.zeros((3, 2))
    for channel, rows in enumerate(bins):
        if len(rows) < 2:
            raise CalibrationError(f"Pair {pair_id}: channel {'RGB'[channel]} has {len(rows)} "
                                   "usable intensity levels (unclipped, enough pixels); the noise "
                                   "level function needs 2. Use pairs with brighter dark images "
                                   "or leave this pair out.")
        root = np.sqrt(rows[:, 2])
        design = np.stack([rows[:, 0], np.ones(len(rows))], axis=1) * root[:, None]
        fitted[channel], _ = optimize.nnls(design, rows[:, 1] * root)
    return fitted


def measure_pair(pair, tone_curve=None):
    """A pair's exposure ratio [3], residual noise level function [3, 2] (see above) and
    per-channel neighbour correlation [3]."""
    return {"id": pair.id, "exposure": exposure_ratio(pair, tone_curve),
            "nlf": fit_noise_level(noise_level_bins(pair), pair.id),
            "corr": report.neighbour_correlation(pair.dark, noise.noise_mask(pair.dark),
                                                 per_channel=True)}


def pool(measured, bayer, noise_blur):
    """IspParams from per-pair measurements on a noise path, and each pair's shot scale [P].

    Shot gain per channel: geometric mean over pairs (pairs without shot noise left out); read
    noise: median; the shot scale of a pair: geometric mean over channels of its gain / pooled.
    """
    factors = residual_factors(bool(bayer), float(noise_blur))
    gains = np.stack([m["nlf"][:, 0] / factors for m in measured])  # [P, 3]
    reads = np.stack([m["nlf"][:, 1] / factors for m in measured])
    positive = gains > 0
    shot_gain = np.array([np.exp(np.mean(np.log(gains[positive[:, c], c])))
                          if positive[:, c].any() else 0.0 for c in range(3)])
    scales = shot_scales(gains, shot_gain)
    log_exposure = np.log(np.stack([m["exposure"] for m in measured]))
    isp = simulation_isp.IspParams(
        log_exposure_mean=log_exposure.mean(axis=0),
        log_exposure_cov=(np.cov(log_exposure, rowvar=False) if len(measured) > 1
                          else np.zeros((3, 3))),
        shot_gain=shot_gain, read_noise=np.sqrt(np.median(reads, axis=0)),
        log_shot_gain_std=float(np.std(np.log(scales), ddof=1)) if len(measured) > 1 else 0.0,
        bayer=bool(bayer), noise_blur=float(noise_blur))
    return isp, scales


def shot_scales(gains, shot_gain):
    """Per-pair shot scale: geometric mean over channels of gains [P, 3] / shot_gain [3]."""
    usable = (gains > 0) & (shot_gain > 0)
    ratio = np.where(usable, np.log(np.maximum(gains, 1e-30) / np.maximum(shot_gain, 1e-30)), 0.0)
    return np.exp(ratio.sum(axis=1) / np.maximum(usable.sum(axis=1), 1))


def own_params(measured, scales):
    """Rows float32 [4] (exposure_r, exposure_g, exposure_b, shot_scale) of measured pairs."""
    return {m["id"]: np.append(m["exposure"], scale).astype(np.float32)
            for m, scale in zip(measured, scales)}


def choose_noise_path(pairs, measured, *, seed=0, paths=NOISE_PATHS, tone_curve=None):
    """The noise path whose simulated neighbour correlation is closest to the real pairs'.

    Returns:
      ((bayer, noise_blur), candidates): candidates a list of dicts (bayer, noise_blur, corr
      and corr_real: the mean simulated and real per-channel correlation [3] over `pairs`),
      `paths` order.
    """
    real = np.mean([m["corr"] for m in measured], axis=0)
    candidates = []
    for bayer, noise_blur in paths:
        isp, scales = pool(measured, bayer, noise_blur)
        preset = simulation.SimulationPreset("candidate", None, None, quantize=True,
                                             tone_curve=tone_curve,
                                             model=simulation_isp.ISP_MODEL, isp=isp)
        params = own_params(measured, scales)
        corrs = []
        for index, pair in enumerate(pairs):
            bright = noise.central_crop(pair.bright, NOISE_CROP)
            dark = report.simulate_pair(preset, bright, params[pair.id], seed=seed + index)
            corrs.append(report.neighbour_correlation(dark, noise.noise_mask(dark),
                                                      per_channel=True))
        candidates.append({"bayer": bool(bayer), "noise_blur": float(noise_blur),
                           "corr": np.mean(corrs, axis=0).tolist(), "corr_real": real.tolist()})
    best = min(candidates, key=lambda c: float(np.sum(np.subtract(c["corr"], real) ** 2)))
    return (best["bayer"], best["noise_blur"]), candidates


def _per_pair_json(measured, isp, scales):
    """JSON rows of per-pair measurements, in raw units of the chosen noise path."""
    factors = residual_factors(isp.bayer, isp.noise_blur)
    return [{"id": m["id"], "exposure_ratio": m["exposure"].tolist(),
             "shot_gain": (m["nlf"][:, 0] / factors).tolist(),
             "read_noise": np.sqrt(m["nlf"][:, 1] / factors).tolist(),
             "shot_scale": float(scale), "corr": np.asarray(m["corr"]).tolist()}
            for m, scale in zip(measured, scales)]


def _measure_all(pairs, label, say, tone_curve):
    """measure_pair over pairs with one progress line each.

    A pair whose noise cannot be measured (a channel too dark or clipped at every level: one
    frame of a random 10% draw can be) is left out with its reason instead of ending the fit.
    Returns (measurements, the pairs measured, [(id, reason)] of the pairs left out).
    """
    measured, kept, skipped = [], [], []
    for index, pair in enumerate(pairs):
        try:
            measured.append(measure_pair(pair, tone_curve))
        except CalibrationError as e:
            skipped.append((pair.id, str(e)))
            say(f"  {label} {index + 1}/{len(pairs)} pair {pair.id}: left out ({e})")
            continue
        kept.append(pair)
        say(f"  {label} {index + 1}/{len(pairs)} pair {pair.id}: exposure "
            + " ".join(f"{v:.4g}" for v in measured[-1]["exposure"])
            + "  corr " + "/".join(f"{v:.3f}" for v in measured[-1]["corr"]))
    return measured, kept, skipped


def calibrate_isp(fit_pairs, *, holdout_pairs=(), tone_curve=False, draws=4, seed=0, source="",
                  progress=print, paths=NOISE_PATHS):
    """Fit an ISP-model preset on `fit_pairs`; report its fidelity on `holdout_pairs`.

    Args:
      fit_pairs, holdout_pairs: lists of Pair (disjoint).
      tone_curve: if True, the bright images' linear light is a tone curve fitted on
        `fit_pairs` (`fit_bright_tone_curve`), which the preset carries; else inverse sRGB.
      draws: parameter draws per held-out pair for the `drawn_noisy` fidelity condition.
      seed: seed of the simulations (path choice, fidelity).
      source: where the pairs came from (provenance).
      progress: callable for progress lines (None to stay quiet).
      paths: candidate (bayer, noise_blur) noise paths (`choose_noise_path`).
    Returns:
      (preset, rows): the SimulationPreset (model "isp"; its `extra` holds the per-pair
      measurements, the noise-path candidates, the fidelity table and the pairs `left_out` of
      the noise and exposure-ratio measurements with the reason) and the fidelity rows.
    Raises:
      CalibrationError: fewer than MIN_FIT_PAIRS fit pairs have a measurable noise level.
    """
    say = progress or (lambda *_: None)
    curve = fit_bright_tone_curve(fit_pairs) if tone_curve else None
    if curve is not None:
        say("  bright tone curve (G, linear x 255): " + ", ".join(
            f"{v}->{curve[1, v]:.1f}" for v in (32, 64, 128, 192, 224, 255)))
    measured, noise_pairs, skipped = _measure_all(fit_pairs, "fit", say, curve)
    if len(noise_pairs) < MIN_FIT_PAIRS:
        raise CalibrationError(
            f"Only {len(noise_pairs)} of {len(fit_pairs)} pairs have a measurable noise level "
            f"function; the ISP model needs {MIN_FIT_PAIRS}. Left out: "
            + "; ".join(reason for _, reason in skipped))
    (bayer, noise_blur), candidates = choose_noise_path(noise_pairs, measured, seed=seed,
                                                        paths=paths, tone_curve=curve)

    def triple(values):
        return "/".join(f"{v:.3f}" for v in values)

    say(f"  neighbour correlation R/G/B real {triple(candidates[0]['corr_real'])}; simulated "
        + ", ".join(f"{'bayer' if c['bayer'] else 'iid'}+blur {c['noise_blur']:g}: "
                    f"{triple(c['corr'])}" for c in candidates)
        + f" -> {'bayer' if bayer else 'iid'}, noise_blur {noise_blur:g}")
    isp, scales = pool(measured, bayer, noise_blur)
    preset = simulation.SimulationPreset(
        name="calibrated-isp" + ("+tone" if tone_curve else ""), mean=None, cov=None,
        quantize=True, model=simulation_isp.ISP_MODEL, isp=isp, tone_curve=curve,
        exposure_curve=curves.fit_dark_to_bright_curve(fit_pairs),
        provenance={"method": "isp", "source": str(source),
                    "tone_curve": ("bright linear light fitted on the fit pairs "
                                   "(fit_bright_tone_curve)" if tone_curve else "sRGB"),
                    "fit_ids": [pair.id for pair in fit_pairs],
                    "holdout_ids": [pair.id for pair in holdout_pairs],
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds")})
    holdout, holdout_pairs, holdout_skipped = _measure_all(holdout_pairs, "holdout", say, curve)
    holdout_scales = shot_scales(np.stack([m["nlf"][:, 0] / residual_factors(bayer, noise_blur)
                                           for m in holdout]), isp.shot_gain) if holdout else []
    rows = []
    if holdout_pairs:
        say(f"  fidelity on {len(holdout_pairs)} held-out pairs")
        rows = report.fidelity(holdout_pairs, preset, own_params=own_params(holdout,
                                                                            holdout_scales),
                               draws=draws, seed=seed)
    preset.extra = {
        "description": f"ISP-model simulation calibrated on {len(fit_pairs)} real pairs"
                       + (f" ({len(skipped)} left out of the noise and exposure fit)."
                          if skipped else "."),
        "per_pair": _per_pair_json(measured, isp, scales),
        "holdout_fits": _per_pair_json(holdout, isp, holdout_scales),
        "left_out": [{"id": pair_id, "reason": reason}
                     for pair_id, reason in skipped + holdout_skipped],
        "noise_paths": candidates,
        "fidelity": {"rows": report.json_rows(rows),
                     "summary": report.summarise_fidelity(rows) if rows else {}}}
    return preset, rows
