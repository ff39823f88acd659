"""Metrics against hand-computed values and scikit-image (paper §3.3 PSNR on 8-bit values)."""
import math

import keras
import numpy as np
import pytest
import skimage.data
import skimage.metrics
import tensorflow as tf

from lowlight_tf import metrics


def _constant(value, shape=(1, 16, 16, 3)):
    return np.full(shape, value, np.float32)


def _checkerboard(low, high, shape=(1, 16, 16, 3)):
    """Alternate `low` and `high` pixel by pixel (same in every channel)."""
    rows, cols = np.indices(shape[1:3])
    board = np.where((rows + cols) % 2 == 0, low, high).astype(np.float32)
    return np.broadcast_to(board[None, :, :, None], shape).copy()


def _photo(size=48, offset=0):
    """A natural RGB crop from scikit-image's bundled astronaut, float32 [size, size, 3] 0-255."""
    return skimage.data.astronaut()[100 + offset:100 + offset + size, 200:200 + size]\
        .astype(np.float32)


def test_psnr_constant_images_known_mse():
    # Every pixel off by 10: MSE = 100, PSNR = 20 log10(255 / 10).
    value = metrics.psnr(_constant(100.0), _constant(110.0)).numpy()
    assert value.shape == (1,)
    assert value[0] == pytest.approx(20 * math.log10(255 / 10), abs=1e-4)
    assert value[0] == pytest.approx(28.1308036, abs=1e-4)


def test_psnr_half_pixels_differ():
    # Half the pixels off by 20, half exact: MSE = 400 / 2 = 200.
    reference = _constant(50.0)
    prediction = _checkerboard(50.0, 70.0)
    expected = 20 * math.log10(255 / math.sqrt(200))
    assert metrics.psnr(prediction, reference).numpy()[0] == pytest.approx(expected, abs=1e-4)


def test_psnr_per_image_in_batch_and_single_image():
    reference = np.concatenate([_constant(0.0), _constant(255.0)])
    prediction = np.concatenate([_constant(1.0), _constant(254.0 - 4.0)])
    values = metrics.psnr(prediction, reference).numpy()
    np.testing.assert_allclose(values, [20 * math.log10(255), 20 * math.log10(255 / 5)],
                               atol=1e-4)
    single = metrics.psnr(prediction[1], reference[1]).numpy()
    assert single.shape == ()
    assert single == pytest.approx(values[1], abs=1e-5)


def test_psnr_identical_is_infinite_unless_capped():
    image = _constant(77.0)
    assert np.isinf(metrics.psnr(image, image).numpy()[0])
    assert metrics.psnr(image, image, max_db=100.0).numpy()[0] == pytest.approx(100.0)


def test_psnr_range_mixup_fails_loudly():
    reference = _photo()[None]
    prediction = reference + np.random.default_rng(0).normal(0, 5, reference.shape)
    prediction = np.clip(prediction, 0, 255).astype(np.float32)
    honest = metrics.psnr(prediction, reference).numpy()[0]
    assert 20 < honest < 40
    # A [0, 1] prediction against a [0, 255] reference, and the other way round.
    with pytest.raises(tf.errors.InvalidArgumentError, match="mix-up"):
        metrics.psnr(prediction / 255.0, reference)
    with pytest.raises(tf.errors.InvalidArgumentError, match="mix-up"):
        metrics.psnr(prediction, reference / 255.0)
    # Both in [0, 1] passes the mix-up check but scores ~48 dB too high: exactly the MIRNet bug,
    # which is why the docstrings insist on [0, 255]; check the size of the trap here.
    wrong = metrics.psnr(prediction / 255.0, reference / 255.0).numpy()[0]
    assert wrong - honest == pytest.approx(20 * math.log10(255), abs=1e-3)
    # Also inside a tf.function (graph mode).
    graph_psnr = tf.function(metrics.psnr)
    with pytest.raises(tf.errors.InvalidArgumentError, match="mix-up"):
        graph_psnr(tf.constant(prediction / 255.0, tf.float32), tf.constant(reference))


def test_all_black_prediction_is_not_a_mixup():
    reference = _constant(16.0)
    value = metrics.psnr(_constant(0.0), reference).numpy()[0]
    assert value == pytest.approx(20 * math.log10(255 / 16), abs=1e-4)


