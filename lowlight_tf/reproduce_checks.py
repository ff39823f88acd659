"""tools/reproduce's refusals: a configuration that cannot run, a stage the flags leave out, a
work_dir made with other settings - each before any work, saying what to change."""
import json
import os

from lowlight_tf import pretrained
from lowlight_tf import reproduce_stages as stages
from lowlight_tf import simulation
from lowlight_tf.reproduce_config import STAGES, ReproduceConfig
from lowlight_tf.reproduce_run import ReproduceError
from lowlight_tf.train_config import TrainConfig


def check_config(config):
    """Refuse a configuration that cannot run, before any work, saying what to change."""
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
                                 f"{preset}; choose --calibration=joint, paper or isp, or drop "
                                 f"--{flag}.")
    if config.calibration == "isp" and config.exposure_spread != 1.0:
        raise ReproduceError(f"--exposure_spread={config.exposure_spread:g} scales the "
                             "composite's calibrated distribution; --calibration=isp fits the "
                             "ISP model's exposure distribution as measured: drop the flag.")
    if config.calibrated_exposure and not fitted:
        try:
            has_curve = simulation.load_preset(preset).exposure_curve is not None
        except simulation.PresetError as error:
            raise ReproduceError(str(error)) from error
        if not has_curve:
            raise stages.no_exposure_curve(preset)
    _check_device_flags(config)


def _check_device_flags(config):
    """The flags that need --device_pairs (and the shipped model, for the adaptation)."""
    if config.device_exposure and not config.device_pairs:
        raise ReproduceError("--device_exposure needs --device_pairs (the device whose pairs "
                             "give the exposure curve).")
    if config.device_calibration and not config.device_pairs:
        raise ReproduceError("--device_calibration needs --device_pairs (the device whose "
                             "transfer pairs calibrate the simulation).")
    if config.device_adaptation_epochs:
        if not config.device_pairs:
            raise ReproduceError("--device_adaptation_epochs needs --device_pairs (the device "
                                 "whose pairs calibrate the adaptation's simulation).")
        try:
            pretrained.model_path()
        except pretrained.NoPretrainedModelError as error:
            raise ReproduceError("--device_adaptation_epochs continues the shipped model's "
                                 "pretraining, but this installation holds none: reinstall "
                                 "lowlight_tf from a full checkout, or pass "
                                 "--device_adaptation_epochs=0.") from error


# Flags that may change between runs of one work_dir: which stages run, where the dir is given,
# how many subset draws (each draw is its own stage; the main rows are draw 0).
_RESUME_FREE = ("work_dir", "stages", "device_subsets")


def check_same_settings(work_dir, config):
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


def check_reachable(selected, table):
    """A stage named in --stages (the set `selected`) that these flags leave out of the run's
    stage `table` is an error, not a no-op (the default, every stage, runs those that the
    given data allows)."""
    if selected >= set(STAGES):
        return
    reachable = {"report"} | {name for stage in table
                              for name in (stage.name, *(stage.selected_by or ()))}
    missing = sorted(selected - reachable, key=STAGES.index)
    if missing:
        raise ReproduceError(
            f"--stages names {', '.join(missing)}, which a run with these flags does not have: "
            "calibrate_device and pretrain_device need --device_calibration, device_subsets "
            "needs --device_subsets above 1, device_adaptation needs --device_adaptation_epochs "
            "above 0. Add the flag or leave the stage out.")
