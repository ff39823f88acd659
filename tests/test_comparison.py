"""Paired comparison of two evaluations with a scene bootstrap (lowlight_tf.comparison)."""
import os

import numpy as np
import pytest

from conftest import run_tool  # pylint: disable=import-error
from lowlight_tf import comparison, evaluation_report


def _scores(values, dataset="device:test"):
    """{(dataset, 'N.png'): {metric: value}} from {N: psnr}; SSIM and GT-mean follow PSNR."""
    return {(dataset, f"{n}.png"): {"psnr": v, "psnr_gt_mean": v + 1.0, "ssim": v / 100.0}
            for n, v in values.items()}


def test_mean_is_the_image_mean_of_the_paired_differences():
    a = _scores({1: 20.0, 2: 22.0, 3: 21.0, 10: 18.0, 11: 19.0, 20: 25.0})
    b = _scores({1: 19.0, 2: 22.5, 3: 20.0, 10: 18.0, 11: 17.0, 20: 24.0, 30: 5.0})
    result = comparison.paired_difference(a, b)
    # Image 30 is only in B and is left out; differences 1, -0.5, 1, 0, 2, 1.
    assert result.images == 6 and result.scenes == 3
    assert result.mean == pytest.approx(4.5 / 6)
    assert result.a_better == 4
    assert result.low <= result.mean <= result.high
    ssim = comparison.paired_difference(a, b, metric="ssim")
    assert ssim.mean == pytest.approx(4.5 / 6 / 100.0)
    assert comparison.paired_difference(a, b, seed=3) == comparison.paired_difference(a, b, seed=3)


def test_interval_resamples_scenes_not_images():
    # Two scenes of ten images each: every image of scene 1 is +1 dB, of scene 21 -1 dB. An image
    # bootstrap would give a narrow interval around 0; resampling the two scenes gives draws of
    # -1 (both 21), 0 (one each) and +1 (both 1), a quarter each at the ends.
    a = _scores({**{n: 21.0 for n in range(1, 11)}, **{n: 19.0 for n in range(21, 31)}})
    b = _scores({n: 20.0 for n in list(range(1, 11)) + list(range(21, 31))})
    result = comparison.paired_difference(a, b, resamples=4000)
    assert result.scenes == 2 and result.mean == pytest.approx(0.0)
    assert result.low == pytest.approx(-1.0) and result.high == pytest.approx(1.0)


def test_one_scene_gives_the_point_and_datasets_are_separate_scenes():
    a = _scores({4: 21.0, 5: 23.0})
    b = _scores({4: 20.0, 5: 20.0})
    result = comparison.paired_difference(a, b)
    assert result.scenes == 1 and result.low == result.high == pytest.approx(2.0)
    # The same numbers in two datasets are two scenes.
    a.update(_scores({4: 21.0}, dataset="other:test"))
    b.update(_scores({4: 21.0}, dataset="other:test"))
    assert comparison.paired_difference(a, b).scenes == 2


def test_bad_inputs_are_refused_with_the_reason():
    a, b = _scores({1: 20.0}), _scores({2: 20.0})
    with pytest.raises(comparison.ComparisonError, match="share no"):
        comparison.paired_difference(a, b)
    with pytest.raises(comparison.ComparisonError, match="metric"):
        comparison.paired_difference(a, a, metric="mae")
    with pytest.raises(comparison.ComparisonError, match="confidence"):
        comparison.paired_difference(a, a, confidence=1.5)


def _write_evaluation(folder, model_psnr):
    """An evaluation folder written by lowlight_tf.evaluation_report.write_reports: a model row, its
    calibrated-exposure row and a baseline, on images {N: psnr}."""
    os.makedirs(folder, exist_ok=True)
    per_image, rows = [], []
    methods = {"model A": ("model", 0.0), "model A + calibrated exposure": ("model", -1.0),
               "gamma 0.4": ("baseline", -8.0)}
    for method, (kind, offset) in methods.items():
        for n, psnr in model_psnr.items():
            per_image.append({"dataset": "device:test", "id": f"{n}.png", "method": method,
                              "psnr": psnr + offset, "psnr_gt_mean": psnr + 1.0, "ssim": 0.5})
        rows.append({"method": method, "kind": kind, "dataset": "device:test",
                     "psnr": float(np.mean(list(model_psnr.values()))) + offset,
                     "psnr_gt_mean": 0.0, "ssim": 0.5, "images": len(model_psnr)})
    evaluation_report.write_reports(str(folder), rows, per_image, settings={})
    return str(folder)


def test_read_per_image_takes_the_model_row_unless_told(tmp_path):
    folder = _write_evaluation(tmp_path / "a", {1: 20.0, 2: 22.0})
    method, values = comparison.read_per_image(folder)
    assert method == "model A"
    assert values[("device:test", "2.png")]["psnr"] == pytest.approx(22.0)
    method, values = comparison.read_per_image(os.path.join(folder, "per_image.csv"),
                                               "gamma 0.4")
    assert values[("device:test", "1.png")]["psnr"] == pytest.approx(12.0)
    with pytest.raises(comparison.ComparisonError, match="'model A', 'model A \\+ calibrated"):
        comparison.read_per_image(folder, "model B")
    with pytest.raises(comparison.ComparisonError, match="does not exist"):
        comparison.read_per_image(str(tmp_path / "missing"))