@pytest.mark.parametrize("bad", [256.0, -1.0, 1000.0])
def test_out_of_range_values_fail(bad):
    prediction = _constant(100.0)
    prediction[0, 3, 4, 1] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 255\]"):
        metrics.psnr(prediction, _constant(100.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 255\]"):
        metrics.ssim(prediction, _constant(100.0))


def test_shape_mismatch_fails():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(_constant(1.0, (1, 16, 16, 3)), _constant(1.0, (1, 16, 8, 3)))


def test_ssim_matches_skimage():
    rng = np.random.default_rng(1)
    references, predictions, expected = [], [], []
    for offset, sigma in ((0, 5.0), (40, 20.0), (80, 50.0)):
        reference = _photo(offset=offset)
        prediction = np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 255)
        prediction = prediction.astype(np.float32)
        references.append(reference)
        predictions.append(prediction)
        expected.append(skimage.metrics.structural_similarity(
            prediction, reference, data_range=255, channel_axis=-1, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False))
    values = metrics.ssim(np.stack(predictions), np.stack(references)).numpy()
    assert values.shape == (3,)
    np.testing.assert_allclose(values, expected, atol=1e-4)
    # The noise levels give clearly different SSIM, so the comparison is not vacuous.
    assert expected[0] > expected[1] > expected[2]
    assert metrics.ssim(references[0], references[0]).numpy() == pytest.approx(1.0, abs=1e-6)


def test_psnr_gt_mean_hand_computed():
    # Prediction alternates 40/60 (mean 50), reference constant 100: scale 2 -> 80/120, MSE 400.
    value = metrics.psnr_gt_mean(_checkerboard(40.0, 60.0), _constant(100.0)).numpy()[0]
    assert value == pytest.approx(20 * math.log10(255 / 20), abs=1e-4)
    # Plain PSNR of the same pair is far lower (MSE = (60^2 + 40^2) / 2 = 2600).
    plain = metrics.psnr(_checkerboard(40.0, 60.0), _constant(100.0)).numpy()[0]
    assert plain == pytest.approx(20 * math.log10(255 / math.sqrt(2600)), abs=1e-4)


def test_psnr_gt_mean_clips_after_scaling():
    # Prediction 50/150 (mean 100), reference 200: scale 2 -> 100/300 -> clipped 100/255;
    # errors 100 and 55, MSE = (10000 + 3025) / 2.
    value = metrics.psnr_gt_mean(_checkerboard(50.0, 150.0), _constant(200.0)).numpy()[0]
    assert value == pytest.approx(20 * math.log10(255 / math.sqrt(6512.5)), abs=1e-4)
    matched = metrics.match_mean(_checkerboard(50.0, 150.0), _constant(200.0)).numpy()
    assert matched.max() == 255.0 and matched.min() == 100.0


def test_psnr_gt_mean_per_image_scale():
    # Two images with different brightness errors: each gets its own scale, both become exact.
    reference = np.concatenate([_constant(100.0), _constant(30.0)])
    prediction = np.concatenate([_constant(25.0), _constant(60.0)])
    assert np.all(np.isinf(metrics.psnr_gt_mean(prediction, reference).numpy()))


def test_keras_psnr_metric_matches_function_and_averages():
    rng = np.random.default_rng(2)
    y_true = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.05, y_true.shape), 0, 1).astype(np.float32)
    metric = metrics.PSNRMetric()
    assert metric.name == "psnr"
    metric.update_state(y_true[:2], y_pred[:2])
    metric.update_state(y_true[2:], y_pred[2:])
    expected = np.mean(metrics.psnr(y_pred * 255.0, y_true * 255.0).numpy())
    assert float(metric.result()) == pytest.approx(expected, abs=1e-3)
    # Per-image reference with NumPy only.
    mse = np.mean((y_pred.astype(np.float64) * 255 - y_true * 255) ** 2, axis=(1, 2, 3))
    assert float(metric.result()) == pytest.approx(np.mean(10 * np.log10(255 ** 2 / mse)),
                                                   abs=1e-3)
    metric.reset_state()
    # The prediction is clipped to [0, 1] (the linear head may overshoot), the cap holds.
    metric.update_state(_constant(0.0), _constant(-0.2))
    assert float(metric.result()) == pytest.approx(metrics.METRIC_MAX_DB)


def test_keras_metric_rejects_8bit_targets():
    y_true = np.random.default_rng(3).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    for metric in (metrics.PSNRMetric(), metrics.SSIMMetric()):
        with pytest.raises(tf.errors.InvalidArgumentError):
            metric.update_state(y_true, y_true / 255.0)


def test_keras_ssim_metric_and_config_round_trip():
    reference = _photo()[None] / 255.0
    prediction = np.clip(reference + 0.05, 0, 1).astype(np.float32)
    metric = metrics.SSIMMetric()
    metric.update_state(reference, prediction)
    expected = metrics.ssim(prediction * 255.0, reference * 255.0).numpy()[0]
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
    clone = keras.metrics.deserialize(keras.metrics.serialize(metrics.PSNRMetric(name="p2")))
    assert isinstance(clone, metrics.PSNRMetric) and clone.name == "p2"


def test_keras_metrics_in_compiled_model():
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile("adam", "mae", metrics=[metrics.PSNRMetric(), metrics.SSIMMetric()])
    x = np.random.default_rng(4).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
    result = model.evaluate(x, x, verbose=0, return_dict=True)
    assert np.isfinite(result["psnr"]) and -1 <= result["ssim"] <= 1


