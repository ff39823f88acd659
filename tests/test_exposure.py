"""Exposure-normalising models (exposure.ExposureNormalization): any darkness in, one output."""
import keras
import numpy as np
import pytest

from lowlight_tf import exposure as exposure_lib
from lowlight_tf import inference
from lowlight_tf import model as model_lib
from lowlight_tf import train_config, training

TARGET = exposure_lib.CANONICAL_DARK_MEAN


@pytest.fixture(scope="module")
def normalising_model():
    keras.utils.set_random_seed(1)
    return model_lib.build_unet("rgb", base_filters=4, depth=2, exposure_normalization=TARGET)


def _scene(height=96, width=160, seed=0):
    """A smooth dark scene in [0, 1] with texture (mean about 0.04)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = 0.02 + 0.05 * np.stack([x, y, 0.5 * (x + y)], axis=-1)
    return np.clip(base + rng.normal(0, 0.004, base.shape), 0, 1).astype(np.float32)


def test_layer_scales_each_image_to_the_target_mean():
    layer = exposure_lib.ExposureNormalization(TARGET)
    images = np.stack([_scene(seed=0), _scene(seed=1) * 3.0]).astype(np.float32)
    out = layer(images).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), [TARGET, TARGET], rtol=1e-5)
    # A black image is amplified at most target / MIN_MEAN, never by infinity.
    black = layer(np.zeros((1, 8, 8, 3), np.float32)).numpy()
    assert np.all(np.isfinite(black)) and black.max() == 0.0
    with pytest.raises(ValueError, match="target_mean"):
        exposure_lib.ExposureNormalization(1.5)


def test_output_does_not_depend_on_input_exposure(normalising_model):
    dark = _scene()
    once = inference.predict_array(normalising_model, dark)
    for gain in (0.5, 2.0, 4.0):
        np.testing.assert_allclose(inference.predict_array(normalising_model, dark * gain), once,
                                   atol=1e-5)
    # The paper's model (no normalisation) does depend on it: the test above can fail.
    plain = model_lib.build_unet("rgb", base_filters=4, depth=2)
    assert np.abs(inference.predict_array(plain, dark * 4.0)
                  - inference.predict_array(plain, dark)).max() > 1e-3


def test_tiles_share_the_whole_image_gain():
    # Left half much brighter than the right: a per-tile gain would change the output a lot;
    # tiling itself changes it little (depth 1: receptive radius ~16 px, within the overlap).
    keras.utils.set_random_seed(2)
    normalising_model = model_lib.build_unet("rgb", 4, 1, exposure_normalization=TARGET)
    dark = _scene(96, 192)
    dark[:, :96] *= 5.0
    whole = inference.predict_array(normalising_model, dark)
    tiled = inference.predict_array(normalising_model, dark, tile=64, overlap=32)
    scale = np.abs(whole).mean()

    def relative_error(out):
        return np.abs(out - whole).mean() / scale

    assert relative_error(tiled) < 0.05
    gain = exposure_lib.exposure_gain(normalising_model, dark)
    wrong = inference.predict_array(normalising_model, dark, tile=64, overlap=16,
                                    exposure_gain=gain * 2.0)
    assert relative_error(wrong) > 0.3  # the check above can fail
    # The gain is that of the whole image: the Keras model itself agrees on a whole input.
    direct = np.clip(normalising_model(dark[None]).numpy()[0], 0, 1)
    np.testing.assert_allclose(whole, direct, atol=1e-5)


def test_exposure_gain_and_architecture(normalising_model, tmp_path):
    dark = _scene()
    assert exposure_lib.exposure_gain(normalising_model, dark) == pytest.approx(
        TARGET / dark.mean(dtype=np.float64), rel=1e-6)
    assert model_lib.architecture(normalising_model)["exposure_normalization"] == TARGET
    plain = model_lib.build_unet("rgb", base_filters=4, depth=2)
    assert exposure_lib.exposure_gain(plain, dark) == 1.0
    assert "exposure_normalization" not in model_lib.architecture(plain)
    path = str(tmp_path / "m.keras")
    normalising_model.save(path)
    loaded = model_lib.load_model(path)
    np.testing.assert_array_equal(loaded(dark[None]).numpy(), normalising_model(dark[None]).numpy())
    with pytest.raises(ValueError, match="rgb models only"):
        model_lib.build_unet("bayer", 4, 2, exposure_normalization=TARGET)


def test_training_takes_the_init_models_normalisation(normalising_model, tmp_path):
    path = str(tmp_path / "pre.keras")
    normalising_model.save(path)
    config = training.resolve_config(train_config.TrainConfig(
        model_dir=str(tmp_path / "run"), stage="transfer", init_from=path, patch_size=32))
    assert config.exposure_normalization == pytest.approx(TARGET)
    fresh = training.resolve_config(train_config.TrainConfig(model_dir=str(tmp_path / "r2")))
    assert fresh.exposure_normalization == 0.0
    with pytest.raises(training.ConfigError, match="exposure_normalization"):
        training.resolve_config(train_config.TrainConfig(model_dir=str(tmp_path / "r3"),
                                                         exposure_normalization=1.5))
