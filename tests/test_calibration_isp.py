"""Tests of lowlight_tf.calibration.isp (calibrating the ISP-aware simulation) and its tool."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_tool  # pylint: disable=import-error
from lowlight_tf import calibration, simulation, simulation_isp
from lowlight_tf.calibration import isp as isp_calibration

# Known camera: per-channel shot gains and read noise (linear units), noise on a Bayer mosaic.
TRUE_SHOT_GAIN = np.array([4e-4, 3e-4, 5e-4])
TRUE_READ_NOISE = np.array([6e-4, 5e-4, 7e-4])
EXPOSURES = [[0.05, 0.06, 0.04], [0.08, 0.07, 0.05], [0.03, 0.04, 0.035], [0.06, 0.05, 0.07],
             [0.04, 0.045, 0.05]]


def smooth_bright(seed, size=256):
    """A smooth sRGB test scene float32 [size, size, 3] in [0, 255] covering many levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    planes = []
    for _ in range(3):
        a = rng.uniform(0.5, 3.0, 4)
        wave = (0.5 + 0.25 * np.sin(2 * np.pi * (a[0] * x + a[1] * y) + rng.uniform(0, 6))
                + 0.25 * np.cos(2 * np.pi * a[2] * a[3] * x * y))
        planes.append(wave * (0.2 + 0.8 * x))
    return np.clip(np.stack(planes, -1) * 255.0, 0, 255).astype(np.float32)


def known_pairs(bayer, size=256, tone_curve=None):
    """Pairs simulated with the known parameters (shot scale 1), one exposure row each."""
    truth = simulation_isp.IspParams(np.zeros(3), np.zeros((3, 3)), TRUE_SHOT_GAIN,
                                     TRUE_READ_NOISE, bayer=bayer)
    pairs = []
    for index, exposure in enumerate(EXPOSURES):
        bright = smooth_bright(index, size)
        dark = simulation_isp.simulate_isp(bright[None], np.array([exposure + [1.0]], np.float32),
                                           truth, seed=[index, 7],
                                           tone_curve=tone_curve).numpy()[0]
        pairs.append(calibration.Pair(str(index), dark, bright))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize("bayer", [True, False])
def test_calibration_recovers_known_isp_parameters(bayer):
    """Exposure ratio (per pair, per channel) and shot gain (per channel) within 10%, and the
    noise path; the read noise only within 25%: at the 8-bit dark codes where it dominates the
    quantisation step (3e-4 linear) is as large as the read noise itself."""
    pairs = known_pairs(bayer)
    preset, rows = isp_calibration.calibrate_isp(pairs[:4], holdout_pairs=pairs[4:], draws=1,
                                                 progress=None)
    for measured, exposure in zip(preset.extra["per_pair"], EXPOSURES):
        np.testing.assert_allclose(measured["exposure_ratio"], exposure, rtol=0.1)
    assert preset.isp.bayer is bayer and preset.isp.noise_blur == 0.0
    np.testing.assert_allclose(preset.isp.shot_gain, TRUE_SHOT_GAIN, rtol=0.1)
    np.testing.assert_allclose(preset.isp.read_noise, TRUE_READ_NOISE, rtol=0.25)
    np.testing.assert_allclose(np.exp(preset.isp.log_exposure_mean),
                               np.exp(np.log(EXPOSURES[:4]).mean(0)), rtol=0.1)
    # Simulating with the recovered preset gives the held-out pair's noise level and correlation.
    summary = calibration.summarise_fidelity(rows)["own_noisy"]
    np.testing.assert_allclose(summary["noise_rgb_ratio"], 1.0, atol=0.1)
    assert abs(summary["corr"] - summary["corr_real"]) < 0.05


@pytest.mark.slow
def test_calibration_recovers_a_bright_tone_curve():
    """A camera whose bright rendering is not sRGB (highlights compressed): the fitted curve
    and the exposure ratios measured through it come back within 10%."""
    grid = np.arange(256.0)
    truth = 255.0 * (np.clip(grid / 255.0, 0, 1) ** 1.6)  # linear x 255 per bright value
    curve = np.tile(truth, (3, 1))
    pairs = known_pairs(False, tone_curve=curve)
    preset, _ = isp_calibration.calibrate_isp(pairs[:4], tone_curve=True, progress=None)
    measured = preset.tone_curve[:, 64:]
    np.testing.assert_allclose(measured, curve[:, 64:], rtol=0.1)
    for row, exposure in zip(preset.extra["per_pair"], EXPOSURES):
        np.testing.assert_allclose(row["exposure_ratio"], exposure, rtol=0.1)
    assert preset.provenance["tone_curve"].startswith("bright linear light")


