"""The reproduce run's report (lowlight_tf.reproduce): Table 1 in Markdown, paired differences,
the device-subset draws, the simulation's fidelity, training curves and panel folders.

`build_report` turns the stage results into the report dict (`summary.json`); `write_report`
writes `report.md`, `summary.json` and `curves.png` into the work_dir.
"""
import dataclasses
import os

import numpy as np
from matplotlib.figure import Figure

from lowlight_tf import comparison
from lowlight_tf import evaluation_report
from lowlight_tf import evaluation_scoring as scoring
from lowlight_tf import files
from lowlight_tf.reproduce_run import draw_entry, model_row, write_json

# Table 1 of the paper, for context only (their data: RAISE 6k and SID Sony; not comparable).
PAPER_ROWS = (
    ("Paper: ours (simulated)", "RAISE 6k (simulated)", "6000", "100 / -", 15.73),
    ("Paper: ours, zero-shot", "SID", "0", "100 / 0", 6.33),
    ("Paper: ours, transfer", "SID", "200", "100 / 250", 10.19),
    ("Paper: SID model (Chen et al.)", "SID", "2000", "4000 / -", 28.88),
)


def _table_rows(results):
    """Model rows in stage order, then each dataset's baselines once per input gain."""
    rows, baselines, seen = [], [], set()
    for name in [k for k in results if "rows" in results[k]]:
        for row in results[name]["rows"]:
            if row.get("kind") == "baseline":
                key = (row["method"], row["dataset"], row.get("gain", 1.0))
                if key not in seen:
                    seen.add(key)
                    baselines.append(row)
            else:
                rows.append(row)
    return rows + baselines


# Paired comparisons in the report, (A, B, row suffix) by training stage: each on the images
# both stages' evaluations share, with a scene-bootstrap 95% interval (lowlight_tf.comparison).
# The suffix picks the model's own rows ("") or its calibrated-exposure rows (--device_exposure;
# skipped when the run has none).
COMPARISONS = (
    ("transfer_target", "pretrain", ""),  # issue 6 target 2: same-camera transfer vs zero-shot
    ("transfer_target", "scratch_target", ""),  # issue 16: ... vs scratch on the same pairs
    ("transfer_device", "full_device", ""),  # the paper's 10% transfer vs full supervision
    ("transfer_device", "scratch_device", ""),  # ... vs scratch on the same 10%
    # ... both with the brightness of the device's exposure curve (issue 16)
    ("transfer_device", "scratch_device", scoring.CALIBRATED_EXPOSURE),
    ("finetune_all_device", "scratch_device", ""),
    ("full_device", "scratch_device", ""),
)


def _comparisons(results):
    """[{a, b, dataset(s), metric, mean, low, high, ...}] for the COMPARISONS both evaluated."""
    found = []
    for stage_a, stage_b, suffix in COMPARISONS:
        records = [results.get(f"eval_{stage}") for stage in (stage_a, stage_b)]
        rows = [record and model_row(record, suffix) for record in records]
        if not all(rows):
            continue
        (label_a, a), (label_b, b) = (
            comparison.read_per_image(record["output_dir"], method=row["method"])
            for record, row in zip(records, rows))
        result = comparison.paired_difference(a, b)
        found.append({"a": label_a, "b": label_b,
                      "datasets": sorted({d for d, _ in set(a) & set(b)}),
                      **dataclasses.asdict(result)})
    return found


def format_comparisons(comparisons):
    """Markdown bullet lines of _comparisons' results."""
    return [f"- {', '.join(c['datasets'])}: " + comparison.format_difference(
        c["a"], c["b"], comparison.PairedDifference(
            **{f.name: c[f.name] for f in dataclasses.fields(comparison.PairedDifference)}))
        for c in comparisons]


