"""The reproduce runner and the demo end to end on tiny generated data (lowlight_tf.reproduce)."""
import ast
import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_tool  # pylint: disable=import-error
from data_prep import builders
from lowlight_tf import data, demo, pretrained, reproduce, simulation, subsets
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import model as model_lib

# What tools/reproduce and tools/demo hand the library.
BUILDERS = builders.DATASET_BUILDERS

# A tiny U-Net and a handful of steps: every stage runs, none learns much.
TINY = dict(base_filters=4, depth=2, patch_size=32, batch_size=4, pretrain_epochs=1,
            pretrain_steps=2, transfer_epochs=1, transfer_steps=2, scratch_epochs=1,
            scratch_steps=2, warmup_steps=0, validation_steps=1, save_images=1)


def _photo(rng, size=48):
    """A smooth colourful image with edges: uint8 [size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([120 + 100 * np.sin(6 * x + c) * np.cos(4 * y) for c in range(3)], -1)
    image[size // 3:size // 2, :] = rng.uniform(30, 220, 3)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def _write_pairs(folder, stems, rng):
    for sub in ("low", "high"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for stem in stems:
        bright = _photo(rng)
        dark = np.clip(bright * 0.08 + rng.normal(0, 1, bright.shape), 0, 255).astype(np.uint8)
        Image.fromarray(bright).save(os.path.join(folder, "high", f"{stem}.png"))
        Image.fromarray(dark).save(os.path.join(folder, "low", f"{stem}.png"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_inputs")
    rng = np.random.default_rng(0)
    bright_dir = root / "bright"
    bright_dir.mkdir()
    for index in range(12):
        Image.fromarray(_photo(rng)).save(bright_dir / f"photo_{index:02d}.png")
    _write_pairs(str(root / "target"), [1, 2, 3, 10, 11, 20], rng)
    _write_pairs(str(root / "device"), list(range(1, 7)) + list(range(30, 36)) +
                 list(range(60, 66)), rng)
    return root


@pytest.mark.slow
def test_reproduce_runs_every_stage_then_resumes_without_redoing(inputs, tmp_path):
    lines = []
    config = reproduce.ReproduceConfig.create(
        work_dir=str(tmp_path / "run"), bright_dir=str(inputs / "bright"),
        bright_splits="train:0.5,val:0.25,test:0.25", target_pairs=str(inputs / "target"),
        target_calib_ids="1-3", device_pairs=str(inputs / "device"),
        device_splits="train:0.5,test:0.5", device_fraction=0.5, calibration="paper",
        tone_curve=True, exposure_spread=0.5, device_calibration=True, calibrated_exposure=True,
        device_exposure=True, device_subsets=2, full_steps=3, **TINY)
    report = reproduce.run_reproduce(config, BUILDERS, progress=lines.append)
    # The calibrated tone curve reaches the preset that pretraining and the simulated test use.
    params = json.loads((tmp_path / "run" / "simulation_params.json").read_text())
    assert np.asarray(params["tone_curve"]).shape == (3, 256)
    assert params["provenance"]["exposure_spread"] == 0.5
    # The device simulation is fitted on exactly the pairs the device transfer trains on.
    device_params = json.loads((tmp_path / "run" / "simulation_params_device.json").read_text())
    device_train = data.load_spec(report["datasets"]["device_train"])
    kept = subsets.select_fraction(device_train, 0.5, seed=config.train.seed)
    kept_ids = sorted(e["id"].decode() for e in kept.as_numpy_iterator())
    assert sorted(device_params["provenance"]["fit_ids"]) == kept_ids
    assert 0 < len(kept_ids) < sum(1 for _ in device_train)

    draw_stages = [f"{kind}_device_draw1" for kind in ("transfer", "scratch")]
    optional = ("device_subsets", "device_adaptation")
    for stage in [s for s in reproduce.STAGES[:-1] if s not in optional] + draw_stages:
        assert os.path.isfile(tmp_path / "run" / "stages" / f"{stage}.json"), stage
    models = [r for r in report["rows"] if r.get("kind") != "baseline"
              and not r["method"].startswith(reproduce.SHIPPED_LABEL)]
    datasets = {r["dataset"] for r in models}
    # pretrain on 3 test sets (+ its calibrated exposure and colour rows on the target and on the
    # device), the device model (+ the device's two), 6 trained rows (transfer and scratch on the
    # target's calibration pairs; 4 device rows, each + the device's two)
    assert len(models) == 3 + 2 + 2 + (1 + 2) + 2 + 4 * 3
    scratch_target = [r for r in models if r["method"] == "scratch, calibration pairs"]
    assert [r["dataset"] for r in scratch_target] == ["target:val"]
    for suffix in ("+ calibrated exposure", "+ calibrated colour"):
        anchored = [r["dataset"] for r in models if r["method"].endswith(suffix)]
        assert sorted(anchored) == ["device:test"] * 6 + ["target:val"], suffix
    # Each draw's device rows take the exposure curve of the pairs that draw trains on.
    for draw in (0, 1):
        kept = subsets.select_fraction(device_train, 0.5, seed=config.train.seed + draw)
        ids = ",".join(sorted(e["id"].decode() for e in kept.as_numpy_iterator()))
        said = [line.split(": ", 1)[1] for line in lines
                if line.startswith(f"  the device's exposure curve (draw {draw})")]
        assert said and all(",".join(sorted(text.split(","))) == ids for text in said), draw
    assert any("simulated_test" in d for d in datasets)
    assert any("target" in d for d in datasets) and any("device" in d for d in datasets)
    baselines = [r for r in report["rows"] if r.get("kind") == "baseline"]
    assert len(baselines) == 4 * 3 + 2  # four baselines per test set + two calibrated curves
    curve_rows = [r for r in baselines if r["method"].startswith("calibrated curve")]
    assert [r["dataset"] for r in curve_rows] == ["target:val", "device:test"]
    for row in report["rows"]:
        assert 0.0 < row["psnr"] < 100.0 and -1.0 <= row["ssim"] <= 1.0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| PSNR (dB) |" in text and "GT-mean PSNR" in text and "Paper: ours, zero-shot" in text
    assert "## Device simulation" in text
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["rows"]) == len(report["rows"])
    # Paired comparisons, e.g. transfer vs scratch: the mean of the per-image differences.
    by_pair = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    assert len(by_pair) == len(reproduce.COMPARISONS)
    compared = by_pair[("ours: transfer, last two blocks, 50%", "scratch, 50%")]

    def per_image(stage, method):
        path = tmp_path / "run" / "evaluations" / f"eval_{stage}" / "per_image.csv"
        with open(path, newline="", encoding="utf-8") as f:
            return {r["id"]: float(r["psnr"]) for r in csv.DictReader(f) if r["method"] == method}
    transfer = per_image("transfer_device", compared["a"])
    scratch = per_image("scratch_device", compared["b"])
    assert compared["images"] == len(transfer) == len(scratch) > 0
    assert compared["mean"] == pytest.approx(
        np.mean([transfer[i] - scratch[i] for i in transfer]), abs=1e-3)
    assert compared["low"] <= compared["mean"] <= compared["high"]
    # ... and the same two rows with the device's calibrated exposure, paired on the same images.
    suffix = " + calibrated exposure"
    calibrated = by_pair[(compared["a"] + suffix, compared["b"] + suffix)]
    transfer_cal = per_image("transfer_device", calibrated["a"])
    scratch_cal = per_image("scratch_device", calibrated["b"])
    assert calibrated["images"] == compared["images"] and transfer_cal != transfer
    assert calibrated["mean"] == pytest.approx(
        np.mean([transfer_cal[i] - scratch_cal[i] for i in transfer_cal]), abs=1e-3)
    assert "## Paired differences" in text and "scratch, 50%: " in text
    # The second draw of the 50% subset trains on seed 1; the summary spans both draws.
    assert "--seed=1" in (tmp_path / "run" / "models" / "scratch_device_draw1" /
                          "flags.txt").read_text()
    draws_summary = summary["device_subsets"]
    assert [(d["draw"], d["seed"]) for d in draws_summary["draws"]] == [(0, 0), (1, 1)]
    assert draws_summary["draws"][0]["margin"]["mean"] == pytest.approx(compared["mean"])
    assert draws_summary["draws"][0]["calibrated"]["margin"]["mean"] == pytest.approx(
        calibrated["mean"])
    assert draws_summary["calibrated"]["margin_psnr"]["mean"] == pytest.approx(
        np.mean([d["calibrated"]["margin"]["mean"] for d in draws_summary["draws"]]))
    assert "with the device's calibrated exposure: PSNR / SSIM" in text
    assert draws_summary["transfer_psnr"]["mean"] == pytest.approx(
        np.mean([d["transfer"]["psnr"] for d in draws_summary["draws"]]))
    draw_rows = [r for r in report["rows"] if "(draw" in r["method"]]
    assert not draw_rows  # the draws have their own table, not Table 1 rows
    assert "drawn 2 times" in text
    # The transfer stage trained only the default blocks, from the pretrained model.
    flags_text = (tmp_path / "run" / "models" / "transfer_device" / "flags.txt").read_text()
    assert "--stage=transfer" in flags_text and "--train_fraction=0.5" in flags_text
    assert "models/pretrain_device/" in flags_text  # from the device model, not the target's
    # Full supervision has its own steps per epoch; scratch on the subset keeps scratch_steps.
    for stage, steps in (("full_device", 3), ("scratch_device", 2)):
        text_of = (tmp_path / "run" / "models" / stage / "flags.txt").read_text()
        assert f"--steps_per_epoch={steps}\n" in text_of, stage
    assert "simulation_params_device.json" in (
        tmp_path / "run" / "models" / "pretrain_device" / "flags.txt").read_text()

    final = tmp_path / "run" / "models" / "pretrain" / "final.keras"
    mtime = final.stat().st_mtime_ns
    again = []
    second = reproduce.run_reproduce(config, BUILDERS, progress=again.append)
    assert final.stat().st_mtime_ns == mtime
    records = os.listdir(tmp_path / "run" / "stages")
    # 14 stages + 7 evaluations of trained models + 2 draws, evaluated, + the shipped model's
    assert "eval_shipped.json" in records
    assert len(records) == 26
    assert sum("finished earlier" in line for line in again) == len(records)
    assert [r["psnr"] for r in second["rows"]] == [r["psnr"] for r in report["rows"]]
    # The number of draws may change between runs of a work_dir; one draw reports none.
    fewer = reproduce.run_reproduce(dataclasses.replace(config, device_subsets=1), BUILDERS,
                                    progress=None)
    assert fewer["device_subsets"] == {} and len(fewer["rows"]) == len(report["rows"])


def test_bad_configuration_says_what_to_do(inputs, tmp_path, monkeypatch):
    with pytest.raises(reproduce.ReproduceError, match="--device_subsets=0"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "s"), device_subsets=0), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError, match="target_calib_ids"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path), target_pairs=str(inputs / "target")), BUILDERS,
            progress=None)
    with pytest.raises(reproduce.ReproduceError, match="is not a folder"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path), bright_dir=str(tmp_path / "missing")), BUILDERS,
            progress=None)
    with pytest.raises(reproduce.ReproduceError, match="no --target_pairs"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "w"), bright_dir=str(inputs / "bright"), calibration="joint",
            bright_splits="train:0.5,val:0.25,test:0.25"), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError, match="--tone_curve.*fixed preset"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "t"), bright_dir=str(inputs / "bright"),
            calibration="none", simulation_params="paper.json", tone_curve=True,
            bright_splits="train:0.5,val:0.25,test:0.25"), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError, match="--device_calibration.*fixed preset"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "d"), calibration="none", simulation_params="paper.json",
            device_calibration=True, device_pairs=str(inputs / "device")), BUILDERS,
            progress=None)
    # A stage these flags leave out is an error when named, not a silent no-op.
    with pytest.raises(reproduce.ReproduceError, match="calibrate_device.*--device_calibration"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "c"), device_pairs=str(inputs / "device"),
            stages="prepare,calibrate_device"), BUILDERS, progress=None)
    assert not (tmp_path / "c").exists()
    with pytest.raises(reproduce.ReproduceError, match="device_subsets.*above 1"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "c"), device_subsets=1, stages="device_subsets"),
            BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError, match="--device_calibration needs --device_pairs"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "e"), device_calibration=True), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError, match="--device_exposure needs --device_pairs"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "f"), device_exposure=True), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError,
                       match="--device_adaptation_epochs needs --device_pairs"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "h"), device_adaptation_epochs=1), BUILDERS, progress=None)
    with pytest.raises(reproduce.ReproduceError,
                       match="device_adaptation needs --device_adaptation_epochs above 0"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "h"), device_pairs=str(inputs / "device"),
            stages="prepare,device_adaptation"), BUILDERS, progress=None)
    with monkeypatch.context() as patch:  # an installation without the shipped model
        patch.setattr(pretrained, "PRETRAINED_DIR", str(tmp_path / "no_model"))
        with pytest.raises(reproduce.ReproduceError, match="continues the shipped model.*none"):
            reproduce.run_reproduce(reproduce.ReproduceConfig.create(
                work_dir=str(tmp_path / "h"), device_pairs=str(inputs / "device"),
                device_adaptation_epochs=1), BUILDERS, progress=None)
    assert not (tmp_path / "h").exists()  # refused before any work
    authors = tmp_path / "authors.json"  # a fixed preset without an exposure curve
    simulation.save_preset(simulation.load_preset("paper"), str(authors))
    with pytest.raises(reproduce.ReproduceError, match="--calibrated_exposure.*lacks"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "g"), calibration="none", simulation_params=str(authors),
            calibrated_exposure=True), BUILDERS, progress=None)
    assert not (tmp_path / "g").exists()  # refused before any work
    with pytest.raises(reproduce.ReproduceError, match="--exposure_spread.*fixed preset"):
        reproduce.run_reproduce(reproduce.ReproduceConfig.create(
            work_dir=str(tmp_path / "f"), calibration="none", simulation_params="paper.json",
            exposure_spread=0.5), BUILDERS, progress=None)


def test_resuming_with_other_settings_is_refused_before_any_work(inputs, tmp_path):
    old = reproduce.ReproduceConfig.create(work_dir=str(tmp_path / "run"),
                                           bright_dir=str(inputs / "bright"))
    (tmp_path / "run").mkdir()
    settings = old.flat()
    del settings["ssim_weight"]  # a config.json from before that flag existed
    (tmp_path / "run" / "config.json").write_text(json.dumps(settings))
    changed = reproduce.ReproduceConfig.create(
        **dict(settings, patch_size=128, ssim_weight=0.5, stages="prepare"))
    with pytest.raises(reproduce.ReproduceError, match=r"--patch_size: 64 -> 128.*--ssim_weight"):
        reproduce.run_reproduce(changed, BUILDERS, progress=None)
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json"]  # nothing was built
    assert "ssim_weight" not in json.loads((tmp_path / "run" / "config.json").read_text())


@pytest.mark.slow
def test_reproduce_cli_rejects_unknown_flags_with_status_2(tmp_path):
    result = run_tool("reproduce", f"--work_dir={tmp_path}", "--no_such_flag=1")
    assert result.returncode == 2
    assert "no_such_flag" in result.stderr


@pytest.mark.slow
def test_demo_runs_offline_and_enhances(tmp_path):
    lines = []
    report = demo.run_demo(str(tmp_path / "demo"), BUILDERS, progress=lines.append,
                           enhance_images=1,
                           **{k: v for k, v in TINY.items() if not k.startswith(
                               ("transfer", "scratch"))})
    assert (tmp_path / "demo" / "report.md").is_file()
    assert report["enhanced"] and all(os.path.isfile(p) for p in report["enhanced"])
    enhanced = np.asarray(Image.open(report["enhanced"][0]))
    assert enhanced.ndim == 3 and enhanced.shape[2] == 3
    assert any("Demo finished" in line for line in lines)
    methods = {r["method"] for r in report["rows"]}
    assert {"input", "gamma 0.4", "histogram equalisation"} <= methods
    assert any(m.startswith("ours") for m in methods)


# The library's modules that run data_prep's steps, handed in by their callers (tools/).
ORCHESTRATION = ("lowlight_tf/reproduce.py", "lowlight_tf/reproduce_run.py",
                 "lowlight_tf/reproduce_stages.py", "lowlight_tf/reproduce_report.py",
                 "lowlight_tf/demo.py", "lowlight_tf/training.py")


def test_orchestration_modules_never_import_data_prep():
    for path in ORCHESTRATION:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] == "data_prep"], (path, node.lineno)
            if path.startswith(("lowlight_tf/reproduce", "lowlight_tf/demo")) and isinstance(
                    node, ast.FunctionDef):
                local = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not local, f"{path}:{node.name} imports inside the function"


def test_importing_the_library_never_imports_data_prep():
    code = ("import lowlight_tf.reproduce, lowlight_tf.training, lowlight_tf.demo; import sys; "
            "assert not any(m.startswith('data_prep') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('data_prep'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]


def test_isp_calibration_feeds_the_simulated_test_set(inputs, tmp_path):
    config = reproduce.ReproduceConfig.create(
        work_dir=str(tmp_path / "run"), bright_dir=str(inputs / "bright"),
        bright_splits="train:0.5,val:0.25,test:0.25", target_pairs=str(inputs / "target"),
        target_calib_ids="1-3", calibration="isp", tone_curve=True,
        stages="prepare,calibrate,simulated_test", **TINY)
    report = reproduce.run_reproduce(config, BUILDERS, progress=None)
    preset = simulation.load_preset(str(tmp_path / "run" / "simulation_params.json"))
    assert preset.model == "isp" and preset.tone_curve is not None
    assert preset.provenance["fit_ids"] == ["1.png", "2.png", "3.png"]
    stored = list(data.load_spec(report["datasets"]["simulated_test"]).as_numpy_iterator())
    assert stored and all(e["params"].shape == (4,) and e["noise_peak"] == 0 for e in stored)
    with pytest.raises(reproduce.ReproduceError, match="--exposure_spread=0.5"):
        reproduce.run_reproduce(dataclasses.replace(config, exposure_spread=0.5), BUILDERS,
                                progress=None)


@pytest.mark.slow
def test_device_adaptation_pairs_each_draw_with_its_transfer_and_scratch(inputs, tmp_path):
    """--device_adaptation_epochs (issue 16's lever A): per draw, the ISP simulation fitted on
    that draw's pairs, the shipped model continued on it with the normalisation off, then its
    two-block transfer on the same pairs; the report pairs each draw with its own rows."""
    config = reproduce.ReproduceConfig.create(
        work_dir=str(tmp_path / "run"), bright_dir=str(inputs / "bright"),
        bright_splits="train:0.5,val:0.25,test:0.25", device_pairs=str(inputs / "device"),
        device_splits="train:0.5,test:0.5", device_fraction=0.5, calibration="none",
        device_subsets=2, device_adaptation_epochs=1, exposure_normalization=10 / 255,
        pairs_normalization=False,
        stages="prepare,pretrain,transfer_device,scratch_device,device_subsets,"
               "device_adaptation,report", **TINY)
    report = reproduce.run_reproduce(config, BUILDERS, progress=None)
    run = tmp_path / "run"
    # --nopairs_normalization: the pretrained model normalises, the rows on real pairs do not.
    for stage, normalising in (("pretrain", True), ("transfer_device", False),
                               ("scratch_device", False), ("transfer_device_draw1", False)):
        model = model_lib.load_model(str(run / "models" / stage / model_lib.FINAL_MODEL_NAME))
        assert (exposure_lib.exposure_layer(model) is not None) == normalising, stage
    device_train = data.load_spec(report["datasets"]["device_train"])
    for draw in (0, 1):
        # The draw's simulation is the ISP model fitted on exactly the pairs the draw trains on.
        params = json.loads((run / f"simulation_params_calibrate_device_isp_draw{draw}.json")
                            .read_text())
        kept = subsets.select_fraction(device_train, 0.5, seed=config.train.seed + draw)
        assert params["model"] == "isp" and np.asarray(params["tone_curve"]).shape == (3, 256)
        assert sorted(params["provenance"]["fit_ids"]) == sorted(
            e["id"].decode() for e in kept.as_numpy_iterator())
        adapt_flags = (run / "models" / f"adapt_device_draw{draw}" / "flags.txt").read_text()
        for expected in (f"--init_from={pretrained.model_path()}", "--stage=pretrain",
                         "--exposure_normalization=0.0", f"--seed={draw}", "--epochs=1\n",
                         f"simulation_params_calibrate_device_isp_draw{draw}.json"):
            assert expected in adapt_flags, expected
        adapted = model_lib.load_model(str(run / "models" / f"adapt_device_draw{draw}" /
                                           model_lib.FINAL_MODEL_NAME))
        assert exposure_lib.exposure_layer(adapted) is None
        transfer_flags = (run / "models" / f"transfer_adapted_device_draw{draw}" /
                          "flags.txt").read_text()
        assert f"models/adapt_device_draw{draw}/" in transfer_flags
        assert "--train_fraction=0.5" in transfer_flags and f"--seed={draw}" in transfer_flags
    # Draw 0's two rows join Table 1; draw 1's live in the adaptation's table only.
    methods = [r["method"] for r in report["rows"]]
    assert sum(m.startswith("ours: adapted, then transfer") for m in methods) == 1
    assert sum(m.startswith("ours: shipped model adapted") for m in methods) == 1
    assert not [m for m in methods if "(draw 1)" in m]
    summary = json.loads((run / "summary.json").read_text())["device_adaptation"]
    assert [d["draw"] for d in summary["draws"]] == [0, 1]

    def per_image(stage):
        path = run / "evaluations" / f"eval_{stage}" / "per_image.csv"
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["gain"] in ("", "1", "1.0")]
        method = rows[0]["method"]
        return {r["id"]: float(r["psnr"]) for r in rows if r["method"] == method}
    adapted_1 = per_image("transfer_adapted_device_draw1")
    scratch_1 = per_image("scratch_device_draw1")
    transfer_0 = per_image("transfer_device")
    adapted_0 = per_image("transfer_adapted_device_draw0")
    assert summary["draws"][1]["adapted-scratch"]["mean"] == pytest.approx(
        np.mean([adapted_1[i] - scratch_1[i] for i in adapted_1]), abs=1e-3)
    assert summary["draws"][0]["adapted-transfer"]["mean"] == pytest.approx(
        np.mean([adapted_0[i] - transfer_0[i] for i in adapted_0]), abs=1e-3)
    assert summary["adapted-scratch"]["mean"] == pytest.approx(
        np.mean([d["adapted-scratch"]["mean"] for d in summary["draws"]]))
    assert summary["adapted_psnr"]["mean"] == pytest.approx(
        np.mean([d["adapted"]["psnr"] for d in summary["draws"]]))
    assert "## The device adaptation" in (run / "report.md").read_text()
