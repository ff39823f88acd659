"""Tests of lowlight_tf.simulation (paper §3.1) against an independent NumPy reference."""
import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from lowlight_tf import simulation


def reference_composite(bright, params, steps, noisy_linear=None, clip=True):
    """Per-image, per-channel NumPy loop over the §3.1 formulas (float64).

    `noisy_linear` replaces the output of the PN step (counts cannot be shared across RNGs).
    `clip=False` leaves out the composite's final clip to [0, 255].
    """
    out = np.empty_like(bright, dtype=np.float64)
    for i in range(bright.shape[0]):
        level, w_r, w_g, w_b, exponent = [float(v) for v in params[i]]
        for channel, weight in enumerate((w_r, w_g, w_b)):
            x = bright[i, :, :, channel].astype(np.float64)
            if "bl" in steps:
                x = np.where(x - level > 0, x - level, 0.0)
            if "cd" in steps:
                x = weight * x
            if "pn" in steps:
                x = noisy_linear[i, :, :, channel].astype(np.float64)
            if "gc" in steps:
                x = np.minimum(np.maximum(x, 0.0) ** exponent, 255.0)
            out[i, :, :, channel] = np.minimum(np.maximum(x, 0.0), 255.0) if clip else x
    return out


@pytest.fixture(name="batch")
def fixture_batch():
    rng = np.random.default_rng(0)
    bright = rng.integers(0, 256, size=(3, 9, 11, 3)).astype(np.float32)
    params = np.asarray([[81.2, 0.24, 0.24, 0.27, 0.67],
                         [10.0, 0.9, 0.5, 1.3, 1.25],
                         [0.0, 0.05, 0.03, 0.04, 2.0]], np.float32)
    return bright, params


@pytest.mark.parametrize("steps", [("bl",), ("bl", "cd"), ("bl", "cd", "gc"), ("cd", "gc"),
                                   ("gc",)])
def test_noise_free_steps_match_numpy_reference(batch, steps):
    bright, params = batch
    dark = simulation.simulate(bright, params, seed=[1, 2], steps=steps).numpy()
    expected = reference_composite(bright, params, steps)
    np.testing.assert_allclose(dark, expected, rtol=2e-6, atol=2e-5)
    assert dark.dtype == np.float32 and dark.min() >= 0 and dark.max() <= 255


def test_full_composite_applies_gamma_after_noise(batch):
    bright, params = batch
    noisy_linear = simulation.simulate(bright, params, seed=[5, 6], steps="bl+cd+pn",
                                       noise_peak=30.0).numpy()
    # PN draws from the unclipped CD output (w_b = 1.3 takes it above 255); only the composite's
    # end clips. Recompute the PN output unclipped for the reference.
    linear = reference_composite(bright, params, ("bl", "cd"), clip=False)
    counts = simulation.sample_poisson(
        tf.constant(linear / 255.0 * 30.0, tf.float32), [5, 6]).numpy()
    unclipped = counts / 30.0 * 255.0
    assert unclipped.max() > 255.0  # this batch exercises the clip
    np.testing.assert_allclose(noisy_linear, np.clip(unclipped, 0.0, 255.0), rtol=2e-6,
                               atol=2e-4)
    full = simulation.simulate(bright, params, seed=[5, 6], noise_peak=30.0).numpy()
    expected = reference_composite(bright, params, ("bl", "cd", "pn", "gc"),
                                   noisy_linear=unclipped)
    np.testing.assert_allclose(full, expected, rtol=2e-6, atol=2e-4)


def test_sub_task_names_and_step_validation(batch):
    bright, params = batch
    by_name = simulation.simulate(bright, params, seed=[1, 1], steps="bl+cd")
    by_list = simulation.simulate(bright, params, seed=[1, 1], steps=("bl", "cd"))
    np.testing.assert_array_equal(by_name.numpy(), by_list.numpy())
    with pytest.raises(ValueError, match="order"):
        simulation.simulate(bright, params, seed=[1, 1], steps=("gc", "bl"))
    with pytest.raises(ValueError, match="Unknown"):
        simulation.simulate(bright, params, seed=[1, 1], steps=("bl", "blur"))