def _subset_summary(results, config):
    """Draw 0 (the main rows) and the extra draws of the device subset, with each draw's paired
    transfer - scratch margin and the mean and standard deviation over draws; {} without draws.
    With --device_exposure each draw also has "calibrated": the same for the rows with the
    device's calibrated exposure."""
    extra = results.get("device_subsets", {}).get("draws", [])
    main = [results.get(f"eval_{stage}") for stage in ("transfer_device", "scratch_device")]
    if not extra or not all(main):
        return {}
    first = draw_entry(0, config.train.seed, dict(zip(("transfer", "scratch"), main)),
                       scoring.CALIBRATED_EXPOSURE)
    draws = [{"draw": entry["draw"], "seed": entry["seed"],
              **_draw_margin(entry, entry),
              **({"calibrated": _draw_margin(entry, entry["calibrated"])}
                 if "calibrated" in entry else {})}
             for entry in [first, *extra]]
    summary = {"fraction": config.device_fraction, "draws": draws, **_spread_over(draws)}
    if all("calibrated" in d for d in draws):
        summary["calibrated"] = _spread_over([d["calibrated"] for d in draws])
    return summary


def _paired(entry, rows, kind_a, kind_b):
    """The paired difference (as a dict) of one draw's rows[kind_a] - rows[kind_b], on the
    per-image scores in entry["output_dirs"]."""
    a, b = (comparison.read_per_image(entry["output_dirs"][kind], method=rows[kind]["method"])[1]
            for kind in (kind_a, kind_b))
    return dataclasses.asdict(comparison.paired_difference(a, b))


def _scores(rows, kinds):
    """{kind: {"psnr", "ssim"}} of rows[kind] for each kind."""
    return {kind: {k: rows[kind][k] for k in ("psnr", "ssim")} for kind in kinds}


def _draw_margin(entry, rows):
    """{"transfer", "scratch": {psnr, ssim}, "margin": paired transfer - scratch} of one draw,
    for the rows {"transfer": row, "scratch": row} (the models' own or calibrated ones)."""
    return {**_scores(rows, ("transfer", "scratch")),
            "margin": _paired(entry, rows, "transfer", "scratch")}


def _spread_over(draws):
    """Mean, standard deviation, min and max over draws of transfer, scratch and the margin."""
    spread = comparison.spread
    return {"transfer_psnr": spread([d["transfer"]["psnr"] for d in draws]),
            "scratch_psnr": spread([d["scratch"]["psnr"] for d in draws]),
            "margin_psnr": spread([d["margin"]["mean"] for d in draws])}


def format_subsets(subsets):
    """Markdown lines of _subset_summary: a row per draw, then mean ± standard deviation (and
    the same for the calibrated-exposure rows when the run has them)."""
    if not subsets:
        return []
    fraction = f"{subsets['fraction']:.0%}"
    lines = []
    for title, key in (("", None), (" with the device's calibrated exposure", "calibrated")):
        if key and key not in subsets:
            continue
        lines += [f"| draw (seed) | transfer, last two blocks, {fraction}{title}: PSNR / SSIM "
                  f"| scratch, {fraction}{title}: PSNR / SSIM | transfer - scratch, PSNR (95% "
                  "CI over scenes) |", "|---|---|---|---|"]
        for draw in subsets["draws"]:
            d = draw[key] if key else draw
            m = d["margin"]
            lines.append(f"| {draw['draw']} ({draw['seed']}) | {d['transfer']['psnr']:.2f} / "
                         f"{d['transfer']['ssim']:.3f} | {d['scratch']['psnr']:.2f} / "
                         f"{d['scratch']['ssim']:.3f} | {m['mean']:+.2f} ({m['low']:+.2f} to "
                         f"{m['high']:+.2f}) |")
        spreads = subsets[key] if key else subsets
        t, c, m = (spreads[k] for k in ("transfer_psnr", "scratch_psnr", "margin_psnr"))
        lines += ["", f"Over {len(subsets['draws'])} draws{title} (mean ± standard deviation, "
                  f"min to max): transfer {t['mean']:.2f} ± {t['std']:.2f} dB ({t['min']:.2f} "
                  f"to {t['max']:.2f}), scratch {c['mean']:.2f} ± {c['std']:.2f} dB "
                  f"({c['min']:.2f} to {c['max']:.2f}), transfer - scratch {m['mean']:+.2f} ± "
                  f"{m['std']:.2f} dB ({m['min']:+.2f} to {m['max']:+.2f}).", ""]
    return lines[:-1]


# The device adaptation's margins (--device_adaptation_epochs): its transfer against the same
# draw's scratch and paper-transfer rows.
ADAPTATION_MARGINS = (("adapted", "scratch"), ("adapted", "transfer"))


