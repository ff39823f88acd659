"""What each stage of the reproduce run does (lowlight_tf.reproduce holds their table and order).

Every stage function has the form `fn(run, name, **inputs) -> record`: `run` is the
`reproduce_run.Run` (settings, paths, dataset builders, progress), `name` the stage's record
name, `inputs` the dataset specs and earlier results its table entry names. The record is a
JSON-able dict that `Run.stage` stores in `WORK_DIR/stages/NAME.json`.
"""
import dataclasses
import os

import numpy as np

from lowlight_tf import baselines
from lowlight_tf import calibration
from lowlight_tf import curves as curves_lib
from lowlight_tf import evaluation
from lowlight_tf import evaluation_scoring as scoring
from lowlight_tf import pretrained
from lowlight_tf import simulation
from lowlight_tf import training
from lowlight_tf.reproduce_run import ReproduceError, draw_entry

SHIPPED_LABEL = "shipped pretrained model (zero-shot)"
# Device pairs scored by the device calibration's fidelity table: every DEVICE_FIDELITY_STRIDE-th
# test pair (the per-pair fits of all 66 would add minutes and no information).
DEVICE_FIDELITY_STRIDE = 4


def no_exposure_curve(preset):
    """The error of --calibrated_exposure with a preset that has no exposure curve."""
    return ReproduceError(f"--calibrated_exposure needs the target camera's exposure curve, which "
                          f"the preset {preset} lacks; use --calibration=joint or paper "
                          "(calibrated on the target pairs) or a preset written by "
                          "tools/calibrate_simulation.")


def prepare(run, name):
    """Build every TFRecord dataset the experiment reads (run.builders) from --bright_dir (else
    the embedded sample photos), --target_pairs and --device_pairs.

    Writes WORK_DIR/tfrecords/{bright,target,device} (or WORK_DIR/sample/); returns
    {"specs": {bright_train, bright_val, bright_test[, target_calib, target_val]
    [, device_train, device_test]}}.
    """
    del name  # one record, no folder of its own
    config, build = run.config, run.builders.make_tfrecords
    specs = {}
    try:
        if config.bright_dir:
            build("images", output_dir=run.tfrecords, name="bright", input_dir=config.bright_dir,
                  splits=config.bright_splits, max_side=config.max_side or None,
                  report=run.report_line)
            bright = f"{run.tfrecords}/bright"
        else:
            sample = run.builders.sample_datasets(os.path.join(run.work_dir, "sample"),
                                                  report=run.report_line)
            bright = f"{sample['output_dir']}/{sample['name']}"
        specs.update(bright_train=f"{bright}:train", bright_val=f"{bright}:val",
                     bright_test=f"{bright}:test")
        if config.target_pairs:
            build("pairs", output_dir=run.tfrecords, name="target", input_dir=config.target_pairs,
                  splits="val:1.0", split_ids=[f"calib:{config.target_calib_ids}"],
                  report=run.report_line)
            specs.update(target_calib=f"{run.tfrecords}/target:calib",
                         target_val=f"{run.tfrecords}/target:val")
        if config.device_pairs:
            build("pairs", output_dir=run.tfrecords, name="device", input_dir=config.device_pairs,
                  splits=config.device_splits, split_by="index_run", report=run.report_line)
            specs.update(device_train=f"{run.tfrecords}/device:train",
                         device_test=f"{run.tfrecords}/device:test")
    except run.builders.input_errors as error:
        raise ReproduceError(str(error)) from error
    return {"specs": specs}


