"""The paper's experiment (§4, Table 1) as one resumable run, plus our added rows.

Stages, in order (each writes `WORK_DIR/stages/NAME.json` when it finishes; a second run reuses
finished stages and resumes an interrupted training from its last finished epoch):

  prepare          bright images -> `images` TFRecords; real pairs -> `pairs` TFRecords with
                   scene-disjoint splits (the target camera: `calib` + `val`; the other device:
                   `train` + `test` by index runs).
  calibrate        fit the simulation (§3.1) on the target's calibration pairs only (or use a
                   preset), report its fidelity on the target's validation pairs.
  curve_baseline   the classical bar for zero-shot: the target camera's mean dark->bright curve
                   pooled from the same calibration pairs, applied after a 1-pixel blur, on the
                   target's validation pairs (lowlight_tf.baselines.apply_curve).
  simulated_test   the fixed simulated test set (the paper's simulated RAISE test set).
  pretrain         the U-Net on simulated pairs only (§3.2-3.3).
  eval_pretrain    simulated test set, zero-shot on the target and the device (§3.4).
  transfer_target  last two blocks retrained on the target's calibration pairs.
  calibrate_device, pretrain_device
                   with --device_calibration: the simulation calibrated again on the device's
                   transfer pairs (the same 10%), the device's calibrated-curve baseline, and a
                   second model pretrained on it (then evaluated zero-shot on the device) - the
                   paper's protocol, where the simulation is fitted on the device it transfers
                   to. The device's transfer rows then start from this model.
  transfer_device  last two blocks retrained on 10% of the device's training pairs (§3.4).
  finetune_all_device, scratch_device, full_device
                   our rows on the same data: all layers on the same 10%, from scratch on the same
                   10%, and full supervision on 100% of the device's training pairs.
  device_subsets   with --device_subsets=N > 1: N - 1 more draws of the 10% subset (seed
                   --seed + k), each with its transfer (last two blocks) and scratch rows, so the
                   report can give their mean, spread and paired margin over N draws: which 17
                   pairs a device contributes moves these rows by up to a few dB.
  report           `report.md` (Table 1 form, paired differences of the key rows with
                   scene-bootstrap intervals), `summary.json`, `curves.png`, panels.

Stages whose inputs are not configured (no target or no device pairs) are skipped, so the same
runner drives the embedded-default demo on bright photos alone.
"""
import dataclasses
import json
import os
import time

import numpy as np

from lowlight_tf import simulation
from lowlight_tf.reproduce_config import STAGES, ReproduceConfig
from lowlight_tf.train_config import TrainConfig

# Table 1 of the paper, for context only (their data: RAISE 6k and SID Sony; not comparable).
PAPER_ROWS = (
    ("Paper: ours (simulated)", "RAISE 6k (simulated)", "6000", "100 / -", 15.73),
    ("Paper: ours, zero-shot", "SID", "0", "100 / 0", 6.33),
    ("Paper: ours, transfer", "SID", "200", "100 / 250", 10.19),
    ("Paper: SID model (Chen et al.)", "SID", "2000", "4000 / -", 28.88),
)

class ReproduceError(ValueError):
    """A configuration or input problem; the message says what to do."""


def _no_exposure_curve(preset):
    return ReproduceError(f"--calibrated_exposure needs the target camera's exposure curve, which "
                          f"the preset {preset} lacks; use --calibration=joint or paper "
                          "(calibrated on the target pairs) or a preset written by "
                          "tools/calibrate_simulation.")


def _say(progress, text):
    if progress:
        progress(text)


