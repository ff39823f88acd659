"""Fidelity of a simulation to real dark images (our check of paper §3.1's simulation).

On (held-out) real pairs, simulated dark images are compared with the real ones: PSNR and the
per-channel mean and std of the real vs the simulated image, plus the high-pass noise level
(`noise.noise_energy`) in total and per channel, and the noise's spatial correlation
(`neighbour_correlation` of the high-pass residual), for each pair's own fitted parameters
(noise-free and noisy), the preset's mean (median for the ISP model), and draws from the
preset's distribution. Either simulation model (`simulation_isp`'s or the paper's composite)
is reported the same way. Images are NumPy float32 [H, W, 3] in [0, 255].
"""
import math

import numpy as np

from lowlight_tf import metrics
from lowlight_tf import simulation_isp
from lowlight_tf.calibration import noise


def channel_noise(image, mask):
    """High-pass noise std per channel of float [H, W, 3] in [0, 255]: float64 [3] (8-bit units)."""
    residual = noise.high_pass(image)
    return np.sqrt([np.mean(residual[..., c][mask[..., c]] ** 2) for c in range(3)])


def neighbour_correlation(image, mask, *, per_channel=False):
    """Correlation of the high-pass residual with its right and lower neighbour, in [-1, 1].

    For i.i.d. noise the residual x - G_1 * x is anti-correlated (about -0.17); noise that
    went through demosaicing or denoising is positively correlated. Averaged over both
    directions and the channels (or per channel: float64 [3]); pixels outside `mask` (bool
    [H, W, 3]) do not count.
    """
    residual = np.where(mask, noise.high_pass(image), 0.0)
    axes = (0, 1) if per_channel else None
    products = (np.sum(residual[:, :-1] * residual[:, 1:], axis=axes)
                + np.sum(residual[:-1] * residual[1:], axis=axes))
    energy = np.sum(residual[:, :-1] ** 2, axis=axes) + np.sum(residual[:-1] ** 2, axis=axes)
    correlation = products / np.maximum(energy, 1e-12)
    return correlation if per_channel else float(correlation)


def image_statistics(image, mask):
    """Per-channel mean [3], std [3], high-pass noise std (total and per channel [3]) and the
    residual's neighbour correlation of float [H, W, 3] in [0, 255]."""
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    return {"mean": pixels.mean(0).tolist(), "std": pixels.std(0).tolist(),
            "noise": math.sqrt(noise.noise_energy(image, mask)),
            "noise_rgb": channel_noise(image, mask).tolist(),
            "corr": neighbour_correlation(image, mask)}


def simulate_pair(preset, bright, params, *, seed, noisy=True):
    """Simulate one dark image with a preset's model and fixed parameters.

    Args:
      preset: simulation.SimulationPreset (model "paper_composite" or "isp").
      bright: float [H, W, 3] in [0, 255].
      params: float [5] (composite) or [4] (ISP, `simulation_isp.ISP_PARAMETER_NAMES`).
      seed: int; noisy: False leaves the noise out (quantised like the preset all the same).
    Returns:
      float32 [H, W, 3] in [0, 255].
    """
    if preset.model == simulation_isp.ISP_MODEL:
        return simulation_isp.simulate_isp(
            np.asarray(bright, np.float32)[None], np.asarray(params, np.float32)[None],
            preset.isp, seed=[seed, 0], quantize=preset.quantize, noise=noisy,
            tone_curve=preset.tone_curve).numpy()[0]
    if not noisy:
        return noise.simulate_one(bright, params, seed=seed, steps=("bl", "cd", "gc"),
                                  quantize=preset.quantize, tone_curve=preset.tone_curve)
    return noise.simulate_one(bright, params, seed=seed, noise_peak=preset.noise_peak,
                              quantize=preset.quantize, tone_curve=preset.tone_curve)


def central_params(preset):
    """The preset's central parameter row: the composite's mean, the ISP model's median."""
    if preset.model == simulation_isp.ISP_MODEL:
        return simulation_isp.median_params(preset.isp)
    return preset.mean


def _condition_row(pair, condition, simulated_images, mask):
    """Average metrics of one or more simulated images of one pair against its real dark."""
    stats = [image_statistics(image, mask) for image in simulated_images]
    return {
        "id": pair.id,
        "condition": condition,
        "psnr": float(np.mean([metrics.psnr_float64(pair.dark, image)
                               for image in simulated_images])),
        "mean": np.mean([s["mean"] for s in stats], 0).tolist(),
        "std": np.mean([s["std"] for s in stats], 0).tolist(),
        "noise": float(np.mean([s["noise"] for s in stats])),
        "noise_rgb": np.mean([s["noise_rgb"] for s in stats], 0).tolist(),
        "corr": float(np.mean([s["corr"] for s in stats])),
    }


def fidelity(pairs, preset, *, own_params=None, draws=4, seed=0):
    """Compare real dark images with simulated ones on (held-out) pairs.

    Conditions per pair: `real` (the real dark image's own statistics); with `own_params`
    (each pair's own fit): `own_clean` (noise-free) and `own_noisy`; always `mean_noisy` (the
    preset's central parameters, `central_params`) and `drawn_noisy` (averaged over `draws`
    parameter draws from the preset). Every condition uses the preset's model, noise and
    quantisation (`simulate_pair`); for the composite also its tone curve, if any (own
    parameters must then be fitted on tone-mapped brights).

    Args:
      pairs: list of Pair.
      preset: simulation.SimulationPreset.
      own_params: dict id -> float [5] ([4] for the ISP model), or None.
    Returns:
      list of row dicts (id, condition, psnr, mean [3], std [3], noise, noise_rgb [3], corr).
    """
    rows = []
    for index, pair in enumerate(pairs):
        own = None if own_params is None else own_params.get(pair.id)
        rows += _pair_rows(pair, preset, own, draws=draws, seed=seed, index=index)
    return rows