@pytest.mark.slow
def test_a_pair_without_measurable_noise_is_left_out_with_its_reason():
    """One frame of a random draw can be too dark in a channel to measure its noise: the fit
    goes on without it and says why; too few measurable pairs is a CalibrationError."""
    pairs = known_pairs(False, size=128)
    black = pairs[3].dark.copy()
    # Green at codes 0 and 1 only: clipped at 0 at every level, as in a very dark frame.
    black[..., 1] = np.random.default_rng(0).integers(0, 2, black.shape[:2])
    dark_green = calibration.Pair("dark_green", black, pairs[3].bright)
    preset, _ = isp_calibration.calibrate_isp(pairs[:3] + [dark_green], progress=None)
    assert [row["id"] for row in preset.extra["left_out"]] == ["dark_green"]
    assert "channel G" in preset.extra["left_out"][0]["reason"]
    assert [row["id"] for row in preset.extra["per_pair"]] == ["0", "1", "2"]
    assert preset.extra["description"].endswith("on 4 real pairs (1 left out of the noise and "
                                                 "exposure fit).")
    np.testing.assert_allclose(preset.isp.shot_gain, TRUE_SHOT_GAIN, rtol=0.15)
    with pytest.raises(calibration.CalibrationError, match="Only 1 of 2 pairs.*dark_green"):
        isp_calibration.calibrate_isp([pairs[0], dark_green], progress=None)


def test_residual_factors_are_one_for_iid_noise_without_the_high_pass_loss():
    iid = isp_calibration.residual_factors(False, 0.0)
    bayer = isp_calibration.residual_factors(True, 0.0)
    # Sigma-1 high pass of white noise keeps 1 - 2 g0 + sum g^2 of its variance (about 0.76).
    np.testing.assert_allclose(iid, 0.76, atol=0.03)
    assert np.all(bayer < iid) and bayer[1] > bayer[0]  # demosaiced noise is smoother


def test_exposure_ratio_errors_name_the_pair():
    bright = np.full((16, 16, 3), 255.0, np.float32)
    with pytest.raises(calibration.CalibrationError, match="Pair sat"):
        calibration.exposure_ratio(calibration.Pair("sat", bright * 0.1, bright))


def write_pair_folder(folder, pairs):
    """Save pairs as 8-bit PNGs in folder/low and folder/high."""
    for sub in ("low", "high"):
        (folder / sub).mkdir(parents=True)
    for pair in pairs:
        Image.fromarray(pair.dark.astype(np.uint8)).save(folder / "low" / f"{pair.id}.png")
        Image.fromarray(np.round(pair.bright).astype(np.uint8)).save(
            folder / "high" / f"{pair.id}.png")


@pytest.mark.slow
def test_cli_model_isp_writes_an_isp_preset(tmp_path):
    write_pair_folder(tmp_path / "pairs", known_pairs(True, size=128)[:3])
    output = tmp_path / "isp.json"
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'pairs'}", "--fit_first=2",
                      "--model=isp", f"--output={output}", "--compare=paper", "--draws=1")
    assert result.returncode == 0, result.stderr
    assert "preset (isp)" in result.stdout and "preset paper" in result.stdout
    data = json.loads(output.read_text())
    assert data["model"] == "isp" and data["provenance"]["holdout_ids"] == ["2"]
    assert {"per_pair", "noise_paths", "fidelity", "reports"} <= set(data)
    assert "corr" in data["fidelity"]["summary"]["own_noisy"]
    preset = simulation.load_preset(str(output))
    assert preset.model == "isp" and preset.isp.shot_gain.shape == (3,)
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'pairs'}", "--fit_first=2",
                      "--model=isp", "--noise_peak=10", f"--output={tmp_path / 'x.json'}")
    assert result.returncode != 0 and "--model=isp" in result.stderr
