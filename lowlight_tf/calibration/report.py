"""Fidelity of a simulation to real dark images (our check of paper §3.1's simulation).

On (held-out) real pairs, simulated dark images are compared with the real ones: PSNR and the
per-channel mean and std of the real vs the simulated image, plus the high-pass noise level
(`noise.noise_energy`), for each pair's own fitted parameters (noise-free and noisy), the
preset's mean, and draws from the preset's distribution. Images are NumPy float32 [H, W, 3] in
[0, 255].
"""
import math

import numpy as np

from lowlight_tf import metrics
from lowlight_tf.calibration import noise


def image_statistics(image, mask):
    """Per-channel mean [3], std [3] and high-pass noise std of float [H, W, 3] in [0, 255]."""
    pixels = np.asarray(image, np.float64).reshape(-1, 3)
    return {"mean": pixels.mean(0).tolist(), "std": pixels.std(0).tolist(),
            "noise": math.sqrt(noise.noise_energy(image, mask))}


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
    }


def fidelity(pairs, preset, *, own_params=None, draws=4, seed=0):
    """Compare real dark images with simulated ones on (held-out) pairs.

    Conditions per pair: `real` (the real dark image's own statistics); with `own_params`
    (each pair's own fit): `own_clean` (noise-free composite) and `own_noisy`; always
    `mean_noisy` (the preset's mean parameters) and `drawn_noisy` (averaged over `draws`
    parameter draws from the preset). Noisy conditions use the preset's noise peak and
    quantisation; the noise-free one is quantised like the preset too. Every condition applies
    the preset's tone curve, if any (own parameters must then be fitted on tone-mapped brights).

    Args:
      pairs: list of Pair.
      preset: simulation.SimulationPreset.
      own_params: dict id -> float [5], or None.
    Returns:
      list of row dicts (id, condition, psnr, mean [3], std [3], noise).
    """
    rows = []
    for index, pair in enumerate(pairs):
        mask = noise.noise_mask(pair.dark)
        real = image_statistics(pair.dark, mask)
        rows.append({"id": pair.id, "condition": "real", "psnr": math.nan, **real})
        pair_seed = seed * 1000 + index
        noisy = dict(noise_peak=preset.noise_peak, quantize=preset.quantize,
                     tone_curve=preset.tone_curve)
        if own_params is not None and pair.id in own_params:
            params = own_params[pair.id]
            rows.append(_condition_row(pair, "own_clean", [noise.simulate_one(
                pair.bright, params, seed=pair_seed, steps=("bl", "cd", "gc"),
                quantize=preset.quantize, tone_curve=preset.tone_curve)], mask))
            rows.append(_condition_row(pair, "own_noisy", [noise.simulate_one(
                pair.bright, params, seed=pair_seed, **noisy)], mask))
        rows.append(_condition_row(pair, "mean_noisy", [noise.simulate_one(
            pair.bright, preset.mean, seed=pair_seed, **noisy)], mask))
        drawn = preset.sample(draws, seed=[seed, 1000 + index]).numpy()
        rows.append(_condition_row(pair, "drawn_noisy", [
            noise.simulate_one(pair.bright, params, seed=pair_seed * 100 + k, **noisy)
            for k, params in enumerate(drawn)], mask))
    return rows


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
        }
    return summary


def format_fidelity_table(rows, title=""):
    """Render fidelity rows and their summary as a fixed-width text table."""
    def triple(values):
        return "/".join(f"{v:5.1f}" for v in values)

    lines = [title] if title else []
    lines.append(f"{'pair':>8} {'condition':<12} {'PSNR':>6}  {'mean R/G/B':<17}  "
                 f"{'std R/G/B':<17}  {'noise':>5}")
    for row in rows:
        value = "" if math.isnan(row["psnr"]) else f"{row['psnr']:6.2f}"
        lines.append(f"{row['id']:>8} {row['condition']:<12} {value:>6}  {triple(row['mean'])}  "
                     f"{triple(row['std'])}  {row['noise']:5.2f}")
    lines.append("summary (over pairs): PSNR dB | mean |Δmean| | mean |Δstd| | noise sim/real")
    for condition, values in summarise_fidelity(rows).items():
        lines.append(f"  {condition:<12} {values['psnr']:6.2f} | {values['mean_abs_error']:6.2f} | "
                     f"{values['std_abs_error']:6.2f} | {values['noise_ratio']:5.2f}")
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
