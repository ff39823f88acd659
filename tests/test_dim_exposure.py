"""Dim training inputs (lowlight_tf.dim_exposure): linear-light darkening, mixing, pipeline use."""
import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import dim_exposure, inference, pipeline


def _bright(count=3, size=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count,) + size + (3,)).astype(np.float32)


def test_dim_exposure_matches_the_numpy_amplifier_and_keeps_zero_stops():
    bright = _bright()
    stops = np.array([0.0, 1.0, 2.5], np.float32)
    dim = dim_exposure.dim_exposure(bright, stops).numpy()
    assert np.array_equal(dim[0], bright[0])  # 0 stops: the photo itself
    for i, stop in enumerate(stops):
        expected = inference.amplify(bright[i].astype(np.uint8), 2.0 ** -stop) * 255.0
        np.testing.assert_allclose(dim[i], np.round(expected), atol=1.0)
    assert np.all(dim[1] <= bright[1]) and dim[2].mean() < dim[1].mean() < bright[1].mean()
    assert np.array_equal(dim, np.round(dim))


def test_mix_dim_replaces_the_chosen_fraction_reproducibly():
    bright = _bright(count=200, size=(4, 4))
    dark = np.full_like(bright, -1.0)  # marks patches that were not replaced
    seed = tf.constant([3, 4], tf.int64)
    assert dim_exposure.mix_dim(dark, bright, 0.0, seed=seed) is dark
    mixed = dim_exposure.mix_dim(dark, bright, 0.3, seed=seed).numpy()
    replaced = (mixed >= 0).all(axis=(1, 2, 3))
    assert np.array_equal(replaced, (mixed >= 0).any(axis=(1, 2, 3)))  # whole patches
    assert 35 <= replaced.sum() <= 85
    assert np.array_equal(mixed, dim_exposure.mix_dim(dark, bright, 0.3, seed=seed).numpy())
    everything = dim_exposure.mix_dim(dark, bright, 1.0, seed=seed).numpy()
    assert (everything >= 0).all() and np.all(everything <= bright)
    with pytest.raises(ValueError, match="dim fraction"):
        dim_exposure.mix_dim(dark, bright, 1.5, seed=seed)


@pytest.mark.slow
def test_train_dataset_dim_fraction_gives_clean_darkened_patches():
    brights = _bright(count=4, size=(32, 32))
    source = tf.data.Dataset.from_tensor_slices(
        {"bright": brights, "id": [f"p{i}.png" for i in range(4)]})

    def make(fraction):
        return pipeline.train_dataset(
            source, patch_size=16, batch_size=8, seed=0, simulation="paper", dim_fraction=fraction)

    dark, bright = next(iter(make(1.0)))
    # Every dark patch is its bright patch darkened in linear light by one factor per patch.
    linear_dark = dim_exposure.srgb_to_linear(dark).numpy()
    linear_bright = dim_exposure.srgb_to_linear(bright).numpy()
    for d, b in zip(linear_dark, linear_bright):
        mask = b > 0.2  # away from 8-bit rounding of the darkest values
        ratio = d[mask] / b[mask]
        assert ratio.std() < 0.05 * ratio.mean() + 0.01 and ratio.mean() <= 1.0 + 1e-3
    plain, _ = next(iter(make(0.0)))
    assert not np.array_equal(plain.numpy(), dark.numpy())
    pairs = tf.data.Dataset.from_tensor_slices(
        {"bright": brights, "dark": brights / 4, "id": [f"p{i}.png" for i in range(4)]})
    with pytest.raises(ValueError, match="dim_fraction"):
        pipeline.train_dataset(pairs, patch_size=16, batch_size=2, dim_fraction=0.5)