def _write_json(path, value):
    """Write JSON atomically (a killed run never leaves a half-written stage record)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class _Run:
    """Paths and the stage bookkeeping of one work_dir."""

    def __init__(self, config, progress):
        self.config = config
        self.progress = progress
        self.work_dir = os.path.abspath(config.work_dir)
        self.tfrecords = os.path.join(self.work_dir, "tfrecords")
        self.models = os.path.join(self.work_dir, "models")
        self.evals = os.path.join(self.work_dir, "evaluations")
        self.state_dir = os.path.join(self.work_dir, "stages")

    def stage(self, name, fn):
        """Run `fn()` once: its JSON result is stored and returned on every later run."""
        path = os.path.join(self.state_dir, f"{name}.json")
        if os.path.isfile(path):
            _say(self.progress, f"== [{name}] finished earlier; reusing {path}")
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        _say(self.progress, f"== [{name}] {time.strftime('%H:%M:%S')}")
        started = time.monotonic()
        try:
            result = fn()
        except _user_errors() as error:
            raise ReproduceError(f"stage {name}: {error}") from error
        result["seconds"] = round(time.monotonic() - started, 1)
        _write_json(path, result)
        _say(self.progress, f"== [{name}] done in {result['seconds']:.0f} s")
        return result

    def done(self, name):
        return os.path.isfile(os.path.join(self.state_dir, f"{name}.json"))


def _user_errors():
    """The library's error types that mean bad input or configuration (not a bug)."""
    from data_prep import prepare
    from lowlight_tf import calibration, data, evaluation, simulation, training
    return (prepare.InputError, calibration.CalibrationError, data.DatasetError,
            evaluation.EvaluationError, simulation.PresetError, training.ConfigError)


def _check_config(config):
    unknown = [s for s in config.stages.split(",") if s and s not in STAGES]
    if unknown:
        raise ReproduceError(f"Unknown stage(s) {unknown}; stages are {', '.join(STAGES)}.")
    folders = [("bright_dir", p) for p in config.bright_dir.split(",") if p]
    folders += [("target_pairs", config.target_pairs), ("device_pairs", config.device_pairs)]
    for what, path in folders:
        if path and not os.path.isdir(path):
            raise ReproduceError(f"--{what}={path} is not a folder. Point it at the images (or "
                                 "the folder holding low/ and high/), or leave it empty to skip "
                                 "the stages that need it.")
    if config.target_pairs and not config.target_calib_ids:
        raise ReproduceError("--target_pairs needs --target_calib_ids: the scene-disjoint pairs "
                             "(file stems or ranges such as 4-5,29-30) used for calibration and "
                             "same-camera transfer; the rest validate.")
    if not 0.0 < config.device_fraction <= 1.0:
        raise ReproduceError(f"--device_fraction={config.device_fraction} must lie in (0, 1].")
    if config.device_subsets < 1:
        raise ReproduceError(f"--device_subsets={config.device_subsets} must be at least 1 (the "
                             "main rows' subset).")
    fitted = config.calibration != "none"
    preset = config.train.simulation_params
    if fitted and preset != TrainConfig().simulation_params:
        raise ReproduceError(f"--simulation_params={preset} names a fixed preset, but "
                             f"--calibration={config.calibration} fits one on the target's "
                             "calibration pairs; pass --calibration=none to use the preset.")
    for flag, value, what in (
            ("exposure_spread", config.exposure_spread != 1.0, "scales the calibrated "
             "distribution"),
            ("device_calibration", config.device_calibration, "fits the simulation on the "
             "device's pairs"),
            ("tone_curve", config.tone_curve, "fits a tone curve during calibration")):
        if value and not fitted:
            raise ReproduceError(f"--{flag} {what}, but --calibration=none uses the fixed preset "
                                 f"{preset}; choose --calibration=joint or paper, or drop "
                                 f"--{flag}.")
    if config.calibrated_exposure and not fitted:
        try:
            has_curve = simulation.load_preset(preset).exposure_curve is not None
        except simulation.PresetError as error:
            raise ReproduceError(str(error)) from error
        if not has_curve:
            raise _no_exposure_curve(preset)
    if config.device_calibration and not config.device_pairs:
        raise ReproduceError("--device_calibration needs --device_pairs (the device whose "
                             "transfer pairs calibrate the simulation).")