def test_determinism_by_seed_eager_and_graph(batch):
    bright, params = batch
    first = simulation.simulate(bright, params, seed=[3, 4], noise_peak=10.0).numpy()
    second = simulation.simulate(bright, params, seed=[3, 4], noise_peak=10.0).numpy()
    other = simulation.simulate(bright, params, seed=[3, 5], noise_peak=10.0).numpy()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    dataset = tf.data.Dataset.from_tensors((bright, params)).map(
        lambda b, p: simulation.simulate(b, p, seed=tf.constant([3, 4]), noise_peak=10.0))
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), first)


def test_quantize_gives_integer_8bit_values(batch):
    bright, params = batch
    dark = simulation.simulate(bright, params, seed=[1, 2], quantize=True).numpy()
    np.testing.assert_array_equal(dark, np.round(dark))
    assert dark.min() >= 0 and dark.max() <= 255


@pytest.mark.parametrize("peak", [10.0, 1000.0])
def test_poisson_noise_mean_and_variance_per_intensity(peak):
    levels = np.asarray([0.5, 2.0, 8.0, 30.0, 100.0, 200.0], np.float32)
    image = np.broadcast_to(levels[None, :, None, None], (1, 6, 20000, 3)).copy()
    noisy = simulation.poisson_noise(image, peak, seed=[7, 8]).numpy()
    n = 20000 * 3
    for index, level in enumerate(levels):
        values = noisy[0, index].ravel()
        variance = level * 255.0 / peak  # Var(poisson(x / 255 * p) / p * 255)
        assert abs(values.mean() - level) < 5 * np.sqrt(variance / n)
        # Sample variance of a Poisson-like sample: relative standard error ~ sqrt(2 / n).
        tolerance = 6 * np.sqrt(2.0 / n + 1.0 / (level / 255 * peak * n))
        assert abs(values.var() / variance - 1) < tolerance


@pytest.mark.parametrize("rate", [0.02, 0.3, 1.0, 3.7, 12.5, 31.99, 32.0, 75.0, 600.0])
def test_fast_poisson_sampler_distribution(rate):
    n = 200000
    counts = simulation.sample_poisson(tf.fill([n], rate), [11, 12]).numpy()
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    support = np.arange(int(rate + 12 * np.sqrt(rate) + 15))
    observed = np.bincount(counts.astype(int), minlength=len(support))[:len(support)] / n
    expected = stats.poisson.pmf(support, rate)
    total_variation = 0.5 * np.abs(observed - expected).sum()
    # Sampling noise of the TV estimate is about 0.4 * sqrt(support size / n); the approximations
    # add < 1e-3.
    assert total_variation < 0.45 * np.sqrt(len(support) / n) + 1.5e-3
    assert abs(counts.mean() - rate) < 5 * np.sqrt(rate / n)
    assert abs(counts.var() / rate - 1) < 6 * np.sqrt(2.0 / n + 1.0 / (rate * n)) + 0.005


def test_cornish_fisher_part_is_provably_close():
    """Exact total-variation distance of the rate >= 32 branch, by numerical quadrature."""
    u = (np.arange(400000) + 0.5) / 400000
    z = stats.norm.ppf(u)
    for rate in (32.0, 50.0, 200.0):
        root = np.sqrt(rate)
        quantile = rate + root * z + (z * z - 1) / 6
        counts = np.maximum(np.floor(quantile + 0.5), 0).astype(int)
        support = np.arange(counts.max() + 30)
        observed = np.bincount(counts, minlength=len(support)) / len(u)
        total_variation = 0.5 * np.abs(observed - stats.poisson.pmf(support, rate)).sum()
        assert total_variation < 0.03 / rate + 1e-4


def test_sample_params_mean_covariance_and_positivity():
    # Far from zero, so the redraw of non-positive rows does not change the moments.
    mean = np.asarray([60.0, 0.5, 0.4, 0.6, 0.8])
    cov = np.diag([25.0, 0.004, 0.003, 0.005, 0.002])
    cov[1, 2] = cov[2, 1] = 0.002
    cov[0, 4] = cov[4, 0] = -0.1
    draws = simulation.sample_params(40000, mean, cov, seed=[1, 2]).numpy()
    assert draws.shape == (40000, 5) and draws.dtype == np.float32
    np.testing.assert_allclose(draws.mean(0), mean, rtol=0.01, atol=0.002)
    # Standard error of a sample covariance is about sqrt(var_i * var_j / n).
    tolerance = 5 * np.sqrt(np.outer(np.diag(cov), np.diag(cov)) / len(draws))
    assert np.all(np.abs(np.cov(draws, rowvar=False) - cov) < tolerance)
    np.testing.assert_array_equal(
        draws, simulation.sample_params(40000, mean, cov, seed=[1, 2]).numpy())


