"""Calibrating the paper §3.1 simulation: per-pair fits, their distribution, the preset.

`calibrate` runs the steps: an optional camera tone curve shared by the fit pairs (beyond the
paper; `fit_tone_curve`), the camera's dark-to-bright exposure curve, per-pair parameters
(`estimators.estimate_pair`), for `joint` one gamma exponent shared by all pairs, the
distribution of the parameters (mean, covariance across pairs, as §3.1;
`fit_distribution`, `scale_exposure_spread`), the noise peak, and the fidelity of the
resulting preset on held-out pairs (`report.fidelity`).
"""
import datetime
import functools

import numpy as np

from lowlight_tf import curves
from lowlight_tf import simulation
from lowlight_tf.calibration import estimators
from lowlight_tf.calibration import report
from lowlight_tf.calibration.pairs import CalibrationError, Pair


def fit_tone_curve(pairs, *, iterations=curves.TONE_ITERATIONS,
                   min_pixels=curves.TONE_MIN_PIXELS):
    """`curves.fit_tone_curve` for calibration: unusable pairs raise CalibrationError.

    Args:
      pairs: list of Pair (at least one).
      iterations, min_pixels: see `curves.fit_tone_curve`.
    Returns:
      (curve float64 [3, 256] in [0, 255], non-decreasing; gains float64 [len(pairs), 3]).
    """
    try:
        return curves.fit_tone_curve(pairs, iterations=iterations, min_pixels=min_pixels)
    except curves.CurveError as error:
        raise CalibrationError(str(error)) from None


def fit_distribution(rows):
    """Mean [5] and covariance [5, 5] (ddof 1; zeros for a single row) of per-pair parameters."""
    rows = np.asarray(rows, np.float64)
    mean = rows.mean(axis=0)
    cov = np.cov(rows, rowvar=False) if len(rows) > 1 else np.zeros((5, 5))
    return mean, np.atleast_2d(cov)


def scale_exposure_spread(mean, cov, spread):
    """Scale the spread of the common exposure gain of the colour weights by `spread`.

    The per-pair weights (w_r, w_g, w_b) vary in two ways: a common gain (exposure; the network
    cannot tell it from scene brightness, so a wide one teaches it to pull every output towards
    the bright photos' typical brightness) and chroma (white balance). This shrinks only the
    first: with u the unit vector along the mean weights and P = u u^T on the weight
    coordinates, cov' = A cov A^T with A = I - (1 - spread) P. The mean is unchanged; the result
    is still a covariance (positive semi-definite).

    Args:
      mean: float [5], (black_level, w_r, w_g, w_b, gamma_exponent).
      cov: float [5, 5].
      spread: float >= 0; 1 keeps `cov`, 0 removes the exposure variation (chroma stays).
    Returns:
      float64 [5, 5], the new covariance.
    """
    if not spread >= 0.0:
        raise CalibrationError(f"exposure spread must be >= 0, got {spread}.")
    weights = np.asarray(mean, np.float64)[1:4]
    norm = np.linalg.norm(weights)
    if norm == 0.0:
        raise CalibrationError("The mean colour weights are all 0; there is no exposure axis.")
    unit = weights / norm
    transform = np.eye(5)
    transform[1:4, 1:4] -= (1.0 - spread) * np.outer(unit, unit)
    return transform @ np.asarray(cov, np.float64) @ transform.T


def _tone_mapped(pairs, curve):
    """The pairs with their bright images through `curve` (`curves.tone_map`); as is if None."""
    if curve is None:
        return pairs
    return [Pair(p.id, p.dark, curves.tone_map(p.bright, curve)) for p in pairs]