def calibrate(run, name, *, calib_spec, val_spec):
    """Fit the simulation on the target's calibration pairs (or take the preset).

    Reads specs target_calib / target_val (None without --target_pairs); writes
    WORK_DIR/simulation_params.json; returns {"params": its path, "method", and with a fit
    "fidelity", "fidelity_paper_preset", "fit_pairs", "holdout_pairs"}.
    """
    del name
    config = run.config
    params_path = os.path.join(run.work_dir, "simulation_params.json")
    if config.calibration == "none":
        preset = simulation.load_preset(config.train.simulation_params)
        simulation.save_preset(preset, params_path)
        return {"params": params_path, "method": f"preset {config.train.simulation_params}"}
    if calib_spec is None:
        raise ReproduceError(f"--calibration={config.calibration} fits the simulation on the "
                             "target camera's calibration pairs, but no --target_pairs were "
                             "given; use --calibration=none with a preset (--simulation_params).")
    fit = calibration.load_pairs(calib_spec)
    holdout = calibration.load_pairs(val_spec)
    return _fit_simulation(run, fit, holdout, params_path, source=calib_spec)


def _fit_simulation(run, fit, holdout, params_path, *, source, isp_tone_curve=None, seed=None):
    """calibration.calibrate with the run's settings; saves the preset, returns the record.

    `isp_tone_curve` (True/False) fits the ISP model with or without the tone curve whatever
    --calibration says (the device adaptation's simulation); `seed` replaces --seed."""
    config = run.config
    seed = config.train.seed if seed is None else seed
    isp = config.calibration == "isp" or isp_tone_curve is not None
    tone_curve = config.tone_curve if isp_tone_curve is None else isp_tone_curve
    if isp:
        preset, rows = calibration.calibrate_isp(
            fit, holdout_pairs=holdout, tone_curve=tone_curve, seed=seed,
            source=source, progress=run.report_line)
    else:
        preset, rows = calibration.calibrate(
            fit, method=config.calibration, holdout_pairs=holdout, tone_curve=config.tone_curve,
            exposure_spread=config.exposure_spread, seed=seed, source=source,
            progress=run.report_line)
    simulation.save_preset(preset, params_path)
    comparison = {}
    for preset_name in ("paper",):
        report, _ = calibration.fidelity_report(simulation.load_preset(preset_name), holdout,
                                                seed=seed)
        comparison[preset_name] = report["summary"]
    summary = calibration.summarise_fidelity(rows) if rows else {}
    run.say(calibration.format_fidelity_table(rows, title="fidelity (held-out)"))
    method = ("isp" if isp else config.calibration) + (" + tone curve" if tone_curve else "")
    if config.exposure_spread != 1.0 and not isp:
        method += f", exposure spread x{config.exposure_spread:g}"
    return {"params": params_path, "method": method, "fidelity": summary,
            "fidelity_paper_preset": comparison["paper"], "fit_pairs": len(fit),
            "holdout_pairs": len(holdout)}


def curve_baseline(run, name, *, fit_spec, val_spec):
    """The calibration pairs' dark->bright curve (+ blur) on the target's validation pairs.

    Reads specs target_calib (fit) and target_val; returns {"rows": [one baseline row]}.
    """
    del name
    return _curve_row(run, calibration.load_pairs(fit_spec), calibration.load_pairs(val_spec),
                      "target:val")


def _curve_row(run, fit, val, dataset):
    """{"rows": [the calibrated-curve baseline of `fit` pairs, scored on `val` pairs]}."""
    curve = baselines.fit_dark_to_bright_curve(fit)
    scores = np.asarray([scoring.image_metrics(
        scoring.quantize(baselines.apply_curve(pair.dark, curve)), pair.bright) for pair in val])
    psnr, psnr_gt_mean, ssim = (float(v) for v in scores.mean(axis=0))
    row = {"method": f"calibrated curve + blur {baselines.CURVE_BLUR_SIGMA:g} ({len(fit)} pairs)",
           "kind": "baseline", "dataset": dataset, "psnr": psnr,
           "psnr_gt_mean": psnr_gt_mean, "ssim": ssim, "images": len(val),
           "training_images": len(fit), "epochs": "-"}
    run.report_line(f"{row['method']} on {dataset}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}")
    return {"rows": [row]}


