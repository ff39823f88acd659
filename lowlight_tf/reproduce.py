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
  scratch_target   the same pairs from random weights (our row): what pretraining adds there.
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
  device_adaptation
                   with --device_adaptation_epochs=E > 0 (beyond the paper, issue 16's lever A):
                   per draw k of the subset, the ISP simulation fitted on the draw's pairs
                   (calibrate_device_isp_drawK), the shipped model's pretraining continued E
                   epochs on it with the normalisation off (adapt_device_drawK, also scored
                   zero-shot), its last two blocks retrained on the same pairs
                   (transfer_adapted_device_drawK); the report pairs each draw with its
                   transfer and scratch rows.
  report           `report.md` (Table 1 form, paired differences of the key rows with
                   scene-bootstrap intervals), `summary.json`, `curves.png`, panels.

Stages whose inputs are not configured (no target or no device pairs) are skipped, so the same
runner drives the embedded-default demo on bright photos alone.

How the stages run: `stage_table(config)` lists them in order, one `Stage` entry each with the
function that does the work (lowlight_tf.reproduce_stages), the inputs it reads (dataset specs,
fields of earlier stages' records, or the few values DERIVED from them), what it produces and
when it runs (its selection rule); `run_reproduce` walks the table with one loop. A stage whose
required inputs are missing is skipped. The report is lowlight_tf.reproduce_report.

The dataset-building steps (data_prep's make_tfrecords and the sample photos) are handed in by
the caller as `DatasetBuilders` (tools/reproduce, tools/demo): this package never imports
data_prep (docs/interfaces.md).
"""
import dataclasses
import os
from typing import Callable, Mapping, Tuple

from lowlight_tf import calibration
from lowlight_tf import data
from lowlight_tf import evaluation
from lowlight_tf import reproduce_checks as checks
from lowlight_tf import reproduce_stages as stages
from lowlight_tf import simulation
from lowlight_tf import training
from lowlight_tf.reproduce_config import STAGES, ReproduceConfig
from lowlight_tf.reproduce_report import COMPARISONS, build_report, write_report
from lowlight_tf.reproduce_run import DatasetBuilders, ReproduceError, Run, write_json
from lowlight_tf.reproduce_stages import SHIPPED_LABEL

__all__ = ("COMPARISONS", "DatasetBuilders", "ReproduceConfig", "ReproduceError", "SHIPPED_LABEL",
           "STAGES", "Stage", "run_reproduce", "stage_table")

# The library's error types that mean bad input or configuration (not a bug); a stage reports
# them, and the dataset builders' input errors, as ReproduceError.
USER_ERRORS = (calibration.CalibrationError, data.DatasetError, evaluation.EvaluationError,
               simulation.PresetError, training.ConfigError)

# When a stage runs (and only if its required inputs exist):
ALWAYS = "always"  # on every run: prepare, and the evaluation of a model the run holds
SELECTED = "selected"  # when --stages names it (or one of its `selected_by`)
SELECTED_OR_DONE = "selected_or_done"  # ... or when its `done_check` record exists already

# Where a stage's record goes (every record is also kept for later stages' inputs):
RESULT = "result"  # the report's results, in table order
DATASETS = "datasets"  # record["specs"] join the dataset specs (prepare)
DATASET = "dataset"  # record["spec"] becomes the dataset spec named like the stage
RECORD = "record"  # later stages' inputs only (the subset draws)

# The zero-shot test sets, those that exist: a tuple source is the list of its values.
ZERO_SHOT = ("simulated_test?", "target_val?", "device_test?")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One entry of the stage table.

    Attributes:
      name: the stage's name and record WORK_DIR/stages/NAME.json (reused by name on resume).
      build: reproduce_stages function build(run, name, **inputs, **args) -> record.
      run_when: ALWAYS, SELECTED or SELECTED_OR_DONE.
      inputs: {parameter of build: source}. A source is a dataset spec name (`target_val`), a
        field of an earlier record (`pretrain.model`), a DERIVED name (`params`), or a tuple of
        sources (their values as a list). A source ending in `?` is optional (None when
        missing); a missing required source skips the stage.
      args: fixed keyword arguments of build (labels, the training stage, schedules).
      requires: sources that must exist for the stage to run but are not passed.
      selected_by: the --stages names that select it (default: its own name).
      done_check: the record whose existence counts as done for SELECTED_OR_DONE (default: its
        own).
      produces: RESULT, DATASETS, DATASET or RECORD.
      recorded: False for a stage that only collects other records (built on every run, no
        record of its own).
    """
    name: str
    build: Callable
    run_when: str = SELECTED
    inputs: Mapping[str, object] = dataclasses.field(default_factory=dict)
    args: Mapping[str, object] = dataclasses.field(default_factory=dict)
    requires: Tuple[str, ...] = ()
    selected_by: Tuple[str, ...] = ()
    done_check: str = ""
    produces: str = RESULT
    recorded: bool = True


def _schedule(config, kind):
    """Epochs, steps per epoch and peak learning rate of the `kind` training rows; the rows
    trained on real pairs (every kind but pretrain) also get exposure_normalization=0 with
    --nopairs_normalization."""
    if kind == "pretrain":
        return dict(epochs=config.pretrain_epochs, steps=config.pretrain_steps,
                    learning_rate=config.pretrain_learning_rate)
    on_pairs = {} if config.pairs_normalization else {"exposure_normalization": 0.0}
    if kind == "transfer":
        return dict(epochs=config.transfer_epochs, steps=config.transfer_steps,
                    learning_rate=config.transfer_learning_rate, **on_pairs)
    scratch = dict(epochs=config.scratch_epochs, steps=config.scratch_steps,
                   learning_rate=config.scratch_learning_rate, **on_pairs)
    if kind == "full":
        scratch["steps"] = config.full_steps or config.scratch_steps
    return scratch


# The device's specs of every evaluation: with --device_exposure the device's test pairs are
# also scored with the exposure curve of the draw's training subset (stages.evaluate).
DEVICE_SPECS = {"device_train": "device_train?", "device_test": "device_test?"}


def _eval(name, label, datasets, produces=RESULT, draw=0):
    """The evaluation of stage `name`'s model, on every run that holds that model."""
    return Stage(f"eval_{name}", stages.evaluate, ALWAYS, produces=produces,
                 inputs={"model_path": f"{name}.model", "datasets": datasets, **DEVICE_SPECS},
                 args={"label": label, "draw": draw})


def _main_stages(config):
    """prepare .. eval_transfer_target: the datasets, the simulation, the zero-shot model."""
    return [
        Stage("prepare", stages.prepare, ALWAYS, produces=DATASETS),
        Stage("calibrate", stages.calibrate,
              inputs={"calib_spec": "target_calib?", "val_spec": "target_val?"}),
        Stage("curve_baseline", stages.curve_baseline,
              inputs={"fit_spec": "target_calib", "val_spec": "target_val"}),
        Stage("simulated_test", stages.simulated_test, produces=DATASET,
              inputs={"bright_test": "bright_test", "params_path": "params"}),
        Stage("eval_shipped", stages.evaluate,
              inputs={"datasets": ZERO_SHOT, "model_path": "shipped_model", **DEVICE_SPECS},
              args={"label": SHIPPED_LABEL}),
        Stage("pretrain", stages.train, SELECTED_OR_DONE,
              inputs={"train_data": "bright_train", "val_data": "bright_val",
                      "params_path": "params"},
              args=dict(stage="pretrain", **_schedule(config, "pretrain"))),
        Stage("eval_pretrain", stages.evaluate_zero_shot, SELECTED_OR_DONE,
              inputs={"model_path": "pretrain.model", "datasets": ZERO_SHOT,
                      "params_path": "params", "target_val": "target_val?", **DEVICE_SPECS},
              args={"label": "ours: pretrained on simulated pairs (zero-shot)"}),
        Stage("transfer_target", stages.train, SELECTED_OR_DONE,
              inputs={"train_data": "target_calib", "init_from": "pretrain.model",
                      "params_path": "params"},
              args=dict(stage="transfer", val_data="", **_schedule(config, "transfer"))),
        _eval("transfer_target", "ours: transfer, last two blocks", ("target_val",)),
        Stage("scratch_target", stages.train, SELECTED_OR_DONE,
              inputs={"train_data": "target_calib", "params_path": "params"},
              args=dict(stage="scratch", val_data="", **_schedule(config, "scratch"))),
        _eval("scratch_target", "scratch, calibration pairs", ("target_val",)),
    ]


def _device_calibration_stages(config):
    """With --device_calibration: calibrate_device, pretrain_device and its evaluation."""
    if not config.device_calibration:
        return []
    return [
        Stage("calibrate_device", stages.calibrate_device, SELECTED_OR_DONE,
              selected_by=("calibrate_device", "pretrain_device", "transfer_device",
                           "finetune_all_device"),
              inputs={"train_spec": "device_train", "test_spec": "device_test"}),
        Stage("pretrain_device", stages.train, SELECTED_OR_DONE,
              inputs={"train_data": "bright_train", "val_data": "bright_val",
                      "params_path": "calibrate_device.params"},
              args=dict(stage="pretrain", **_schedule(config, "pretrain"))),
        _eval("pretrain_device", "ours: pretrained on device-calibrated simulation (zero-shot)",
              ("device_test",)),
    ]


def _device_stages(config):
    """The device rows on the --device_fraction subset, and full supervision."""
    fraction = config.device_fraction
    on_subset = {"train_data": "device_train", "params_path": "params"}
    transfer = dict(on_subset, init_from="device_model")
    subset = dict(val_data="", train_fraction=fraction)
    return [
        Stage("transfer_device", stages.train, SELECTED_OR_DONE, inputs=transfer,
              args=dict(stage="transfer", **subset, **_schedule(config, "transfer"))),
        _eval("transfer_device", f"ours: transfer, last two blocks, {fraction:.0%}",
              ("device_test",)),
        Stage("finetune_all_device", stages.train, SELECTED_OR_DONE, inputs=transfer,
              args=dict(stage="finetune_all", **subset, **_schedule(config, "transfer"))),
        _eval("finetune_all_device", f"ours: transfer, all layers, {fraction:.0%}",
              ("device_test",)),
        Stage("scratch_device", stages.train, SELECTED_OR_DONE, inputs=on_subset,
              args=dict(stage="scratch", **subset, **_schedule(config, "scratch"))),
        _eval("scratch_device", f"scratch, {fraction:.0%}", ("device_test",)),
        Stage("full_device", stages.train, SELECTED_OR_DONE, inputs=on_subset,
              args=dict(stage="scratch", val_data="", train_fraction=1.0,
                        **_schedule(config, "full"))),
        _eval("full_device", "scratch, 100% (full supervision)", ("device_test",)),
    ]


def _draw_stages(config):
    """With --device_subsets=N > 1: draws 1..N-1 of the device subset (seed --seed + k), each
    a transfer and a scratch row with their evaluations, then `device_subsets` collecting them.

    They run once --stages selects device_subsets or the first draw finished, and only with
    the model the device rows start from."""
    fraction = config.device_fraction
    group = dict(run_when=SELECTED_OR_DONE, selected_by=("device_subsets",),
                 done_check="transfer_device_draw1", requires=("device_model",))
    table, evaluated = [], []
    for draw in range(1, config.device_subsets):
        subset = dict(val_data="", train_fraction=fraction, seed=config.train.seed + draw)
        for kind, label in (("transfer", "ours: transfer, last two blocks"),
                            ("scratch", "scratch")):
            name = f"{kind}_device_draw{draw}"
            inputs = {"train_data": "device_train", "params_path": "params"}
            if kind == "transfer":
                inputs["init_from"] = "device_model"
            table += [Stage(name, stages.train, inputs=inputs, produces=RECORD,
                            args=dict(stage=kind, **subset, **_schedule(config, kind)), **group),
                      _eval(name, f"{label}, {fraction:.0%} (draw {draw})", ("device_test",),
                            produces=RECORD, draw=draw)]
            evaluated.append(f"eval_{name}")
    if evaluated:
        table.append(Stage("device_subsets", stages.device_subsets, recorded=False,
                           inputs={"evaluated": tuple(evaluated)}, **group))
    return table


def _adaptation_stages(config):
    """With --device_adaptation_epochs: per draw k of the device subset, the ISP simulation
    fitted on the draw's pairs, the shipped model's pretraining continued on it (every block,
    normalisation off) and scored zero-shot, its two-block transfer on the same pairs and that
    transfer's evaluation (draw 0's two rows join Table 1); then `device_adaptation` pairing
    every draw with its paper transfer and scratch rows.

    They run once --stages selects device_adaptation or draw 0's calibration finished, and
    only with the shipped model (the one the adaptation continues)."""
    if not config.device_adaptation_epochs:
        return []
    fraction = config.device_fraction
    group = dict(run_when=SELECTED_OR_DONE, selected_by=("device_adaptation",),
                 done_check="calibrate_device_isp_draw0", requires=("shipped_model",))
    adaptation = dict(stage="pretrain", val_data="", epochs=config.device_adaptation_epochs,
                      steps=config.pretrain_steps,
                      learning_rate=config.device_adaptation_learning_rate,
                      exposure_normalization=0.0)
    table, evaluated = [], {"zero_shot": [], "adapted": [], "transfer": [], "scratch": []}
    for draw in range(config.device_subsets):
        suffix, seed = f"_draw{draw}", config.train.seed + draw
        calibrate, adapt, transfer = (f"{kind}{suffix}" for kind in (
            "calibrate_device_isp", "adapt_device", "transfer_adapted_device"))
        shown = f" (draw {draw})" if draw else ""
        produces = RESULT if draw == 0 else RECORD
        table += [
            Stage(calibrate, stages.calibrate_device_isp, produces=RECORD, args={"draw": draw},
                  inputs={"train_spec": "device_train", "test_spec": "device_test"}, **group),
            Stage(adapt, stages.train, produces=RECORD, **group,
                  inputs={"train_data": "bright_train", "init_from": "shipped_model",
                          "params_path": f"{calibrate}.params"},
                  args=dict(adaptation, seed=seed)),
            _eval(adapt, "ours: shipped model adapted to the device's calibrated ISP "
                  f"simulation (zero-shot){shown}", ("device_test",), produces, draw),
            Stage(transfer, stages.train, produces=RECORD, **group,
                  inputs={"train_data": "device_train", "init_from": f"{adapt}.model",
                          "params_path": f"{calibrate}.params"},
                  args=dict(stage="transfer", val_data="", train_fraction=fraction, seed=seed,
                            **_schedule(config, "transfer"))),
            _eval(transfer, f"ours: adapted, then transfer, last two blocks, {fraction:.0%}"
                  f"{shown}", ("device_test",), produces, draw)]
        evaluated["zero_shot"].append(f"eval_{adapt}")
        evaluated["adapted"].append(f"eval_{transfer}")
        evaluated["transfer"].append(f"eval_transfer_device{suffix if draw else ''}")
        evaluated["scratch"].append(f"eval_scratch_device{suffix if draw else ''}")
    table.append(Stage("device_adaptation", stages.device_adaptation, recorded=False, **group,
                       inputs={kind: tuple(names) for kind, names in evaluated.items()}))
    return table


def stage_table(config):
    """Every stage of a run with `config`, in the order they run (see the module docstring)."""
    return (_main_stages(config) + _device_calibration_stages(config) + _device_stages(config)
            + _draw_stages(config) + _adaptation_stages(config))


@dataclasses.dataclass
class _State:
    """What the stages of this run produced so far."""
    specs: dict = dataclasses.field(default_factory=dict)  # dataset name -> spec
    records: dict = dataclasses.field(default_factory=dict)  # stage name -> record
    results: dict = dataclasses.field(default_factory=dict)  # the report's share of records


def _params_path(run, state):
    """The simulation preset of the training stages: calibrate's, else the fixed one."""
    if "calibrate" in state.records:
        return state.records["calibrate"]["params"]
    return run.config.train.simulation_params if run.config.calibration == "none" else "paper"


def _device_model(run, state):
    """The model the device rows start from: once calibrate_device ran, the model pretrained on
    its simulation (never silently the target's), else the pretrained one."""
    del run
    source = "pretrain_device" if "calibrate_device" in state.records else "pretrain"
    return state.records.get(source, {}).get("model", "")


def _shipped_model(run, state):
    """The shipped model, "" (with a note) when this install has none."""
    del state
    return stages.shipped_model_path(run)


# Inputs computed from the run's settings and earlier records (name -> fn(run, state)).
DERIVED = {"params": _params_path, "device_model": _device_model,
           "shipped_model": _shipped_model}


def _resolve(run, state, source):
    """The value of an input source (see Stage.inputs), None when it is missing."""
    if isinstance(source, tuple):
        values = [_resolve(run, state, part) for part in source]
        if any(v is None and not part.endswith("?") for part, v in zip(source, values)):
            return None
        return [v for v in values if v is not None] or None
    name = source.rstrip("?")
    if name in DERIVED:
        value = DERIVED[name](run, state)
    elif "." in name:
        stage, field = name.split(".", 1)
        value = state.records.get(stage, {}).get(field)
    else:
        value = state.specs.get(name, state.records.get(name))
    return None if value is None or value == "" else value


def _inputs(run, state, stage):
    """The keyword arguments of stage.build, or None when a required input is missing."""
    if any(_resolve(run, state, source) is None for source in stage.requires):
        return None
    kwargs = {}
    for parameter, source in stage.inputs.items():
        value = _resolve(run, state, source)
        if value is None and not (isinstance(source, str) and source.endswith("?")):
            return None
        kwargs[parameter] = value
    return dict(kwargs, **stage.args)


def _selected(run, stage, selected):
    """Whether the stage's rule runs it (before looking at its inputs)."""
    if stage.run_when == ALWAYS or selected.intersection(stage.selected_by or (stage.name,)):
        return True
    return stage.run_when == SELECTED_OR_DONE and run.done(stage.done_check or stage.name)


def _run_stage(run, state, stage, selected):
    """Run (or reuse) one stage if its rule selects it and its inputs exist; keep its record."""
    if not _selected(run, stage, selected):
        return
    kwargs = _inputs(run, state, stage)
    if kwargs is None:
        return
    if stage.recorded:
        record = run.stage(stage.name, stage.build, kwargs)
    else:
        record = stage.build(run, stage.name, **kwargs)
    state.records[stage.name] = record
    if stage.produces == RESULT:
        state.results[stage.name] = record
    elif stage.produces == DATASETS:
        state.specs.update(record["specs"])
    elif stage.produces == DATASET:
        state.specs[stage.name] = record["spec"]


def run_reproduce(config, builders, progress=print):
    """Run (or resume) every selected stage; returns the report dict (also in report.md).

    Args:
      config: a ReproduceConfig.
      builders: the DatasetBuilders that build the TFRecord datasets (tools/reproduce passes
        data_prep's).
      progress: callable(str) for progress lines, or None.

    Raises:
        ReproduceError: bad configuration or inputs, with what to do.
    """
    checks.check_config(config)
    run = Run(config, builders, progress, user_errors=USER_ERRORS)
    selected = set(s for s in config.stages.split(",") if s)
    checks.check_reachable(selected, stage_table(config))
    checks.check_same_settings(run.work_dir, config)
    os.makedirs(run.work_dir, exist_ok=True)
    write_json(os.path.join(run.work_dir, "config.json"), config.flat())
    state = _State()
    for stage in stage_table(config):
        _run_stage(run, state, stage, selected)
    # `report` is the last stage: the report dict is built on every run (it is returned), and
    # written out when selected.
    report = build_report(run, state.results, state.specs)
    if "report" in selected:
        write_report(run, report)
    return report