def test_sample_params_redraws_non_positive_rows():
    paper = simulation.load_preset("paper")
    draws = paper.sample(20000, seed=[3, 3]).numpy()
    assert np.all(draws > 0)
    # w_r has about 10% of its normal mass below zero; truncation raises the mean.
    assert draws[:, 1].mean() > paper.mean[1]
    singular = np.zeros((5, 5))
    draws = simulation.sample_params(5, [1, 2, 3, 4, 5], singular, seed=[0, 1]).numpy()
    np.testing.assert_allclose(draws, np.tile([1, 2, 3, 4, 5], (5, 1)))


def test_paper_preset_and_round_trip(tmp_path):
    paper = simulation.load_preset("paper")
    np.testing.assert_allclose(paper.mean, [81.16290737, 0.24417725, 0.24392515, 0.27350269,
                                            0.66752159])
    assert paper.noise_peak == 10.0 and paper.quantize is False
    assert paper.cov[0, 0] == pytest.approx(868.4052442472)
    path = tmp_path / "preset.json"
    simulation.save_preset(paper, path)
    again = simulation.load_preset(str(path))
    np.testing.assert_allclose(again.mean, paper.mean)
    np.testing.assert_allclose(again.cov, paper.cov)
    assert again.noise_peak == paper.noise_peak


def test_preset_in_other_parameter_order_is_reordered(tmp_path):
    data = {"parameters": ["black_level", "w_b", "w_g", "w_r", "gamma_exponent"],
            "mean": [50.0, 0.3, 0.2, 0.1, 0.7],
            "covariance": np.diag([1.0, 0.03, 0.02, 0.01, 0.001]).tolist()}
    path = tmp_path / "bgr.json"
    path.write_text(json.dumps(data))
    preset = simulation.load_preset(str(path))
    np.testing.assert_allclose(preset.mean, [50.0, 0.1, 0.2, 0.3, 0.7])
    np.testing.assert_allclose(np.diag(preset.cov), [1.0, 0.01, 0.02, 0.03, 0.001])


def test_preset_errors(tmp_path):
    with pytest.raises(simulation.PresetError, match="Unknown simulation preset"):
        simulation.load_preset("no_such_preset")
    with pytest.raises(simulation.PresetError, match="does not exist"):
        simulation.load_preset(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mean": [1, 2, 3]}))
    with pytest.raises(simulation.PresetError, match="covariance"):
        simulation.load_preset(str(bad))


def test_preset_simulate_returns_params():
    preset = simulation.load_preset("paper")
    bright = np.full((4, 8, 8, 3), 200.0, np.float32)
    dark, params = preset.simulate(bright, seed=[4, 2])
    assert dark.shape == (4, 8, 8, 3) and params.shape == (4, 5)
    again, params_again = preset.simulate(bright, seed=[4, 2])
    np.testing.assert_array_equal(dark.numpy(), again.numpy())
    np.testing.assert_array_equal(params.numpy(), params_again.numpy())


def test_sample_params_works_with_a_static_batch_of_one_inside_a_graph():
    """tf.data/tf.function know the batch size statically; a batch of 1 must still sample."""
    preset = simulation.load_preset("paper")

    @tf.function
    def one(bright):
        return preset.simulate(bright, seed=tf.constant([1, 2], tf.int64))

    dark, params = one(tf.fill([1, 8, 8, 3], 200.0))
    assert dark.shape == (1, 8, 8, 3) and params.shape == (1, 5)
    assert bool(tf.reduce_all(params > 0.0))


def test_apply_tone_curve_interpolates_each_channel():
    grid = np.arange(256, dtype=np.float64)
    curve = np.stack([grid, grid ** 2 / 255.0, np.full(256, 7.0)])  # identity, square, flat
    image = np.asarray([[[[10.5, 10.5, 10.5], [255.0, 255.0, 255.0], [-3.0, 300.0, 0.0]]]],
                       np.float32)
    mapped = simulation.apply_tone_curve(image, curve).numpy()

    def square(v):
        return v ** 2 / 255.0

    expected = [[[[10.5, (square(10) + square(11)) / 2, 7.0], [255.0, 255.0, 7.0],
                  [0.0, 255.0, 7.0]]]]  # out-of-range inputs clip to [0, 255] first
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-4)


