"""Does calibration recover the parameters of pairs made by its own model (paper §3.1)?

Pairs come from the paper's composite with known (black_level, w_r, w_g, w_b, gamma_exponent),
Poisson noise at a known peak, 8-bit quantised (`synthetic_dark`), as a camera writes them.
"""
import numpy as np
import pytest

from lowlight_tf import calibration
from test_calibration import synthetic_bright, synthetic_dark  # pylint: disable=import-error

STEEP = np.asarray([4.0, 0.05, 0.04, 0.06, 1.6])  # a dim pair with a steep gamma exponent
MILD = np.asarray([8.0, 0.10, 0.08, 0.12, 1.25])
SHALLOW = np.asarray([12.0, 0.25, 0.2, 0.3, 0.8])


def _relative_errors(params, true):
    """|estimate - true| / true per parameter; a black level within 0.5 8-bit units counts 0."""
    errors = np.abs(np.asarray(params) - true) / true
    if abs(params[0] - true[0]) <= 0.5:
        errors[0] = 0.0
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("true, peak", [(STEEP, 40.0), (STEEP, 400.0), (MILD, 40.0)])
def test_noise_peak_recovered_with_true_params(true, peak):
    # At peak 40 and exponent 1.6 the noise energy first rises with the peak (below a few
    # counts per full scale almost every pixel draws 0) and then falls: the search must land
    # on the falling branch, not on the lower bound of its range.
    bright = synthetic_bright(7, shape=(128, 128))
    dark = synthetic_dark(bright, true, noise_peak=peak, seed=1)
    estimate = calibration.estimate_noise_peak(dark, bright, true, seed=0)
    assert peak / 1.25 < estimate < peak * 1.25


@pytest.mark.slow
@pytest.mark.parametrize("true, peak", [
    (MILD, None), (SHALLOW, None), (MILD, 400.0), (SHALLOW, 400.0), (STEEP, None),
    (STEEP, 400.0), (MILD, 40.0),
])
def test_joint_fit_recovers_known_parameters(true, peak):
    # Every parameter within 10% (the black level may instead be within 0.5 8-bit units).
    bright = synthetic_bright(7, shape=(128, 160))
    dark = synthetic_dark(bright, true, noise_peak=peak, seed=1)
    fit = calibration.fit_joint(dark, bright)
    assert np.all(_relative_errors(fit["params"], true) < 0.10), fit["params"]
    if peak is not None:
        assert peak / 1.25 < fit["noise_peak"] < peak * 1.25