def _prepare(run):
    """Build every TFRecord dataset the experiment reads; returns their specs."""
    from data_prep import prepare, sample_photos
    config, report = run.config, (lambda line: _say(run.progress, "  " + line))
    specs = {}
    try:
        if config.bright_dir:
            prepare.make_tfrecords("images", output_dir=run.tfrecords, name="bright",
                                   input_dir=config.bright_dir, splits=config.bright_splits,
                                   max_side=config.max_side or None, report=report)
            bright = f"{run.tfrecords}/bright"
        else:
            sample = sample_photos.ensure_sample_datasets(os.path.join(run.work_dir, "sample"),
                                                          report=report)
            bright = f"{sample['output_dir']}/{sample['name']}"
        specs.update(bright_train=f"{bright}:train", bright_val=f"{bright}:val",
                     bright_test=f"{bright}:test")
        if config.target_pairs:
            prepare.make_tfrecords("pairs", output_dir=run.tfrecords, name="target",
                                   input_dir=config.target_pairs, splits="val:1.0",
                                   split_ids=[f"calib:{config.target_calib_ids}"], report=report)
            specs.update(target_calib=f"{run.tfrecords}/target:calib",
                         target_val=f"{run.tfrecords}/target:val")
        if config.device_pairs:
            prepare.make_tfrecords("pairs", output_dir=run.tfrecords, name="device",
                                   input_dir=config.device_pairs, splits=config.device_splits,
                                   split_by="index_run", report=report)
            specs.update(device_train=f"{run.tfrecords}/device:train",
                         device_test=f"{run.tfrecords}/device:test")
    except prepare.InputError as error:
        raise ReproduceError(str(error)) from error
    return {"specs": specs}


def _calibrate(run, specs):
    """Fit the simulation on the target's calibration pairs (or take a preset)."""
    from lowlight_tf import calibration, simulation
    config = run.config
    params_path = os.path.join(run.work_dir, "simulation_params.json")
    if config.calibration == "none":
        preset = simulation.load_preset(config.train.simulation_params)
        simulation.save_preset(preset, params_path)
        return {"params": params_path, "method": f"preset {config.train.simulation_params}"}
    if "target_calib" not in specs:
        raise ReproduceError(f"--calibration={config.calibration} fits the simulation on the target "
                             "camera's calibration pairs, but no --target_pairs were given; use "
                             "--calibration=none with a preset (--simulation_params).")
    fit = calibration.load_pairs(specs["target_calib"])
    holdout = calibration.load_pairs(specs["target_val"])
    return _fit_simulation(run, fit, holdout, params_path, source=specs["target_calib"])


def _fit_simulation(run, fit, holdout, params_path, *, source):
    """calibration.calibrate with the run's settings; saves the preset, returns the stage dict."""
    from lowlight_tf import calibration, simulation
    config = run.config
    preset, rows = calibration.calibrate(
        fit, method=config.calibration, holdout_pairs=holdout, tone_curve=config.tone_curve,
        exposure_spread=config.exposure_spread, seed=config.train.seed, source=source,
        progress=lambda line: _say(run.progress, "  " + line))
    simulation.save_preset(preset, params_path)
    comparison = {}
    for name in ("paper",):
        report, _ = calibration.fidelity_report(simulation.load_preset(name), holdout,
                                                seed=config.train.seed)
        comparison[name] = report["summary"]
    summary = calibration.summarise_fidelity(rows) if rows else {}
    _say(run.progress, calibration.format_fidelity_table(rows, title="fidelity (held-out)"))
    method = config.calibration + (" + tone curve" if config.tone_curve else "")
    if config.exposure_spread != 1.0:
        method += f", exposure spread x{config.exposure_spread:g}"
    return {"params": params_path, "method": method, "fidelity": summary,
            "fidelity_paper_preset": comparison["paper"], "fit_pairs": len(fit),
            "holdout_pairs": len(holdout)}


def _curve_baseline(run, specs):
    """The calibration pairs' dark->bright curve (+ blur) on the target's validation pairs."""
    from lowlight_tf import calibration
    return _curve_row(run, calibration.load_pairs(specs["target_calib"]),
                      calibration.load_pairs(specs["target_val"]), "target:val")