def test_identity_tone_curve_changes_nothing_and_a_real_one_applies_first(batch):
    bright, params = batch
    identity = np.tile(np.arange(256, dtype=np.float64), (3, 1))
    plain = simulation.simulate(bright, params, seed=[3, 4], noise_peak=50.0)
    same = simulation.simulate(bright, params, seed=[3, 4], noise_peak=50.0, tone_curve=identity)
    np.testing.assert_allclose(same.numpy(), plain.numpy(), atol=1e-3)
    halved = identity / 2
    curved = simulation.simulate(bright, params, seed=[3, 4], steps=("bl", "cd", "gc"),
                                 tone_curve=halved)
    direct = simulation.simulate(bright / 2, params, seed=[3, 4], steps=("bl", "cd", "gc"))
    np.testing.assert_allclose(curved.numpy(), direct.numpy(), rtol=1e-5, atol=1e-3)


def test_tone_curve_validation_and_preset_round_trip(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        simulation.check_tone_curve(np.zeros((3, 255)))
    with pytest.raises(ValueError, match="non-decreasing"):
        simulation.check_tone_curve(np.tile(np.arange(256.0)[::-1], (3, 1)))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        simulation.check_tone_curve(np.full((3, 256), 300.0))
    curve = np.tile(np.linspace(2.0, 255.0, 256), (3, 1))
    preset = simulation.load_preset("paper")
    preset.tone_curve = curve
    path = tmp_path / "toned.json"
    simulation.save_preset(preset, str(path))
    again = simulation.load_preset(str(path))
    np.testing.assert_allclose(again.tone_curve, curve, atol=1e-4)
    assert "tone_curve" not in again.extra
    data = json.loads(path.read_text())
    data["tone_curve"] = [[5.0, 1.0] * 128] * 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(simulation.PresetError, match="non-decreasing.*--tone_curve"):
        simulation.load_preset(str(bad))
    assert simulation.load_preset("paper").tone_curve is None  # the authors' preset has none


def test_exposure_curve_round_trip_and_validation(tmp_path):
    preset = simulation.load_preset("paper")
    assert preset.exposure_curve is None
    preset.exposure_curve = np.tile(np.linspace(0.0, 250.0, 256), (3, 1))
    path = tmp_path / "exposure.json"
    simulation.save_preset(preset, str(path))
    again = simulation.load_preset(str(path))
    np.testing.assert_allclose(again.exposure_curve, preset.exposure_curve, atol=1e-4)
    assert "exposure_curve" not in again.extra
    data = json.loads(path.read_text())
    for bad_curve in ([[1.0] * 255] * 3, [[300.0] * 256] * 3):
        data["exposure_curve"] = bad_curve
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(simulation.PresetError, match="exposure_curve.*calibrate_simulation"):
            simulation.load_preset(str(tmp_path / "bad.json"))


def test_sample_params_keeps_a_zero_black_level_and_redraws_negative_ones():
    fixed_zero = simulation.sample_params(6, [0.0, 0.3, 0.3, 0.3, 1.0], np.zeros((5, 5)),
                                          seed=[0, 2]).numpy()
    np.testing.assert_allclose(fixed_zero, np.tile([0.0, 0.3, 0.3, 0.3, 1.0], (6, 1)),
                               rtol=1e-6)
    cov = np.diag([4.0, 1e-4, 1e-4, 1e-4, 1e-4])
    draws = simulation.sample_params(2000, [0.0, 0.3, 0.3, 0.3, 1.0], cov, seed=[0, 3]).numpy()
    assert draws[:, 0].min() >= 0.0 and draws[:, 0].mean() > 1.0  # truncated at zero