def test_format_difference_states_interval_and_counts():
    result = comparison.PairedDifference(metric="psnr", mean=0.29, low=-1.06, high=1.86,
                                         confidence=0.95, images=66, scenes=10, a_better=36)
    assert comparison.format_difference("transfer", "scratch", result) == (
        "transfer - scratch: +0.29 dB PSNR (95% CI -1.06 to +1.86; 66 images, 10 scenes, "
        "higher on 36)")


def test_spread_over_draws_and_its_line():
    assert comparison.spread([1.17, 0.33, 1.34]) == pytest.approx(
        {"mean": 0.9467, "std": 0.5408, "min": 0.33, "max": 1.34}, abs=1e-4)
    assert comparison.spread([2.0]) == {"mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0}
    with pytest.raises(comparison.ComparisonError, match="at least one"):
        comparison.spread([])
    results = [comparison.PairedDifference(metric="psnr", mean=m, low=m - 1, high=m + 1,
                                           confidence=0.95, images=66, scenes=10, a_better=40)
               for m in (1.17, -0.33, 1.34)]
    assert comparison.format_spread("transfer", "scratch", results) == (
        "over 3 draws, transfer - scratch: +0.73 ± 0.92 dB PSNR (min -0.33, max +1.34; "
        "transfer higher on 2 of 3 draws)")


@pytest.mark.slow
def test_compare_cli(tmp_path):
    a = _write_evaluation(tmp_path / "a", {1: 21.0, 2: 23.0, 7: 20.0})
    b = _write_evaluation(tmp_path / "b", {1: 20.0, 2: 20.0, 7: 20.0, 9: 3.0})
    done = run_tool("compare", a, b, "--metrics=psnr")
    assert done.returncode == 0, done.stderr
    assert "3 images both evaluated (0 only in A, 1 only in B)" in done.stdout
    assert "A - B: +1.33 dB PSNR" in done.stdout and "2 scenes" in done.stdout
    missing = run_tool("compare", a, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    assert run_tool("compare", a).returncode == 2
    assert run_tool("compare", a, b, "--metrics=mae").returncode == 2
    # Exposure sweeps: --gain picks the rows of one input gain in both files.
    for folder, values in ((tmp_path / "sa", (20.0, 30.0)), (tmp_path / "sb", (20.0, 25.0))):
        folder.mkdir()
        (folder / "per_image.csv").write_text(
            "dataset,id,method,gain,psnr,psnr_gt_mean,ssim\n"
            f"d:test,1.png,m,1,{values[0]},21.0,0.2\nd:test,1.png,m,2,{values[1]},31.0,0.3\n")
    sweep = [str(tmp_path / "sa"), str(tmp_path / "sb"), "--metrics=psnr"]
    assert "A - B: +0.00 dB PSNR" in run_tool("compare", *sweep).stdout
    at_two = run_tool("compare", *sweep, "--gain=2")
    assert "at input gain 2" in at_two.stdout and "A - B: +5.00 dB PSNR" in at_two.stdout
    missing_gain = run_tool("compare", *sweep, "--gain=4")
    assert missing_gain.returncode == 2 and "gain 4" in missing_gain.stderr
    # Pairs of folders (one per draw): each pair, then the spread over pairs; --row reads each
    # folder's model row with a suffix (model A + calibrated exposure is model A - 1 dB).
    c = _write_evaluation(tmp_path / "c", {1: 20.0, 2: 20.0, 7: 23.0})
    draws = run_tool("compare", a, b, c, b, "--metrics=psnr", "--row=calibrated exposure")
    assert draws.returncode == 0, draws.stderr
    assert "pair 2 of 2" in draws.stdout and "A: model A + calibrated exposure" in draws.stdout
    assert "over 2 draws, A - B: +1.17 ± 0.24 dB PSNR (min +1.00, max +1.33" in draws.stdout
    assert run_tool("compare", a, b, c).returncode == 2  # an odd number of folders
    both = run_tool("compare", a, b, "--row=calibrated exposure", "--method_a=model A")
    assert both.returncode == 2 and "--row" in both.stderr


def test_read_per_image_takes_one_gain_of_an_exposure_sweep(tmp_path):
    # An exposure sweep writes one row per (image, gain); each gain must be read on its own,
    # never one gain's row silently replacing another's.
    path = tmp_path / "per_image.csv"
    path.write_text("dataset,id,method,gain,psnr,psnr_gt_mean,ssim\n"
                    "d:test,1.png,m,0.5,10.0,11.0,0.1\n"
                    "d:test,1.png,m,1,20.0,21.0,0.2\n"
                    "d:test,1.png,m,2,30.0,31.0,0.3\n")
    _, at_one = comparison.read_per_image(str(path), method="m")
    assert at_one[("d:test", "1.png")]["psnr"] == 20.0
    _, at_two = comparison.read_per_image(str(path), method="m", gain=2.0)
    assert at_two[("d:test", "1.png")]["psnr"] == 30.0
    with pytest.raises(comparison.ComparisonError, match="gain 4"):
        comparison.read_per_image(str(path), method="m", gain=4.0)