def _curve_row(run, fit, val, dataset):
    """{"rows": [the calibrated-curve baseline of `fit` pairs, scored on `val` pairs]}."""
    from lowlight_tf import baselines, evaluation
    curve = baselines.fit_dark_to_bright_curve(fit)
    scores = np.asarray([evaluation.image_metrics(
        evaluation.quantize(baselines.apply_curve(pair.dark, curve)), pair.bright) for pair in val])
    psnr, psnr_gt_mean, ssim = (float(v) for v in scores.mean(axis=0))
    row = {"method": f"calibrated curve + blur {baselines.CURVE_BLUR_SIGMA:g} ({len(fit)} pairs)",
           "kind": "baseline", "dataset": dataset, "psnr": psnr,
           "psnr_gt_mean": psnr_gt_mean, "ssim": ssim, "images": len(val),
           "training_images": len(fit), "epochs": "-"}
    _say(run.progress, f"  {row['method']} on {dataset}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}")
    return {"rows": [row]}


# Device pairs scored by the device calibration's fidelity table: every DEVICE_FIDELITY_STRIDE-th
# test pair (the per-pair fits of all 66 would add minutes and no information).
DEVICE_FIDELITY_STRIDE = 4


def _calibrate_device(run, specs):
    """The simulation fitted on the device's transfer pairs (the same --device_fraction subset
    the transfer rows train on), plus the device's calibrated-curve baseline."""
    from lowlight_tf import calibration
    config = run.config
    fit = calibration.load_pairs(specs["device_train"], fraction=config.device_fraction,
                                 seed=config.train.seed)
    test = calibration.load_pairs(specs["device_test"])
    _say(run.progress, f"  fitting on {len(fit)} device transfer pairs: "
         + ",".join(p.id for p in fit))
    result = _fit_simulation(run, fit, test[::DEVICE_FIDELITY_STRIDE],
                             os.path.join(run.work_dir, "simulation_params_device.json"),
                             source=f"{specs['device_train']} ({config.device_fraction:g})")
    result.update(_curve_row(run, fit, test, "device:test"))
    return result


def _simulated_test(run, specs, params_path):
    from data_prep import prepare
    prepare.make_tfrecords("simulated", output_dir=run.tfrecords, name="simulated_test",
                           source_data=specs["bright_test"], simulation_params=params_path,
                           splits="test:1.0", seed=run.config.train.seed + 1,
                           report=lambda line: _say(run.progress, "  " + line))
    return {"spec": f"{run.tfrecords}/simulated_test:test"}


def _train(run, name, *, stage, train_data, val_data, epochs, steps, learning_rate,
           init_from="", train_fraction=1.0, params_path="paper", seed=None):
    """One tools/train stage in WORK_DIR/models/NAME; returns the final model and its curves."""
    from lowlight_tf import training
    config = run.config
    shared = config.train
    train_config = dataclasses.replace(
        shared, model_dir=os.path.join(run.models, name), stage=stage, train_data=train_data,
        val_data=val_data or "none", init_from=init_from,
        trainable_blocks=config.transfer_blocks if stage == "transfer" else "",
        simulation_params=params_path, epochs=epochs, steps_per_epoch=steps,
        validation_steps=shared.validation_steps if val_data else 0, learning_rate=learning_rate,
        # A stage that starts from a model takes its architecture from it.
        base_filters=None if init_from else shared.base_filters,
        depth=None if init_from else shared.depth,
        exposure_normalization=None if init_from else shared.exposure_normalization,
        train_fraction=train_fraction, seed=shared.seed if seed is None else seed)
    result = training.train(train_config)
    history = {k: [float(v) for v in values] for k, values in result.history.items()}
    return {"model": result.final_model_path, "history": history, "stage": stage,
            "epochs": epochs, "train_data": train_data, "train_fraction": train_fraction}