def calibrate_device(run, name, *, train_spec, test_spec):
    """The simulation fitted on the device's transfer pairs (the same --device_fraction subset
    the transfer rows train on), plus the device's calibrated-curve baseline.

    Reads specs device_train / device_test; writes WORK_DIR/simulation_params_device.json;
    returns calibrate's record plus {"rows": [the device's curve baseline]}.
    """
    del name
    config = run.config
    fit = calibration.load_pairs(train_spec, fraction=config.device_fraction,
                                 seed=config.train.seed)
    test = calibration.load_pairs(test_spec)
    run.report_line(f"fitting on {len(fit)} device transfer pairs: " + ",".join(p.id for p in fit))
    result = _fit_simulation(run, fit, test[::DEVICE_FIDELITY_STRIDE],
                             os.path.join(run.work_dir, "simulation_params_device.json"),
                             source=f"{train_spec} ({config.device_fraction:g})")
    result.update(_curve_row(run, fit, test, "device:test"))
    return result


def calibrate_device_isp(run, name, *, train_spec, test_spec, draw):
    """The ISP simulation (tone curve on) fitted on draw `draw`'s --device_fraction subset of
    the device's training pairs (seed --seed + draw: the pairs that draw's transfer and scratch
    rows train on); the device adaptation's simulation (--device_adaptation_epochs).

    Writes WORK_DIR/simulation_params_NAME.json; returns calibrate's record.
    """
    config = run.config
    seed = config.train.seed + draw
    fit = calibration.load_pairs(train_spec, fraction=config.device_fraction, seed=seed)
    test = calibration.load_pairs(test_spec)
    run.report_line(f"fitting the ISP model on the {len(fit)} device pairs of draw {draw}: "
                    + ",".join(p.id for p in fit))
    return _fit_simulation(run, fit, test[::DEVICE_FIDELITY_STRIDE],
                           os.path.join(run.work_dir, f"simulation_params_{name}.json"),
                           source=f"{train_spec} ({config.device_fraction:g}, draw {draw})",
                           isp_tone_curve=True, seed=seed)


def simulated_test(run, name, *, bright_test, params_path):
    """The fixed simulated test set: dark versions of the bright test split (run.builders).

    Writes WORK_DIR/tfrecords/simulated_test; returns {"spec": its test split}.
    """
    run.builders.make_tfrecords("simulated", output_dir=run.tfrecords, name=name,
                                source_data=bright_test, simulation_params=params_path,
                                splits="test:1.0", seed=run.config.train.seed + 1,
                                report=run.report_line)
    return {"spec": f"{run.tfrecords}/{name}:test"}


def train(run, name, *, stage, train_data, val_data, epochs, steps, learning_rate,
          init_from="", train_fraction=1.0, params_path="paper", seed=None,
          exposure_normalization=None):
    """One tools/train stage in WORK_DIR/models/NAME (training.train with the run's shared
    options); returns {"model": final .keras, "history", "stage", "epochs", "train_data",
    "train_fraction"}. A stage that starts from a model keeps its exposure normalisation
    unless `exposure_normalization` is given (0 removes it)."""
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
        exposure_normalization=(exposure_normalization if exposure_normalization is not None
                                else None if init_from else shared.exposure_normalization),
        upsampling=None if init_from else shared.upsampling,
        train_fraction=train_fraction, seed=shared.seed if seed is None else seed)
    result = training.train(train_config)
    history = {k: [float(v) for v in values] for k, values in result.history.items()}
    return {"model": result.final_model_path, "history": history, "stage": stage,
            "epochs": epochs, "train_data": train_data, "train_fraction": train_fraction}


def shipped_model_path(run):
    """The shipped model's path, or "" with a note when this install has none."""
    try:
        return pretrained.model_path()
    except pretrained.NoPretrainedModelError as error:
        run.say(f"== [eval_shipped] skipped: {error}")
        return ""