def _estimate_pairs(pairs, label, *, method, say, pixel_range, quantize, max_pixels, seed,
                    **options):
    """Per-pair fits (`estimators.estimate_pair`) as JSON-ready rows, one progress line each.

    Pairs whose estimate is undefined (no pixels in `pixel_range`) are skipped. Rows hold `id`,
    `params` (list of 5 floats), `noise_peak` (float or None) and, for `joint`, `rms`,
    `score` and `candidates`.
    """
    fits = []
    for index, pair in enumerate(pairs):
        fit = estimators.estimate_pair(pair, method, pixel_range=pixel_range, quantize=quantize,
                                       max_pixels=max_pixels, seed=seed, **options)
        params = np.asarray(fit["params"])
        if not np.all(np.isfinite(params)):
            say(f"  {label} {index + 1}/{len(pairs)} pair {pair.id}: estimate undefined "
                f"(no pixels in {pixel_range}), skipped")
            continue
        row = {"id": pair.id, "params": params.tolist(), "noise_peak": fit["noise_peak"]}
        if "candidates" in fit:
            row.update(rms=fit["rms"], score=fit["score"], candidates=fit["candidates"])
        fits.append(row)
        peak = "" if fit["noise_peak"] is None else f"  peak {fit['noise_peak']:.4g}"
        say(f"  {label} {index + 1}/{len(pairs)} pair {pair.id}: "
            + " ".join(f"{v:.4g}" for v in params) + peak)
    return fits


def _share_exponent(per_pair, say):
    """Give every joint row the candidate of one shared exponent; returns that exponent.

    One exponent for all pairs: the candidate with the lowest total score (-2 log-likelihood of
    brightness and noise, `estimators.fit_joint`) over the pairs, each pair with its own peak,
    black level and weights at that exponent. Per-pair exponents trade off against the peak
    (the peak that matches a given noise level grows steeply with e), so averaging peaks over
    different exponents would be meaningless. Rows' `params`, `noise_peak`, `rms` and `score`
    are replaced in place.
    """
    exponents = [c["exponent"] for c in per_pair[0]["candidates"]]
    totals = [np.sum([row["candidates"][i]["score"] for row in per_pair])
              for i in range(len(exponents))]
    shared = int(np.argmin(totals))
    say("  total score (-2 log L) per exponent: " + ", ".join(
        f"{e:g}: {total:.6g}" for e, total in zip(exponents, totals))
        + f" -> exponent {exponents[shared]:g}")
    for row in per_pair:
        chosen = row["candidates"][shared]
        row.update(params=chosen["params"], noise_peak=chosen["noise_peak"], rms=chosen["rms"],
                   score=chosen["score"])
    return exponents[shared]


def _pooled_noise_peak(method, noise_peak, per_pair):
    """The preset's Poisson peak and how it was chosen: (float, note)."""
    if noise_peak:
        return float(noise_peak), "given"
    if method == "joint":
        peak = float(np.exp(np.mean(np.log([row["noise_peak"] for row in per_pair]))))
        return peak, ("geometric mean of the per-pair peaks at which simulated dark images "
                      "match the real ones' high-pass noise energy")
    return simulation.PAPER_NOISE_PEAK, "the authors' peak (paper method)"