def _device_subsets(run, specs, params_path, *, transfer_args, scratch_args):
    """Draws 1..N-1 of the device_fraction subset: transfer and scratch rows for each.

    Returns {"draws": [{"draw", "seed", "transfer": row, "scratch": row, "output_dirs"}]}; draw 0
    (the main transfer_device / scratch_device rows) is added by build_report."""
    config = run.config
    fraction = config.device_fraction
    draws = []
    for draw in range(1, config.device_subsets):
        seed = config.train.seed + draw
        entry = {"draw": draw, "seed": seed, "output_dirs": {}}
        for kind, stage, args in (("transfer", "transfer", transfer_args),
                                  ("scratch", "scratch", scratch_args)):
            name = f"{kind}_device_draw{draw}"
            label = (f"ours: transfer, last two blocks, {fraction:.0%}" if kind == "transfer"
                     else f"scratch, {fraction:.0%}") + f" (draw {draw})"
            trained = run.stage(name, lambda: _train(
                run, name, stage=stage, train_data=specs["device_train"], val_data="",
                train_fraction=fraction, params_path=params_path, seed=seed, **args))
            evaluated = run.stage(f"eval_{name}", lambda: _evaluate(
                run, f"eval_{name}", trained["model"], [specs["device_test"]], label))
            entry[kind] = _model_row(evaluated)
            entry["output_dirs"][kind] = evaluated["output_dir"]
        draws.append(entry)
    return {"draws": draws}


SHIPPED_LABEL = "shipped pretrained model (zero-shot)"


def _shipped_model_path(run):
    """The shipped model's path, or "" with a note when this install has none."""
    from lowlight_tf import pretrained
    try:
        return pretrained.model_path()
    except pretrained.NoPretrainedModelError as error:
        _say(run.progress, f"== [eval_shipped] skipped: {error}")
        return ""


def _model_row(evaluated):
    """The model's own row of an _evaluate result at input gain 1 (not a baseline, a
    calibrated-exposure row or another gain of an exposure sweep)."""
    return next(r for r in evaluated["rows"]
                if r["kind"] == "model" and r.get("gain", 1.0) == 1.0)


def _evaluate(run, name, model_path, datasets, label, exposure_curves=None):
    from lowlight_tf import evaluation
    config = run.config
    rows = evaluation.evaluate(
        model_path, datasets, os.path.join(run.evals, name), tile=config.eval_tile or None,
        save_images=config.save_images, model_label=label,
        max_images=config.max_eval_images or None, exposure_curves=exposure_curves,
        input_gains=config.input_gains.split(","),
        progress=lambda line: _say(run.progress, "  " + line))
    return {"rows": rows, "output_dir": os.path.join(run.evals, name)}


# Flags that may change between runs of one work_dir: which stages run, where the dir is given,
# how many subset draws (each draw is its own stage; the main rows are draw 0).
_RESUME_FREE = ("work_dir", "stages", "device_subsets")


