"""Image-level exposure normalisation in training (--exposure_gain=image, beyond the paper).

The input pipeline multiplies each dark patch by the gain of its WHOLE dark image, as tiled
inference does, and the model's ExposureNormalization passes its input through while fitted.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import exposure as exposure_lib
from lowlight_tf import model as model_lib
from lowlight_tf import pipeline, simulation, training
from test_training import tiny_config  # pylint: disable=import-error

TARGET = exposure_lib.CANONICAL_DARK_MEAN
SHADOW, LIGHT = 4.0, 40.0  # the fixture's dark levels (of 255): left and right half


def _half_lit_pairs(count=3, height=64, width=128):
    """Pairs whose dark image is SHADOW on the left half and LIGHT on the right; the bright one
    100 and 200 there. Whole dark mean (SHADOW + LIGHT) / 2."""
    dark = np.full((height, width, 3), SHADOW, np.float32)
    dark[:, width // 2:] = LIGHT
    bright = np.where(dark == SHADOW, 100.0, 200.0).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices({
        "bright": np.stack([bright] * count), "dark": np.stack([dark] * count),
        "id": [f"scene_{i}.png" for i in range(count)],
        "exposure_ratio": np.zeros(count, np.float32)})


def _check_image_gain(dark, bright):
    """Every dark pixel is its original level times the whole image's gain, aligned with bright."""
    gain = TARGET / ((SHADOW + LIGHT) / 2 / 255)
    dark, bright = dark * 255, np.round(bright * 255)
    np.testing.assert_allclose(dark[bright == 100], SHADOW * gain, rtol=1e-4)
    np.testing.assert_allclose(dark[bright == 200], LIGHT * gain, rtol=1e-4)
    # Shadows stay darker than highlights: patch means are NOT all the target (patch gain).
    means = dark.mean(axis=(1, 2, 3)) / 255
    assert means.min() < 0.5 * TARGET and means.max() > 1.5 * TARGET


def test_training_patches_get_their_whole_images_gain():
    dataset = pipeline.train_dataset(_half_lit_pairs(), patch_size=32, batch_size=16, seed=0,
                                     exposure_normalization=TARGET)
    dark, bright = next(iter(dataset))
    assert dark.shape == bright.shape == (16, 32, 32, 3)
    _check_image_gain(dark.numpy(), bright.numpy())
    # Without it the pipeline leaves the levels alone (the model's layer normalises).
    plain, _ = next(iter(pipeline.train_dataset(_half_lit_pairs(), patch_size=32, batch_size=16,
                                                seed=0, cache="none")))
    assert set(np.unique(np.round(plain.numpy() * 255))) == {SHADOW, LIGHT}


def test_streaming_and_validation_use_the_image_gain_too():
    stream = pipeline.train_dataset(_half_lit_pairs(), patch_size=32, batch_size=16, seed=0,
                                    cache="none", exposure_normalization=TARGET)
    _check_image_gain(*(t.numpy() for t in next(iter(stream))))
    validation = pipeline.validation_dataset(_half_lit_pairs(9), patch_size=32, batch_size=9,
                                             seed=0, exposure_normalization=TARGET)
    dark, bright = next(iter(validation))
    assert dark.shape == (9, 32, 32, 3)
    gain = TARGET / ((SHADOW + LIGHT) / 2 / 255)
    np.testing.assert_allclose(dark.numpy()[np.round(bright.numpy() * 255) == 100] * 255,
                               SHADOW * gain, rtol=1e-4)
    with pytest.raises(ValueError, match="exposure_normalization"):
        pipeline.train_dataset(_half_lit_pairs(), patch_size=32, exposure_normalization=1.5)


def test_simulated_patches_share_their_strips_parameters():
    # Uniform grey photos: a patch and its image's strip are the same level, simulated with the
    # same (per-patch) parameters, so each normalised patch has the target mean, although the
    # raw simulated means differ from patch to patch.
    grey = tf.data.Dataset.from_tensor_slices({
        "bright": np.full((4, 48, 64, 3), 120.0, np.float32),
        "id": [f"photo_{i}.png" for i in range(4)]})
    preset = simulation.load_preset("paper")
    common = dict(patch_size=32, batch_size=16, seed=3, simulation=preset)
    raw, _ = next(iter(pipeline.train_dataset(grey, **common)))
    raw_means = raw.numpy().mean(axis=(1, 2, 3))
    lit = raw_means > 0  # the same seed draws the same parameters; some give black images
    assert lit.sum() >= 8 and raw_means[lit].max() > 2 * raw_means[lit].min(), raw_means
    dark, _ = next(iter(pipeline.train_dataset(grey, exposure_normalization=TARGET, **common)))
    means = dark.numpy().mean(axis=(1, 2, 3))
    np.testing.assert_allclose(means[lit], TARGET, rtol=0.15)  # the strip's own noise
    assert np.all(means[~lit] == 0.0)
    # Clean dim patches (dim_fraction 1) darken the strip by the same stops: exact but rounding.
    dim, _ = next(iter(pipeline.train_dataset(grey, exposure_normalization=TARGET,
                                              dim_fraction=1.0, **common)))
    np.testing.assert_allclose(dim.numpy().mean(axis=(1, 2, 3)), TARGET, rtol=1e-3)


def test_layer_passes_through_only_inside_the_context():
    keras.utils.set_random_seed(0)
    model = model_lib.build_unet("rgb", base_filters=4, depth=2, exposure_normalization=TARGET)
    dark = np.random.default_rng(0).uniform(0, 0.1, (2, 32, 32, 3)).astype(np.float32)
    core = exposure_lib.after_exposure_normalization(model)
    normalised = model(dark).numpy()
    with exposure_lib.exposure_applied_outside(model):
        np.testing.assert_allclose(model(dark).numpy(), core(dark).numpy(), atol=1e-6)
        assert np.abs(model(dark).numpy() - normalised).max() > 1e-3  # the check can fail
    np.testing.assert_array_equal(model(dark).numpy(), normalised)
    assert model.train_function is None and model.predict_function is None
    plain = model_lib.build_unet("rgb", base_filters=4, depth=2)
    with exposure_lib.exposure_applied_outside(plain) as inside:
        assert inside is plain


class _LayerState(keras.callbacks.Callback):
    """Records whether the exposure layer passed its input through during each batch."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(exposure_lib.exposure_layer(self.model).applied_outside)


@pytest.mark.parametrize("gain", ["image", "patch"])
def test_training_fits_with_the_layer_passed_through_only_for_image_gain(tmp_path, tiny_data,
                                                                         gain):
    state = _LayerState()
    result = training.train(tiny_config(tmp_path / gain, tiny_data, patch_size=32,
                                        exposure_normalization=TARGET, exposure_gain=gain,
                                        num_images=0), extra_callbacks=[state])
    assert state.states == [gain == "image"] * 3
    assert f"--exposure_gain={gain}" in open(tmp_path / gain / "flags.txt").read()
    saved = model_lib.load_model(result.final_model_path)
    assert not exposure_lib.exposure_layer(saved).applied_outside
    dark = np.random.default_rng(1).uniform(0, 0.05, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(saved(dark * 3).numpy(), saved(dark).numpy(), atol=1e-5)