def _adaptation_summary(results):
    """Per draw of the device adaptation: the scores of its zero-shot and transfer rows and of
    the draw's paper transfer and scratch, and the paired margins ADAPTATION_MARGINS; then the
    spread over draws of each score and margin. {} when the run has no adaptation rows."""
    entries = results.get("device_adaptation", {}).get("draws", [])
    if not entries:
        return {}
    kinds = ("zero_shot", "adapted", "transfer", "scratch")
    draws = [{"draw": e["draw"], "seed": e["seed"], **_scores(e, kinds),
              **{f"{a}-{b}": _paired(e, e, a, b) for a, b in ADAPTATION_MARGINS}}
             for e in entries]
    spreads = {f"{kind}_psnr": comparison.spread([d[kind]["psnr"] for d in draws])
               for kind in kinds}
    for a, b in ADAPTATION_MARGINS:
        margins = [d[f"{a}-{b}"]["mean"] for d in draws]
        spreads[f"{a}-{b}"] = dict(comparison.spread(margins),
                                   draws_ahead=sum(m >= 0.0 for m in margins))
    return {"draws": draws, **spreads}


def format_adaptation(summary):
    """Markdown lines of _adaptation_summary: a row per draw, then the means over draws."""
    if not summary:
        return []
    lines = ["| draw (seed) | adapted, zero-shot | adapted + transfer | transfer (paper) | "
             "scratch | adapted + transfer - scratch | adapted + transfer - transfer |",
             "|---|---|---|---|---|---|---|"]

    def margin(m):
        return f"{m['mean']:+.2f} ({m['low']:+.2f} to {m['high']:+.2f})"

    for d in summary["draws"]:
        scores = " | ".join(f"{d[k]['psnr']:.2f} / {d[k]['ssim']:.3f}"
                            for k in ("zero_shot", "adapted", "transfer", "scratch"))
        lines.append(f"| {d['draw']} ({d['seed']}) | {scores} | "
                     + " | ".join(margin(d[f"{a}-{b}"]) for a, b in ADAPTATION_MARGINS) + " |")
    means = " | ".join(f"{summary[f'{k}_psnr']['mean']:.2f}"
                       for k in ("zero_shot", "adapted", "transfer", "scratch"))
    ahead = " | ".join(f"{summary[f'{a}-{b}']['mean']:+.2f} (>= 0 on "
                       f"{summary[f'{a}-{b}']['draws_ahead']} of {len(summary['draws'])})"
                       for a, b in ADAPTATION_MARGINS)
    return lines + [f"| mean PSNR | {means} | {ahead} |"]


def build_report(run, results, specs):
    """The report dict: rows (models then baselines), paired comparisons, the device subset
    draws, calibration, curves, panel folders."""
    return {
        "work_dir": run.work_dir,
        "rows": _table_rows(results),
        "comparisons": _comparisons(results),
        "device_subsets": _subset_summary(results, run.config),
        "device_adaptation": _adaptation_summary(results),
        "calibration": results.get("calibrate", {}),
        "device_calibration": results.get("calibrate_device", {}),
        "histories": {k: v["history"] for k, v in results.items() if "history" in v},
        "panels": [v["output_dir"] + "/panels" for k, v in results.items()
                   if k.startswith("eval_")],
        "datasets": specs,
    }


def format_table(rows, with_paper=True):
    """The Table 1 form of lowlight_tf.evaluation, plus the paper's own rows for context."""
    lines = [evaluation_report.format_table(rows)]
    if with_paper:
        lines += [f"| {method} | {dataset} | {images} | {epochs} | {psnr:.2f} | n/a | n/a | 1 "
                  "| n/a | n/a |" for method, dataset, images, epochs, psnr in PAPER_ROWS]
    return "\n".join(lines)


def format_fidelity(calibration):
    """Markdown table of the calibration's fidelity summary next to the `paper` preset's."""
    lines = ["| parameters | condition | PSNR (dB) | abs. error of channel means | "
             "abs. error of channel stds | noise simulated / real |", "|---|---|---|---|---|---|"]
    for label, key in (("calibrated", "fidelity"), ("paper preset", "fidelity_paper_preset")):
        for condition, row in sorted((calibration.get(key) or {}).items()):
            lines.append(f"| {label} | {condition} | {row['psnr']:.2f} | "
                         f"{row['mean_abs_error']:.2f} | {row['std_abs_error']:.2f} | "
                         f"{row['noise_ratio']:.2f} |")
    return "\n".join(lines)