def _pair_rows(pair, preset, own, *, draws, seed, index):
    """The fidelity rows of one pair (see `fidelity`); `own` its own parameters or None."""
    mask = noise.noise_mask(pair.dark)
    rows = [{"id": pair.id, "condition": "real", "psnr": math.nan,
             **image_statistics(pair.dark, mask)}]
    pair_seed = seed * 1000 + index
    conditions = []
    if own is not None:
        conditions += [("own_clean", [simulate_pair(preset, pair.bright, own, seed=pair_seed,
                                                    noisy=False)]),
                       ("own_noisy", [simulate_pair(preset, pair.bright, own, seed=pair_seed)])]
    conditions.append(("mean_noisy", [simulate_pair(preset, pair.bright, central_params(preset),
                                                    seed=pair_seed)]))
    drawn = preset.sample(draws, seed=[seed, 1000 + index]).numpy()
    conditions.append(("drawn_noisy", [
        simulate_pair(preset, pair.bright, params, seed=pair_seed * 100 + k)
        for k, params in enumerate(drawn)]))
    return rows + [_condition_row(pair, name, images, mask) for name, images in conditions]


def summarise_fidelity(rows):
    """Per condition: mean PSNR, mean |Δ channel mean|, mean |Δ channel std|, noise ratio."""
    real = {row["id"]: row for row in rows if row["condition"] == "real"}

    def mean_abs_error(chosen, key):
        return float(np.mean([np.abs(np.subtract(row[key], real[row["id"]][key]))
                              for row in chosen]))

    summary = {}
    for condition in sorted({row["condition"] for row in rows} - {"real"}):
        chosen = [row for row in rows if row["condition"] == condition]
        log_noise_ratios = [np.log(max(row["noise"], 1e-6) / max(real[row["id"]]["noise"], 1e-6))
                            for row in chosen]
        summary[condition] = {
            "pairs": len(chosen),
            "psnr": float(np.mean([row["psnr"] for row in chosen])),
            "mean_abs_error": mean_abs_error(chosen, "mean"),
            "std_abs_error": mean_abs_error(chosen, "std"),
            "noise_ratio": float(np.exp(np.mean(log_noise_ratios))),
            "noise_rgb_ratio": _noise_rgb_ratio(chosen, real),
            "corr": float(np.mean([row["corr"] for row in chosen])),
            "corr_real": float(np.mean([real[row["id"]]["corr"] for row in chosen])),
        }
    return summary


def _noise_rgb_ratio(chosen, real):
    """Geometric mean over pairs of the simulated / real high-pass noise per channel: [3]."""
    ratios = [np.log(np.maximum(row["noise_rgb"], 1e-6)
                     / np.maximum(real[row["id"]]["noise_rgb"], 1e-6)) for row in chosen]
    return np.exp(np.mean(ratios, axis=0)).tolist()


def format_fidelity_table(rows, title=""):
    """Render fidelity rows and their summary as a fixed-width text table."""
    def triple(values):
        return "/".join(f"{v:5.1f}" for v in values)

    lines = [title] if title else []
    lines.append(f"{'pair':>8} {'condition':<12} {'PSNR':>6}  {'mean R/G/B':<17}  "
                 f"{'std R/G/B':<17}  {'noise':>5}  {'noise R/G/B':<14}  {'corr':>5}")
    for row in rows:
        value = "" if math.isnan(row["psnr"]) else f"{row['psnr']:6.2f}"
        noise_rgb = "/".join(f"{v:4.2f}" for v in row["noise_rgb"])
        lines.append(f"{row['id']:>8} {row['condition']:<12} {value:>6}  {triple(row['mean'])}  "
                     f"{triple(row['std'])}  {row['noise']:5.2f}  {noise_rgb:<14}  "
                     f"{row['corr']:5.2f}")
    lines.append("summary (over pairs): PSNR dB | mean |Δmean| | mean |Δstd| | noise sim/real | "
                 "noise R/G/B sim/real | corr sim (real)")
    for condition, values in summarise_fidelity(rows).items():
        ratios = "/".join(f"{v:4.2f}" for v in values["noise_rgb_ratio"])
        lines.append(f"  {condition:<12} {values['psnr']:6.2f} | {values['mean_abs_error']:6.2f} | "
                     f"{values['std_abs_error']:6.2f} | {values['noise_ratio']:5.2f} | "
                     f"{ratios} | {values['corr']:5.2f} ({values['corr_real']:5.2f})")
    return "\n".join(lines)


def json_rows(rows):
    """Fidelity rows with NaN replaced by None (valid JSON)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in rows]


def fidelity_report(preset, pairs, *, draws=4, seed=0):
    """Fidelity rows and summary of an existing preset (e.g. `paper`) on `pairs`."""
    rows = fidelity(pairs, preset, draws=draws, seed=seed)
    report = {"preset": preset.name, "rows": json_rows(rows),
              "summary": summarise_fidelity(rows)}
    return report, rows