def _check_same_settings(work_dir, config):
    """Refuse to resume a work_dir whose finished stages were made with other settings.

    Stages are reused by name, so a changed flag would silently mix old and new settings. Fields
    missing from an older config.json count as their defaults.
    """
    path = os.path.join(work_dir, "config.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as stream:
            previous = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise ReproduceError(f"Cannot read {path} ({error}); use a new --work_dir.") from error
    defaults = ReproduceConfig().flat()
    changed = [f"--{name}: {previous.get(name, defaults[name])!r} -> {value!r}"
               for name, value in config.flat().items()
               if name not in _RESUME_FREE and previous.get(name, defaults[name]) != value]
    if changed:
        raise ReproduceError(
            f"{work_dir} holds a run made with other settings ({'; '.join(changed)}); resuming "
            "would reuse its finished stages with the old ones. Use a new --work_dir, or pass "
            "the old values to resume.")


def run_reproduce(config, progress=print):
    """Run (or resume) every selected stage; returns the report dict (also in report.md).

    Raises:
        ReproduceError: bad configuration or inputs, with what to do.
    """
    _check_config(config)
    run = _Run(config, progress)
    selected = set(s for s in config.stages.split(",") if s)
    _check_same_settings(run.work_dir, config)
    os.makedirs(run.work_dir, exist_ok=True)
    _write_json(os.path.join(run.work_dir, "config.json"), config.flat())

    specs = run.stage("prepare", lambda: _prepare(run))["specs"]
    results = {}
    if "calibrate" in selected:
        params = run.stage("calibrate", lambda: _calibrate(run, specs))
        results["calibrate"] = params
        params_path = params["params"]
    else:
        params_path = (config.train.simulation_params if config.calibration == "none"
                       else "paper")
    if "curve_baseline" in selected and "target_calib" in specs:
        results["curve_baseline"] = run.stage("curve_baseline",
                                              lambda: _curve_baseline(run, specs))
    if "simulated_test" in selected:
        specs["simulated_test"] = run.stage(
            "simulated_test", lambda: _simulated_test(run, specs, params_path))["spec"]

    def train_and_eval(name, label, datasets, simulation_params=None, exposure_curves=None,
                       **train_args):
        if name not in selected and not run.done(name):
            return
        trained = run.stage(name, lambda: _train(
            run, name, params_path=simulation_params or params_path, **train_args))
        results[name] = trained
        eval_name = f"eval_{name}" if name != "pretrain" else "eval_pretrain"
        if datasets and (eval_name in selected or name != "pretrain" or run.done(eval_name)):
            results[eval_name] = run.stage(
                eval_name, lambda: _evaluate(run, eval_name, trained["model"], datasets, label,
                                             exposure_curves and exposure_curves()))

    def target_exposure():
        """{target val spec: the target camera's calibrated exposure curve}.

        Passed as a callable and read only when eval_pretrain runs: a run of other stages alone
        must not need the curve."""
        from lowlight_tf import simulation
        curve = simulation.load_preset(params_path).exposure_curve
        if curve is None:  # e.g. a work_dir calibrated before presets carried the curve
            raise _no_exposure_curve(params_path)
        return {specs["target_val"]: curve}

    zero_shot_sets = [specs[k] for k in ("simulated_test", "target_val", "device_test")
                      if k in specs]
    if "eval_shipped" in selected and zero_shot_sets:
        shipped = _shipped_model_path(run)
        if shipped:
            results["eval_shipped"] = run.stage("eval_shipped", lambda: _evaluate(
                run, "eval_shipped", shipped, zero_shot_sets, SHIPPED_LABEL))
    train_and_eval("pretrain", "ours: pretrained on simulated pairs (zero-shot)",
                   zero_shot_sets, stage="pretrain", train_data=specs["bright_train"],
                   exposure_curves=(target_exposure if config.calibrated_exposure
                                    and "target_val" in specs else None),
                   val_data=specs["bright_val"], epochs=config.pretrain_epochs,
                   steps=config.pretrain_steps, learning_rate=config.pretrain_learning_rate)
    pretrained = results.get("pretrain", {}).get("model", "")
    transfer_args = dict(epochs=config.transfer_epochs, steps=config.transfer_steps,
                         learning_rate=config.transfer_learning_rate, init_from=pretrained)
    if "target_calib" in specs and pretrained:
        train_and_eval("transfer_target", "ours: transfer, last two blocks",
                       [specs["target_val"]], stage="transfer",
                       train_data=specs["target_calib"], val_data="", **transfer_args)
    device_stages = {"calibrate_device", "pretrain_device", "transfer_device",
                     "finetune_all_device"}
    if "device_train" in specs and config.device_calibration and (
            selected & device_stages or run.done("calibrate_device")):
        device = run.stage("calibrate_device", lambda: _calibrate_device(run, specs))
        results["calibrate_device"] = device
        train_and_eval("pretrain_device", "ours: pretrained on device-calibrated simulation "
                       "(zero-shot)", [specs["device_test"]], simulation_params=device["params"],
                       stage="pretrain", train_data=specs["bright_train"],
                       val_data=specs["bright_val"], epochs=config.pretrain_epochs,
                       steps=config.pretrain_steps, learning_rate=config.pretrain_learning_rate)
        # The device rows start from the device model only (never silently from the target's).
        pretrained = results.get("pretrain_device", {}).get("model", "")
        transfer_args["init_from"] = pretrained
    if "device_train" in specs:
        fraction = config.device_fraction
        if pretrained:
            train_and_eval("transfer_device", f"ours: transfer, last two blocks, {fraction:.0%}",
                           [specs["device_test"]], stage="transfer",
                           train_data=specs["device_train"], val_data="",
                           train_fraction=fraction, **transfer_args)
            train_and_eval("finetune_all_device", f"ours: transfer, all layers, {fraction:.0%}",
                           [specs["device_test"]], stage="finetune_all",
                           train_data=specs["device_train"], val_data="",
                           train_fraction=fraction, **transfer_args)
        scratch_args = dict(epochs=config.scratch_epochs, steps=config.scratch_steps,
                            learning_rate=config.scratch_learning_rate)
        train_and_eval("scratch_device", f"scratch, {fraction:.0%}", [specs["device_test"]],
                       stage="scratch", train_data=specs["device_train"], val_data="",
                       train_fraction=fraction, **scratch_args)
        train_and_eval("full_device", "scratch, 100% (full supervision)",
                       [specs["device_test"]], stage="scratch",
                       train_data=specs["device_train"], val_data="", train_fraction=1.0,
                       **dict(scratch_args, steps=config.full_steps or config.scratch_steps))
        if pretrained and config.device_subsets > 1 and (
                "device_subsets" in selected or run.done("transfer_device_draw1")):
            results["device_subsets"] = _device_subsets(
                run, specs, params_path, transfer_args=transfer_args, scratch_args=scratch_args)
    report = build_report(run, results, specs)
    if "report" in selected:
        write_report(run, report)
    return report


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


# Paired comparisons in the report, (A, B) by training stage: each on the images both stages'
# evaluations share, with a scene-bootstrap 95% interval (lowlight_tf.comparison).
COMPARISONS = (
    ("transfer_target", "pretrain"),  # issue 6 target 2: same-camera transfer vs zero-shot
    ("transfer_device", "full_device"),  # the paper's 10% transfer vs full supervision
    ("transfer_device", "scratch_device"),  # ... vs scratch on the same 10%
    ("finetune_all_device", "scratch_device"),
    ("full_device", "scratch_device"),
)


def _comparisons(results):
    """[{a, b, dataset(s), metric, mean, low, high, ...}] for the COMPARISONS both evaluated."""
    from lowlight_tf import comparison
    found = []
    for stage_a, stage_b in COMPARISONS:
        evals = [results.get(f"eval_{stage}", {}).get("output_dir")
                 for stage in (stage_a, stage_b)]
        if not all(evals):
            continue
        (label_a, a), (label_b, b) = (comparison.read_per_image(e) for e in evals)
        result = comparison.paired_difference(a, b)
        found.append({"a": label_a, "b": label_b,
                      "datasets": sorted({d for d, _ in set(a) & set(b)}),
                      **dataclasses.asdict(result)})
    return found


def format_comparisons(comparisons):
    """Markdown bullet lines of _comparisons' results."""
    from lowlight_tf import comparison
    return [f"- {', '.join(c['datasets'])}: " + comparison.format_difference(
        c["a"], c["b"], comparison.PairedDifference(
            **{f.name: c[f.name] for f in dataclasses.fields(comparison.PairedDifference)}))
        for c in comparisons]


def _subset_summary(results, config):
    """Draw 0 (the main rows) and the extra draws of the device subset, with each draw's paired
    transfer - scratch margin and the mean and standard deviation over draws; {} without draws."""
    from lowlight_tf import comparison
    extra = results.get("device_subsets", {}).get("draws", [])
    main = [results.get(f"eval_{stage}") for stage in ("transfer_device", "scratch_device")]
    if not extra or not all(main):
        return {}
    first = {"draw": 0, "seed": config.train.seed,
             "output_dirs": {"transfer": main[0]["output_dir"], "scratch": main[1]["output_dir"]}}
    for kind, evaluated in zip(("transfer", "scratch"), main):
        first[kind] = _model_row(evaluated)
    draws = []
    for entry in [first, *extra]:
        a, b = (comparison.read_per_image(entry["output_dirs"][k])[1]
                for k in ("transfer", "scratch"))
        margin = comparison.paired_difference(a, b)
        draws.append({"draw": entry["draw"], "seed": entry["seed"],
                      "transfer": {k: entry["transfer"][k] for k in ("psnr", "ssim")},
                      "scratch": {k: entry["scratch"][k] for k in ("psnr", "ssim")},
                      "margin": dataclasses.asdict(margin)})

    def spread(values):
        values = np.asarray(values, np.float64)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                "min": float(values.min()), "max": float(values.max())}
    return {"fraction": config.device_fraction, "draws": draws,
            "transfer_psnr": spread([d["transfer"]["psnr"] for d in draws]),
            "scratch_psnr": spread([d["scratch"]["psnr"] for d in draws]),
            "margin_psnr": spread([d["margin"]["mean"] for d in draws])}


