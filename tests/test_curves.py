"""Tests of lowlight_tf.curves: the TensorFlow-free tone maps, curve fits and exposure lookup."""
import subprocess
import sys

import numpy as np
import pytest

from lowlight_tf import calibration, curves, simulation


class _Pair:  # the two fields curves read from lowlight_tf.calibration.Pair
    def __init__(self, dark, bright):
        self.dark, self.bright = np.asarray(dark, np.float32), np.asarray(bright, np.float32)


@pytest.mark.parametrize("module", ["lowlight_tf.curves", "lowlight_tf.baselines"])
def test_imports_without_tensorflow(module):
    code = (f"import sys, {module}; "
            "sys.exit('tensorflow imported' if 'tensorflow' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tone_map_matches_the_tensorflow_tone_curve():
    grid = np.arange(256.0)
    curve = np.stack([255.0 * (grid / 255.0) ** g for g in (0.5, 1.0, 2.0)])
    image = np.random.default_rng(0).uniform(-5.0, 260.0, (7, 9, 3))  # outside values clip
    mapped = curves.tone_map(image, curve)
    assert mapped.dtype == np.float64 and mapped.shape == image.shape
    np.testing.assert_allclose(mapped[..., 1], np.clip(image[..., 1], 0.0, 255.0))
    np.testing.assert_allclose(mapped, simulation.apply_tone_curve(image[None], curve)[0],
                               atol=1e-3)


def test_codes_round_and_clip():
    np.testing.assert_array_equal(curves.codes(np.asarray([-3.0, 0.4, 0.6, 254.6, 300.0])),
                                  [0, 0, 1, 255, 255])


def test_monotone_curve_from_sums_and_counts():
    count = np.zeros(256)
    count[[10, 20, 30]] = 100
    total = count * np.interp(np.arange(256), [10, 20, 30], [50.0, 40.0, 120.0])
    values = curves.monotone_curve(total, count, min_pixels=50)
    assert np.all(np.diff(values) >= 0) and values[-1] == pytest.approx(255.0)
    assert values[10] == pytest.approx(values[20])  # 50 > 40 pooled by isotonic regression
    with pytest.raises(curves.CurveError, match="Too few distinct bright values"):
        curves.monotone_curve(total, count, min_pixels=101)


def test_fit_tone_curve_errors_are_calibration_errors_in_calibration():
    flat = _Pair(np.full((8, 8, 3), 10.0), np.full((8, 8, 3), 100.0))  # one bright value
    with pytest.raises(curves.CurveError, match="Too few distinct"):
        curves.fit_tone_curve([flat], min_pixels=5)
    with pytest.raises(calibration.CalibrationError, match="Too few distinct"):
        calibration.fit_tone_curve([flat], min_pixels=5)


def test_expected_brightness_is_the_mean_lookup_of_the_dark_to_bright_curve():
    rng = np.random.default_rng(1)
    dark = rng.integers(0, 40, (300, 20, 3)).astype(np.float32)  # > one LOOKUP_ROWS band
    bright = np.clip(dark * 5.0 + rng.uniform(0, 3, dark.shape), 0, 255)
    curve = curves.fit_dark_to_bright_curve([_Pair(dark, bright)])
    by_hand = np.mean([curve[c][dark[..., c].astype(int)] for c in range(3)]) / 255.0
    assert curves.expected_brightness(dark / 255.0, curve) == pytest.approx(by_hand, rel=1e-9)
    # On the pairs it was fitted on, the lookup gives the mean bright value exactly.
    assert curves.expected_brightness(dark / 255.0, curve) == pytest.approx(
        bright.mean() / 255.0, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[3, 256\]"):
        curves.expected_brightness(dark / 255.0, curve[:2])
    with pytest.raises(curves.CurveError, match="at least one pair"):
        curves.fit_dark_to_bright_curve([])