def plot_curves(histories, path):
    """Training (and validation) loss per epoch of every stage (MAE, plus the SSIM term when
    --ssim_weight > 0), one panel each; returns path."""
    names = [n for n, h in histories.items() if h.get("loss")]
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    # A Figure without pyplot: no global backend or figure registry (Agg renders the PNG).
    fig = Figure(figsize=(4.5 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names):
        history = histories[name]
        epochs = np.arange(1, len(history["loss"]) + 1)
        axis.plot(epochs, history["loss"], label="train loss")
        if history.get("val_loss"):
            axis.plot(epochs[:len(history["val_loss"])], history["val_loss"], label="val loss")
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def write_report(run, report):
    """Write report.md, summary.json and curves.png into the work_dir; print the table."""
    curves = plot_curves(report["histories"], os.path.join(run.work_dir, "curves.png"))
    table = format_table(report["rows"])
    calibration = report["calibration"]
    lines = ["# Reproduction report", "",
             "PSNR is the paper's 8-bit formula 20·log10(255/√MSE) on full images; GT-mean PSNR "
             "scales the prediction's mean to the reference's first and is reported beside it, "
             "never instead of it.", "", table, ""]
    comparisons = format_comparisons(report.get("comparisons", []))
    if comparisons:
        lines += ["## Paired differences", "",
                  "Mean difference of per-image PSNR over the images both rows evaluated, with a "
                  "95% interval from resampling whole scenes (index runs; images of one scene "
                  "are not independent). An interval that contains 0 does not separate the "
                  "two rows (lowlight_tf.comparison).", "", *comparisons, ""]
    subsets = report.get("device_subsets")
    if subsets:
        lines += [f"## The device's {subsets['fraction']:.0%} subset, drawn "
                  f"{len(subsets['draws'])} times (--device_subsets)", "",
                  "Draw 0 is the table's rows; draw k trains on the subset of seed --seed + k "
                  "(the same fraction, other pairs).", "", *format_subsets(subsets), ""]
    adaptation = format_adaptation(report.get("device_adaptation"))
    if adaptation:
        lines += ["## The device adaptation (--device_adaptation_epochs)", "",
                  "Beyond the paper (issue 16): per draw, the ISP simulation fitted on the "
                  "draw's device pairs, the shipped model's pretraining continued on it "
                  "(normalisation off; scored zero-shot), then its last two blocks retrained on "
                  "the same pairs; PSNR / SSIM, and paired margins in PSNR with 95% intervals "
                  "over scenes.", "", *adaptation, ""]
    if calibration:
        lines += ["## Simulation", "",
                  f"Calibrated with `{calibration.get('method')}` on "
                  f"{calibration.get('fit_pairs', 'n/a')} pairs; parameters in "
                  f"`{calibration.get('params')}`. Fidelity on "
                  f"{calibration.get('holdout_pairs', 'n/a')} held-out pairs (real dark image "
                  "against the simulated one):", "", format_fidelity(calibration), ""]
    device = report.get("device_calibration")
    if device:
        lines += ["## Device simulation (--device_calibration)", "",
                  f"Calibrated with `{device.get('method')}` on the device's "
                  f"{device.get('fit_pairs', 'n/a')} transfer pairs; parameters in "
                  f"`{device.get('params')}`. Fidelity on {device.get('holdout_pairs', 'n/a')} "
                  "device test pairs:", "", format_fidelity(device), ""]
    if curves:
        lines += ["## Training curves", "", "![curves](curves.png)", ""]
    lines += ["## Example panels (input | prediction | reference)", ""]
    lines += [f"- `{os.path.relpath(p, run.work_dir)}`" for p in report["panels"]]
    text = "\n".join(lines) + "\n"
    files.write_text(os.path.join(run.work_dir, "report.md"), text)
    write_json(os.path.join(run.work_dir, "summary.json"), report)
    run.say("\n" + "\n".join([table, "", *comparisons])
            + f"\n\nReport: {os.path.join(run.work_dir, 'report.md')}")