def _provenance(*, method, source, per_pair, holdout_pairs, pixel_range, peak_note, curve,
                exposure_spread):
    """The preset's `provenance` dict: where its numbers came from."""
    return {
        "method": method,
        "source": str(source),
        "fit_ids": [row["id"] for row in per_pair],
        "holdout_ids": [pair.id for pair in holdout_pairs],
        "pixel_range": list(pixel_range),
        "noise_peak": peak_note,
        "tone_curve": ("fitted on the fit pairs (fit_tone_curve)" if curve is not None
                       else "none"),
        "exposure_spread": float(exposure_spread),
        "exposure_curve": "mean bright value per dark value over the fit pairs "
                          "(baselines.fit_dark_to_bright_curve)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def calibrate(fit_pairs, *, method="joint", holdout_pairs=(), noise_peak=None, quantize=None,
              tone_curve=False, exposure_spread=1.0, pixel_range=estimators.PIXEL_RANGE,
              max_pixels=30000, draws=4, seed=0, source="", progress=print):
    """Fit a simulation preset on `fit_pairs`; report fidelity on `holdout_pairs`.

    Args:
      fit_pairs, holdout_pairs: lists of Pair (disjoint).
      method: "paper" or "joint" (per-pair estimator).
      noise_peak: fixed peak, or None: `joint` uses the geometric mean of its per-pair peaks,
        `paper` the authors' peak 10 (its §3.1 estimators have no noise parameter).
      quantize: whether simulated dark images are 8-bit quantised (preset field); None means
        True for `joint` (real dark images are 8-bit) and False for `paper` (as the authors).
      tone_curve: if True, first fit the camera tone curve on `fit_pairs` (`fit_tone_curve`),
        then fit the per-pair parameters on tone-mapped bright images (`joint`: with the black
        level fixed at 0, as the curve holds the camera's floor); the preset carries it.
      exposure_spread: scale of the exposure (common gain) variation of the fitted distribution
        (`scale_exposure_spread`); 1 keeps the spread measured across the fit pairs.
      pixel_range: the paper estimator's pixel range.
      max_pixels, seed: least-squares subsample size and seed.
      draws: parameter draws per held-out pair for the `drawn_noisy` fidelity condition.
      source: description of where the pairs came from (provenance).
      progress: callable for progress lines (None to stay quiet).
    Returns:
      (preset, rows): the fitted SimulationPreset (its `extra` holds the per-pair fits and the
      fidelity table, so `simulation.save_preset` writes everything) and the fidelity rows.
    """
    say = progress or (lambda *_: None)
    if quantize is None:
        quantize = method == "joint"
    estimate = functools.partial(_estimate_pairs, method=method, say=say,
                                 pixel_range=pixel_range, quantize=quantize,
                                 max_pixels=max_pixels, seed=seed)
    curve = None
    if tone_curve:
        curve, _ = fit_tone_curve(fit_pairs)  # the fit's own gains are refitted per pair below
        say("  tone curve (G): " + ", ".join(f"{v}->{curve[1, v]:.1f}"
                                             for v in (32, 64, 128, 192, 224, 255)))
    # The camera's expected bright value per dark value (what brightness.anchor_exposure uses to
    # set an output's brightness); from the untouched pairs, before any tone mapping.
    exposure_curve = curves.fit_dark_to_bright_curve(fit_pairs)
    # Per-pair parameters act on the tone-mapped bright image.
    measured_fit = _tone_mapped(fit_pairs, curve)
    measured_holdout = _tone_mapped(holdout_pairs, curve)
    # With a tone curve, the curve holds the camera's floor: a black level subtracted on top
    # crushed shadows to 0 (2-14% of simulated pixels against 0.1-0.4% real), so joint fixes it
    # at 0. The exponent is still fitted (brightness and noise): fixing it at 1 as well matched the
    # histograms better (fidelity 31.1 vs 29.9 dB) but trained a model that transferred worse
    # (RESULTS.md, runs 3 and 4).
    options = {"black_level": 0.0} if curve is not None and method == "joint" else {}
    # The fit pairs share one candidate exponent (`_share_exponent`): no refinement between them.
    per_pair = estimate(measured_fit, "fit", **options,
                        **({"refine": False} if method == "joint" else {}))
    if not per_pair:
        raise CalibrationError("No pair gave a usable estimate; check the pairs and pixel range.")
    if method == "joint":  # held-out pairs are then fitted with the shared exponent only
        options = {**options, "exponents": (_share_exponent(per_pair, say),)}
    mean, cov = fit_distribution([row["params"] for row in per_pair])
    if exposure_spread != 1.0:
        cov = scale_exposure_spread(mean, cov, exposure_spread)
        say(f"  exposure spread scaled by {exposure_spread:g} (chroma spread kept)")
    peak, peak_note = _pooled_noise_peak(method, noise_peak, per_pair)
    holdout_fits = estimate(measured_holdout, "holdout", **options) if holdout_pairs else []
    preset = simulation.SimulationPreset(
        name=f"calibrated-{method}" + ("+tone" if curve is not None else ""), mean=mean, cov=cov,
        noise_peak=peak, quantize=quantize, tone_curve=curve, exposure_curve=exposure_curve,
        provenance=_provenance(method=method, source=source, per_pair=per_pair,
                               holdout_pairs=holdout_pairs, pixel_range=pixel_range,
                               peak_note=peak_note, curve=curve,
                               exposure_spread=exposure_spread))
    rows = []
    if holdout_pairs:
        say(f"  fidelity on {len(holdout_pairs)} held-out pairs")
        own = {row["id"]: np.asarray(row["params"]) for row in holdout_fits}
        rows = report.fidelity(holdout_pairs, preset, own_params=own, draws=draws, seed=seed)
    preset.extra = {
        "description": (f"Simulation parameters calibrated with the {method!r} method on "
                        f"{len(per_pair)} real pairs"
                        + (", after a fitted camera tone curve." if curve is not None else ".")),
        "per_pair": per_pair,
        "holdout_fits": holdout_fits,
        "fidelity": {"rows": report.json_rows(rows),
                     "summary": report.summarise_fidelity(rows) if rows else {}},
    }
    return preset, rows