def evaluate(run, name, *, model_path, datasets, label, exposure_curves=None,
             device_train=None, device_test=None, draw=0):
    """evaluation.evaluate of one model on the list of dataset specs `datasets` into
    WORK_DIR/evaluations/NAME; returns {"rows", "output_dir"}.

    With --device_exposure and the device's specs, `device_test` (one of `datasets`) is scored
    with the exposure curve of the draw's subset of `device_train` too (device_exposure_curve).
    """
    config = run.config
    curves = dict(exposure_curves or {})
    if config.device_exposure and device_train and device_test in datasets:
        curves[device_test] = device_exposure_curve(run, device_train, draw)
    rows = evaluation.evaluate(
        model_path, datasets, os.path.join(run.evals, name), tile=config.eval_tile or None,
        save_images=config.save_images, model_label=label,
        max_images=config.max_eval_images or None, exposure_curves=curves or None,
        input_gains=config.input_gains.split(","), progress=run.report_line)
    return {"rows": rows, "output_dir": os.path.join(run.evals, name)}


def device_exposure_curve(run, device_train, draw):
    """The device's exposure curve, float64 [3, 256]: the mean bright value per dark value over
    the --device_fraction subset of draw `draw` (seed --seed + draw), the pairs that draw's
    transfer and scratch rows train on (curves.fit_dark_to_bright_curve)."""
    seed = run.config.train.seed + draw
    fit = calibration.load_pairs(device_train, fraction=run.config.device_fraction, seed=seed)
    run.report_line(f"the device's exposure curve (draw {draw}) from {len(fit)} pairs: "
                    + ",".join(p.id for p in fit))
    return curves_lib.fit_dark_to_bright_curve(fit)


def evaluate_zero_shot(run, name, *, model_path, datasets, label, params_path, target_val=None,
                       device_train=None, device_test=None):
    """evaluate, plus with --calibrated_exposure a row on the target's validation pairs with the
    target camera's exposure curve (read from the preset only here: a run of other stages alone
    must not need the curve), and with --device_exposure rows on the device's test pairs with
    the device's (draw 0)."""
    curves = None
    if run.config.calibrated_exposure and target_val:
        curve = simulation.load_preset(params_path).exposure_curve
        if curve is None:  # e.g. a work_dir calibrated before presets carried the curve
            raise no_exposure_curve(params_path)
        curves = {target_val: curve}
    return evaluate(run, name, model_path=model_path, datasets=datasets, label=label,
                    exposure_curves=curves, device_train=device_train, device_test=device_test)


def device_subsets(run, name, *, evaluated):
    """Collect draws 1..N-1 of the device subset from their evaluation records.

    `evaluated` holds the records of eval_transfer_device_drawK and eval_scratch_device_drawK,
    in draw order. Returns {"draws": [{"draw", "seed", "output_dirs", "transfer": row,
    "scratch": row[, "calibrated": {"transfer": row, "scratch": row}]}]} (the calibrated
    exposure's rows with --device_exposure); draw 0 (the main transfer_device / scratch_device
    rows) is added by the report.
    """
    del name  # no record of its own: each draw's stages have theirs
    seed = run.config.train.seed
    draws = [draw_entry(draw, seed + draw,
                        dict(zip(("transfer", "scratch"), evaluated[2 * draw - 2:2 * draw])),
                        scoring.CALIBRATED_EXPOSURE)
             for draw in range(1, len(evaluated) // 2 + 1)]
    return {"draws": draws}


def device_adaptation(run, name, *, zero_shot, adapted, transfer, scratch):
    """Collect the device adaptation's draws (--device_adaptation_epochs) from evaluation
    records, each argument a list in draw order: the adapted model zero-shot, its two-block
    transfer, and the same draw's paper transfer and scratch rows (draw 0: the main rows).

    Returns {"draws": [{"draw", "seed", "output_dirs": {kind: folder}, kind: row}]} for the
    kinds zero_shot, adapted, transfer and scratch (the models' own rows at gain 1).
    """
    del name  # no record of its own: each draw's stages have theirs
    kinds = {"zero_shot": zero_shot, "adapted": adapted, "transfer": transfer,
             "scratch": scratch}
    return {"draws": [draw_entry(draw, run.config.train.seed + draw,
                                 {kind: records[draw] for kind, records in kinds.items()})
                      for draw in range(len(adapted))]}
