"""Tests of lowlight_tf.calibration and tools/calibrate_simulation on synthetic pairs."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import run_tool  # pylint: disable=import-error
from lowlight_tf import calibration, curves, simulation

TRUE_PARAMS = np.asarray([20.0, 0.30, 0.22, 0.35, 1.0])


def synthetic_bright(seed, shape=(96, 128)):
    """A textured, smooth-ish RGB image with values spread over [0, 255]."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape + (3,)), sigma=(6, 6, 0))
    field = (field - field.min()) / (field.max() - field.min())
    ramp = np.linspace(0, 1, shape[1])[None, :, None]
    texture = rng.uniform(-0.03, 0.03, size=shape + (3,))
    return np.clip(255 * (0.55 * field + 0.45 * ramp + texture), 0, 255).round().astype(np.float32)


def synthetic_dark(bright, params, *, noise_peak=None, seed=0):
    """Dark image from the TF simulation: noise-free float, or noisy and 8-bit quantised."""
    if noise_peak is None:
        steps, quantize = ("bl", "cd", "gc"), False
    else:
        steps, quantize = simulation.STEPS, True
    return simulation.simulate(bright[None], np.asarray(params, np.float32)[None],
                               seed=[seed, 0], steps=steps, noise_peak=noise_peak or 1.0,
                               quantize=quantize).numpy()[0]


def test_paper_estimators_by_hand():
    bright = np.asarray([[[100.0, 100.0, 100.0], [200.0, 200.0, 200.0]],
                         [[3.0, 3.0, 3.0], [255.0, 255.0, 255.0]]])
    dark = np.asarray([[[20.0, 10.0, 40.0], [60.0, 30.0, 80.0]],
                       [[1.0, 1.0, 1.0], [254.0, 254.0, 254.0]]])
    # Pixels in [5, 250] in both images: the first row only.
    level = np.mean([80, 90, 60, 140, 170, 120])  # 110
    corrected = np.maximum(np.asarray([100.0, 200.0]) - level, 0)  # [0, 90]
    # only the 200-valued pixel stays in range
    weights = [60 / corrected[1], 30 / corrected[1], 80 / corrected[1]]
    linear = corrected[1] * np.asarray(weights)  # [60, 30, 80]: equal to dark, so exponent 1
    estimate = calibration.estimate_paper(dark, bright)
    np.testing.assert_allclose(estimate, [level] + weights + [1.0])
    assert np.all(linear == dark[0, 1])


@pytest.mark.slow
def test_fit_composite_recovers_parameters_noise_free():
    bright = synthetic_bright(1)
    dark = synthetic_dark(bright, TRUE_PARAMS)
    params, rms = calibration.fit_composite(dark, bright)
    np.testing.assert_allclose(params, TRUE_PARAMS, rtol=2e-3, atol=0.05)
    assert rms < 0.01


@pytest.mark.slow
def test_joint_fit_recovers_parameters_and_noise_peak_noisy():
    bright = synthetic_bright(2)
    peak = 400.0
    dark = synthetic_dark(bright, TRUE_PARAMS, noise_peak=peak, seed=5)
    fit = calibration.fit_joint(dark, bright, exponents=(0.6, 1.0, 1.6))
    assert fit["params"][4] == 1.0  # brightness and noise pick the true exponent
    np.testing.assert_allclose(fit["params"][:4], TRUE_PARAMS[:4], rtol=0.03, atol=1.5)
    assert peak / 1.5 < fit["noise_peak"] < peak * 1.5


@pytest.mark.slow
def test_calibrate_distribution_and_fidelity():
    pairs = []
    for index in range(4):
        params = TRUE_PARAMS + [index * 3.0, 0.02 * index, 0, 0, 0]
        bright = synthetic_bright(10 + index, shape=(64, 80))
        pairs.append(calibration.Pair(str(index), synthetic_dark(bright, params), bright))
    preset, rows = calibration.calibrate(pairs[:3], method="joint", holdout_pairs=pairs[3:],
                                         noise_peak=1e5, draws=2, progress=None)
    np.testing.assert_allclose(preset.mean[:2], [23.0, 0.32], rtol=0.02)
    assert preset.cov.shape == (5, 5) and preset.cov[0, 0] == pytest.approx(9.0, rel=0.05)
    own = [row for row in rows if row["condition"] == "own_clean"]
    assert len(own) == 1 and own[0]["psnr"] > 40
    summary = calibration.summarise_fidelity(rows)
    assert set(summary) == {"own_clean", "own_noisy", "mean_noisy", "drawn_noisy"}
    table = calibration.format_fidelity_table(rows)
    assert "drawn_noisy" in table and "real" in table


def convex_tone_curve():
    """A highlight-expanding camera curve, T(v) = 255 (v / 255)^3, per channel: float [3, 256]."""
    return np.tile(255.0 * (np.arange(256) / 255.0) ** 3, (3, 1))