def format_subsets(subsets):
    """Markdown lines of _subset_summary: a row per draw, then mean ± standard deviation."""
    if not subsets:
        return []
    fraction = f"{subsets['fraction']:.0%}"
    lines = [f"| draw (seed) | transfer, last two blocks, {fraction}: PSNR / SSIM | scratch, "
             f"{fraction}: PSNR / SSIM | transfer - scratch, PSNR (95% CI over scenes) |",
             "|---|---|---|---|"]
    for d in subsets["draws"]:
        m = d["margin"]
        lines.append(f"| {d['draw']} ({d['seed']}) | {d['transfer']['psnr']:.2f} / "
                     f"{d['transfer']['ssim']:.3f} | {d['scratch']['psnr']:.2f} / "
                     f"{d['scratch']['ssim']:.3f} | {m['mean']:+.2f} ({m['low']:+.2f} to "
                     f"{m['high']:+.2f}) |")
    t, c, m = (subsets[k] for k in ("transfer_psnr", "scratch_psnr", "margin_psnr"))
    lines += ["", f"Over {len(subsets['draws'])} draws (mean ± standard deviation, min to max): "
              f"transfer {t['mean']:.2f} ± {t['std']:.2f} dB ({t['min']:.2f} to {t['max']:.2f}), "
              f"scratch {c['mean']:.2f} ± {c['std']:.2f} dB ({c['min']:.2f} to {c['max']:.2f}), "
              f"transfer - scratch {m['mean']:+.2f} ± {m['std']:.2f} dB "
              f"({m['min']:+.2f} to {m['max']:+.2f})."]
    return lines