def test_mae_ssim_loss_matches_its_definition_and_has_gradients():
    rng = np.random.default_rng(3)
    y_true = rng.uniform(0, 1, (2, 24, 24, 3)).astype(np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.1, y_true.shape), 0, 1).astype(np.float32)
    mae = np.abs(y_true - y_pred).mean(axis=(1, 2, 3))
    plain = metrics.MAESSIMLoss(0.0)
    np.testing.assert_allclose(plain.call(y_true, y_pred).numpy(), mae, rtol=1e-5)
    weighted = metrics.MAESSIMLoss(0.5)
    similarity = metrics.ssim(y_pred * 255.0, y_true * 255.0).numpy()  # SSIM is scale-free
    np.testing.assert_allclose(weighted.call(y_true, y_pred).numpy(),
                               mae + 0.5 * (1 - similarity), rtol=1e-4)
    prediction = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = weighted(y_true, prediction)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(value, prediction)))) > 0
    again = metrics.MAESSIMLoss.from_config(weighted.get_config())
    assert again.ssim_weight == 0.5
    with pytest.raises(ValueError, match="ssim_weight"):
        metrics.MAESSIMLoss(-0.1)


# ----------------------------------------------------------------------------------------------
# No-reference statistics.

def test_no_reference_stats_hand_computed():
    image = np.zeros((2, 2, 3), np.float32)
    image[0, 0] = [255.0, 10.0, 10.0]  # one channel clipped: the pixel counts
    image[0, 1] = [253.0, 253.0, 253.0]  # just below the clipping level: does not count
    image[1, 0] = [254.0, 254.0, 254.0]  # at the level: counts
    stats = metrics.no_reference_stats(image)
    # mean = (275 + 759 + 762 + 0) / 12 = 149.6667
    assert stats.mean_brightness == pytest.approx(1796.0 / 12.0)
    assert stats.clipped_fraction == pytest.approx(0.5)
    assert metrics.no_reference_stats(np.zeros((3, 5, 3))) == (0.0, 0.0)
    assert metrics.no_reference_stats(np.full((3, 5, 3), 255.0)) == (255.0, 1.0)


def test_no_reference_stats_of_a_float_output_count_what_rounds_to_clipped():
    # tools/enhance reads its float [0, 1] output before quantisation, in 256-row bands.
    image = np.full((600, 5, 3), 102.0 / 255.0, np.float32)
    image[0, 0] = 1.0                      # clipped in every channel
    image[300, 1, 2] = 254.0 / 255.0       # clipped in one channel (second band)
    image[599, 2, 1] = 253.4 / 255.0       # rounds to 253: not clipped (third band)
    stats = metrics.no_reference_stats(image, peak=1.0)
    assert stats.clipped_fraction == pytest.approx(2 / 3000)
    assert stats.mean_brightness == pytest.approx(float(np.mean(image, dtype=np.float64)),
                                                  rel=1e-6)
    # The same photo in 8-bit units gives the same fraction and 255 times the mean.
    codes = np.round(image * 255.0)
    in_codes = metrics.no_reference_stats(codes)
    assert in_codes.clipped_fraction == stats.clipped_fraction
    assert in_codes.mean_brightness == pytest.approx(255.0 * stats.mean_brightness, rel=1e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.no_reference_stats(image * 255.0, peak=1.0)


def test_periodic_texture_finds_a_checkerboard_texture():
    photo = skimage.data.astronaut()[:256, :320].astype(np.float32)  # natural, no period
    plain = metrics.periodic_texture(photo)
    assert 0.5 < plain < 2.0
    y, x = np.mgrid[:256, :320]
    for period, axis in ((2, x), (4, x), (2, y), (4, y)):
        # A texture of +-3 code values, as a transposed convolution draws on smooth surfaces.
        stripes = np.where(axis % period < period // 2, 3.0, -3.0)[..., None]
        textured = metrics.periodic_texture(np.clip(photo + stripes, 0, 255))
        assert textured > 3.0 * plain, (period, textured, plain)
    # A period the index does not look at (8 pixels) leaves it near the plain photo's.
    eight = np.where(x % 8 < 4, 3.0, -3.0)[..., None]
    assert metrics.periodic_texture(np.clip(photo + eight, 0, 255)) < 1.5 * plain
    # Grey works as one channel; a flat or tiny image has no spectrum to read.
    grey = photo @ np.array([0.299, 0.587, 0.114], np.float32)
    assert metrics.periodic_texture(grey[..., None]) == pytest.approx(plain, rel=1e-4)
    assert math.isnan(metrics.periodic_texture(np.full((64, 64, 3), 9.0)))
    assert math.isnan(metrics.periodic_texture(photo[:30, :30]))


def test_periodic_texture_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        metrics.periodic_texture(np.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        metrics.periodic_texture(np.zeros((64, 64, 2)))


def test_no_reference_stats_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        metrics.no_reference_stats(np.full((4, 4, 3), 256.0))
    with pytest.raises(ValueError, match="one"):
        metrics.no_reference_stats(np.zeros((1, 4, 4, 3)))