def test_fit_tone_curve_recovers_curve_and_gains():
    curve = convex_tone_curve()
    true_gains = np.asarray([[0.10, 0.12, 0.08], [0.2, 0.25, 0.15], [0.05, 0.05, 0.06]])
    pairs = []
    for index, gains in enumerate(true_gains):
        bright = synthetic_bright(30 + index, shape=(64, 80))
        pairs.append(calibration.Pair(str(index), curves.tone_map(bright, curve) * gains,
                                      bright))
    fitted, gains = calibration.fit_tone_curve(pairs, min_pixels=5)
    # The curve is identifiable only up to a scale per channel (the gains absorb it): compare
    # shapes over well-measured values (the synthetic images rarely leave [40, 220]).
    ratio = fitted[:, 40:221] / curve[:, 40:221]
    scale = np.median(ratio, axis=1, keepdims=True)
    np.testing.assert_allclose(ratio, np.broadcast_to(scale, ratio.shape), rtol=0.01)
    np.testing.assert_allclose(gains * scale.T, true_gains, rtol=0.01)
    assert np.all(np.diff(fitted, axis=1) >= 0) and np.allclose(fitted[:, -1], 255.0)
    with pytest.raises(calibration.CalibrationError, match="at least one pair"):
        calibration.fit_tone_curve([])


@pytest.mark.slow
def test_calibrate_with_tone_curve_models_a_curved_camera():
    grid = np.arange(256.0)  # a highlight knee, which no single power law follows
    curve = np.tile(np.where(grid <= 160, 0.25 * grid, 40.0 + (grid - 160.0) * 215.0 / 95.0),
                    (3, 1))
    pairs = []
    for index in range(4):
        bright = synthetic_bright(40 + index, shape=(64, 80))
        params = TRUE_PARAMS + [0, 0.05 * index, 0.05 * index, 0.05 * index, 0]
        dark = synthetic_dark(curves.tone_map(bright, curve), params, noise_peak=400.0,
                              seed=index)  # noise lets the joint fit choose the exponent
        pairs.append(calibration.Pair(str(index), dark, bright))
    scores = {}
    for tone_curve in (False, True):
        preset, rows = calibration.calibrate(pairs[:3], method="joint", holdout_pairs=pairs[3:],
                                             draws=1, tone_curve=tone_curve,
                                             progress=None)
        assert (preset.tone_curve is not None) == tone_curve
        if tone_curve:  # the curve holds the camera's floor: black level 0
            assert preset.mean[0] == 0.0 and preset.cov[0, 0] == 0.0
        scores[tone_curve] = [row["psnr"] for row in rows if row["condition"] == "own_clean"][0]
        # The exposure curve is the fit pairs' own dark->bright curve (not tone-mapped ones).
        np.testing.assert_allclose(preset.exposure_curve,
                                   curves.fit_dark_to_bright_curve(pairs[:3]))
    # The composite alone cannot bend like the camera; with the fitted curve it fits closely.
    assert scores[True] > 38 and scores[True] > scores[False] + 1.5, scores