def build_report(run, results, specs):
    """The report dict: rows (models then baselines), paired comparisons, the device subset
    draws, calibration, curves, panel folders."""
    return {
        "work_dir": run.work_dir,
        "rows": _table_rows(results),
        "comparisons": _comparisons(results),
        "device_subsets": _subset_summary(results, run.config),
        "calibration": results.get("calibrate", {}),
        "device_calibration": results.get("calibrate_device", {}),
        "histories": {k: v["history"] for k, v in results.items() if "history" in v},
        "panels": [v["output_dir"] + "/panels" for k, v in results.items()
                   if k.startswith("eval_")],
        "datasets": specs,
    }


def format_table(rows, with_paper=True):
    """The Table 1 form of lowlight_tf.evaluation, plus the paper's own rows for context."""
    from lowlight_tf import evaluation
    lines = [evaluation.format_table(rows)]
    if with_paper:
        lines += [f"| {method} | {dataset} | {images} | {epochs} | {psnr:.2f} | n/a | n/a | 1 "
                  "| n/a |" for method, dataset, images, epochs, psnr in PAPER_ROWS]
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    names = [n for n, h in histories.items() if h.get("loss")]
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
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
    plt.close(fig)
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
    with open(os.path.join(run.work_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    _write_json(os.path.join(run.work_dir, "summary.json"), report)
    _say(run.progress, "\n" + "\n".join([table, "", *comparisons])
         + f"\n\nReport: {os.path.join(run.work_dir, 'report.md')}")