def write_pair_folder(root, count=4, sixteen_bit_first=False):
    for sub in ("low", "high"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for index in range(count):
        bright = synthetic_bright(20 + index, shape=(48, 64))
        params = TRUE_PARAMS + [2.0 * index, 0, 0, 0, 0]
        dark = synthetic_dark(bright, params, noise_peak=2000.0, seed=index)
        name = f"{index * 10 + 1}.png"
        Image.fromarray(bright.astype(np.uint8)).save(os.path.join(root, "high", name))
        if sixteen_bit_first and index == 0:
            Image.fromarray((dark[..., 1] * 257).astype(np.uint16)).save(
                os.path.join(root, "low", name))
        else:
            Image.fromarray(dark.astype(np.uint8)).save(os.path.join(root, "low", name))


def test_load_pair_folder_and_split(tmp_path):
    write_pair_folder(str(tmp_path), sixteen_bit_first=True)
    pairs = calibration.load_pairs(str(tmp_path))
    assert [p.id for p in pairs] == ["1", "11", "21", "31"]
    assert pairs[0].dark.shape == (48, 64, 3) and pairs[0].dark.max() <= 255
    fit, holdout = calibration.split_pairs(pairs, fit_first=2)
    assert [p.id for p in fit] == ["1", "11"] and [p.id for p in holdout] == ["21", "31"]
    fit, holdout = calibration.split_pairs(pairs, fit_ids=calibration.parse_id_list("11,21-21"))
    assert [p.id for p in fit] == ["11", "21"] and [p.id for p in holdout] == ["1", "31"]
    with pytest.raises(calibration.CalibrationError, match="both fitted and held out"):
        calibration.split_pairs(pairs, fit_ids=["1"], holdout_ids=["1"])
    with pytest.raises(calibration.CalibrationError, match="low/"):
        calibration.load_pair_folder(str(tmp_path / "low"))
    with pytest.raises(calibration.CalibrationError, match="fraction.*pairs dataset"):
        calibration.load_pairs(str(tmp_path), fraction=0.5)


def test_scale_exposure_spread_shrinks_only_the_common_gain():
    rng = np.random.default_rng(3)
    rows = np.column_stack([np.zeros(40), rng.uniform(0.2, 1.0, (40, 3)),
                            np.full(40, 0.8)])
    rows[:, 1:4] *= rng.uniform(0.3, 1.0, (40, 1))  # a common gain on top of chroma
    mean, cov = calibration.fit_distribution(rows)
    unit = np.zeros(5)
    unit[1:4] = mean[1:4] / np.linalg.norm(mean[1:4])
    across = np.zeros(5)
    across[1:4] = np.cross(unit[1:4], [0.0, 0.0, 1.0])  # a chroma direction
    np.testing.assert_allclose(calibration.scale_exposure_spread(mean, cov, 1.0), cov)
    for spread in (0.0, 0.5):
        scaled = calibration.scale_exposure_spread(mean, cov, spread)
        np.testing.assert_allclose(unit @ scaled @ unit, spread ** 2 * (unit @ cov @ unit),
                                   atol=1e-12)
        np.testing.assert_allclose(across @ scaled @ across, across @ cov @ across)
        assert np.linalg.eigvalsh(scaled).min() > -1e-12  # still a covariance
        np.testing.assert_array_equal(scaled[0], cov[0])  # black level untouched
    draws = simulation.sample_params(4000, mean, calibration.scale_exposure_spread(mean, cov, 0.0),
                                     seed=[1, 2]).numpy()
    gains = draws[:, 1:4] @ unit[1:4]
    assert gains.std() < 0.05 * (rows[:, 1:4] @ unit[1:4]).std()
    with pytest.raises(calibration.CalibrationError, match="exposure spread"):
        calibration.scale_exposure_spread(mean, cov, -0.5)


@pytest.mark.slow
def test_cli_joint_with_comparison(tmp_path):
    write_pair_folder(str(tmp_path / "pairs"))
    output = tmp_path / "joint.json"
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'pairs'}", "--fit_first=2",
                      "--method=joint", f"--output={output}", "--compare=paper", "--draws=1",
                      "--tone_curve", "--exposure_spread=0")
    assert result.returncode == 0, result.stderr
    assert "Summary" in result.stdout and "preset paper" in result.stdout
    data = json.loads(output.read_text())
    assert data["parameters"] == list(simulation.PARAMETER_NAMES)
    assert {"mean", "covariance", "noise_peak", "per_pair", "fidelity", "provenance"} <= set(data)
    assert data["provenance"]["holdout_ids"] == ["21", "31"]
    preset = simulation.load_preset(str(output))
    assert preset.quantize is True and preset.noise_peak > 0
    assert preset.tone_curve.shape == (3, 256) and "tone curve" in result.stdout
    # --exposure_spread=0: no variation left along the mean colour weights.
    assert data["provenance"]["exposure_spread"] == 0.0
    unit = preset.mean[1:4] / np.linalg.norm(preset.mean[1:4])
    assert unit @ preset.cov[1:4, 1:4] @ unit < 1e-12


@pytest.mark.slow
def test_cli_user_errors_exit_2(tmp_path):
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'nothing'}",
                      f"--output={tmp_path / 'x.json'}")
    assert result.returncode == 2
    assert "nothing" in result.stderr
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path}", "--method=preset",
                      "--preset=unknown_name")
    assert result.returncode == 2 and "Unknown simulation preset" in result.stderr
    write_pair_folder(str(tmp_path / "pairs"))
    for foreign in ("my notes, not a report\n", '{"mean": [1, 2]}\n'):
        (tmp_path / "mine.json").write_text(foreign)
        result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'pairs'}",
                          "--fit_first=2", f"--output={tmp_path / 'mine.json'}", "--draws=1")
        assert result.returncode == 2 and "not written by calibrate_simulation" in result.stderr
        assert (tmp_path / "mine.json").read_text() == foreign


def test_fit_composite_with_a_fixed_black_level():
    bright = synthetic_bright(7)
    params = np.asarray([0.0, 0.3, 0.22, 0.35, 1.25])
    dark = synthetic_dark(bright, params)
    fitted, rms = calibration.fit_composite(dark, bright, black_level=0.0, exponent=1.25)
    assert fitted[0] == 0.0 and fitted[4] == 1.25 and rms < 0.01
    np.testing.assert_allclose(fitted[1:4], params[1:4], rtol=2e-3)
    shifted, _ = calibration.fit_composite(dark + 3.0, bright, black_level=0.0, exponent=1.25)
    assert shifted[0] == 0.0  # held even where a free black level would move
