"""The patch pipeline (paper §3.2): aligned augmentation, determinism, subsets, simulation.

Sources are tiny in-memory datasets with the structure of `lowlight_tf.data.load` (dicts of
float32 [H, W, 3] images in [0, 255] and a string `id`); one test goes through real TFRecords.
"""
import logging

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from lowlight_tf import pipeline, subsets
from lowlight_tf import simulation

# Per-channel offsets of the pixelwise pair function, so a channel mix-up is caught too.
_CHANNEL_OFFSETS = np.array([7, 50, 101])


def _dark_of(bright):
    """The pixelwise pair function of the fixtures: dark = (3 * bright + offset_c) mod 256."""
    return (3 * bright + _CHANNEL_OFFSETS) % 256


def _coordinate_image(height, width, rng):
    """Bright image whose R, G channels are the row and column, B random (pixels unique)."""
    rows, cols = np.indices((height, width))
    blue = rng.integers(0, 256, (height, width))
    return np.stack([rows, cols, blue], axis=-1).astype(np.float32)


def _concatenate(datasets):
    result = datasets[0]
    for dataset in datasets[1:]:
        result = result.concatenate(dataset)
    return result


def _pairs_source(sizes=((90, 120), (120, 100), (100, 100)), seed=0):
    """Pairs of several sizes with dark = _dark_of(bright); returns (dataset, brights)."""
    rng = np.random.default_rng(seed)
    brights = [_coordinate_image(h, w, rng) for h, w in sizes]
    datasets = [
        tf.data.Dataset.from_tensors({
            "bright": bright, "dark": _dark_of(bright).astype(np.float32),
            "id": f"scene_{i}.png", "exposure_ratio": np.float32(0)})
        for i, bright in enumerate(brights)]
    return _concatenate(datasets), brights


def _images_source(count=6, size=(40, 48), value=None, seed=0):
    """Bright-only examples: random images, or constant `value` images."""
    rng = np.random.default_rng(seed)
    if value is None:
        brights = rng.integers(0, 256, (count,) + size + (3,)).astype(np.float32)
    else:
        brights = np.full((count,) + size + (3,), value, np.float32)
    ids = [f"photo_{i:03d}.png" for i in range(count)]
    return tf.data.Dataset.from_tensor_slices({"bright": brights, "id": ids})


def _ids_source(count):
    """Tiny 2x2 images with ids only worth hashing."""
    return tf.data.Dataset.from_tensor_slices({
        "bright": np.zeros((count, 2, 2, 3), np.float32),
        "id": [f"dir/image_{i:04d}.jpg" for i in range(count)]})


def _batches(dataset, count):
    return [(dark.numpy(), bright.numpy()) for dark, bright in dataset.take(count)]


_DIHEDRAL = [(flip, k) for flip in (False, True) for k in range(4)]


def _transform(image, flip, k):
    """The pipeline's transform order: left-right flip, then rot90 by k (counter-clockwise)."""
    if flip:
        image = image[:, ::-1]
    return np.rot90(image, k)


def _locate(bright_patch, brights):
    """Find (image, flip, k, top, left) such that the patch is that transform of that crop."""
    size = bright_patch.shape[0]
    for flip, k in _DIHEDRAL:
        # Undo the rotation, then the flip, and read the crop position from the R, G channels.
        original = np.rot90(bright_patch, -k)
        if flip:
            original = original[:, ::-1]
        top, left = int(original[0, 0, 0]), int(original[0, 0, 1])
        for index, bright in enumerate(brights):
            crop = bright[top:top + size, left:left + size]
            if crop.shape == original.shape and np.array_equal(crop, original):
                return index, flip, k, top, left
    return None


def test_pairs_are_aligned_under_every_augmentation():
    source, brights = _pairs_source()
    dataset = pipeline.train_dataset(source, patch_size=32, batch_size=16, seed=3)
    seen_transforms, seen_offsets, seen_images = set(), set(), set()
    for dark, bright in _batches(dataset, 10):
        assert dark.shape == bright.shape == (16, 32, 32, 3)
        assert dark.dtype == bright.dtype == np.float32
        assert 0.0 <= dark.min() and dark.max() <= 1.0 and 0.0 <= bright.min() \
            and bright.max() <= 1.0
        bright_8bit = np.round(bright * 255.0)
        dark_8bit = np.round(dark * 255.0)
        np.testing.assert_allclose(bright * 255.0, bright_8bit, atol=1e-3)
        for i in range(16):
            # Alignment: the dark patch is exactly f(bright patch), pixel by pixel.
            np.testing.assert_array_equal(dark_8bit[i], _dark_of(bright_8bit[i]))
            # The bright patch is an exact flip/rotation of a crop of one source image.
            found = _locate(bright_8bit[i], brights)
            assert found is not None, "patch is not a flipped/rotated crop of any source image"
            index, flip, k, top, left = found
            seen_transforms.add((flip, k))
            seen_offsets.add((index, top, left))
            seen_images.add(index)
    # All eight flip/rotation combinations occur (SID's batch-axis "flip" would give one),
    # crops come from many positions in every image.
    assert seen_transforms == set(_DIHEDRAL)
    assert seen_images == {0, 1, 2}
    assert len(seen_offsets) > 100


def test_same_seed_same_batches_and_other_seed_differs():
    source, _ = _pairs_source()
    first = _batches(pipeline.train_dataset(source, patch_size=32, batch_size=4, seed=5), 6)
    again = _batches(pipeline.train_dataset(source, patch_size=32, batch_size=4, seed=5), 6)
    other = _batches(pipeline.train_dataset(source, patch_size=32, batch_size=4, seed=6), 6)
    for (dark_a, bright_a), (dark_b, bright_b) in zip(first, again):
        np.testing.assert_array_equal(dark_a, dark_b)
        np.testing.assert_array_equal(bright_a, bright_b)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))


def test_simulation_darkens_with_per_patch_parameters():
    preset = simulation.load_preset("paper")
    # Constant bright images and no noise: any variation between the dark patches of a batch
    # can only come from parameters sampled per patch.
    source = _images_source(count=4, value=200.0)
    dataset = pipeline.train_dataset(source, patch_size=16, batch_size=8, seed=1,
                                     simulation=preset, simulation_steps=("bl", "cd", "gc"))
    dark, bright = _batches(dataset, 1)[0]
    assert dark.shape == bright.shape == (8, 16, 16, 3)
    np.testing.assert_allclose(bright, 200.0 / 255.0, atol=1e-6)
    assert dark.min() >= 0.0 and dark.max() <= 1.0
    per_patch = dark.reshape(8, -1, 3)
    # Each patch is flat (one parameter row per patch) ...
    np.testing.assert_allclose(per_patch.std(axis=1), 0.0, atol=1e-6)
    # ... and the rows differ between patches.
    assert len(np.unique(np.round(per_patch[:, 0, 0] * 255.0, 3))) == 8
    assert np.all(dark < bright)


def test_simulation_full_model_is_reproducible_and_darker():
    source = _images_source(count=5)

    def make(seed):
        return pipeline.train_dataset(
            source, patch_size=24, batch_size=4, seed=seed, simulation="paper")

    first, again, other = _batches(make(0), 3), _batches(make(0), 3), _batches(make(1), 3)
    for (dark_a, bright_a), (dark_b, _) in zip(first, again):
        np.testing.assert_array_equal(dark_a, dark_b)
        assert np.all(dark_a.mean(axis=(1, 2, 3)) < bright_a.mean(axis=(1, 2, 3)))
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.fixture(name="info_logs")
def _info_logs(caplog):
    """Capture absl INFO lines whatever verbosity earlier tests (or TF/Keras) left behind."""
    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    with caplog.at_level(logging.INFO):
        yield caplog
    absl_logging.set_verbosity(previous)


def test_select_fraction_is_deterministic_nested_and_logged(info_logs):
    source = _ids_source(400)
    names = [f"dir/image_{i:04d}.jpg" for i in range(400)]

    def ids(fraction, seed=0, dataset=source):
        subset = subsets.select_fraction(dataset, fraction, seed=seed)
        return [x.decode() for x in subset.map(lambda e: e["id"]).as_numpy_iterator()]

    tenth = ids(0.1)
    assert "using 40 of 400 images (10%)" in info_logs.text
    assert len(tenth) == 40
    assert ids(0.1) == tenth
    half, full = ids(0.5), ids(1.0)
    assert len(half) == 200 and len(full) == 400
    assert set(tenth) < set(half) < set(full)
    assert set(ids(0.1, seed=1)) != set(tenth)
    # The ids kept are spread over the dataset, not its beginning.
    assert max(names.index(x) for x in tenth) > 200
    # The choice depends on the set of ids only: another order keeps the same ids, in order.
    shuffled = ids(0.1, dataset=_ids_source(400).shuffle(400, seed=0))
    assert sorted(shuffled) == sorted(tenth) and shuffled != tenth
    # An independent reference: the 40 smallest keyed hashes.
    hashes = tf.strings.to_hash_bucket_strong(names, 1 << 62, key=[0, 5]).numpy()
    assert tenth == [names[i] for i in sorted(np.argsort(hashes)[:40])]
    # At least one example, even for a tiny fraction of a small dataset.
    assert len(ids(0.01, dataset=_ids_source(5))) == 1


def test_train_fraction_selects_pairs(info_logs):
    source, brights = _pairs_source(sizes=((40, 40),) * 10)
    dataset = pipeline.train_dataset(source, patch_size=32, batch_size=8, train_fraction=0.2)
    assert "using 2 of 10 pairs (20%)" in info_logs.text
    seen = {_locate(np.round(bright * 255.0), brights)[0]
            for _, batch in _batches(dataset, 4) for bright in batch}
    assert len(seen) == 2


def test_small_images_are_mirror_extended():
    rng = np.random.default_rng(7)
    bright = rng.integers(0, 256, (10, 13, 3)).astype(np.float32)
    source = tf.data.Dataset.from_tensors({"bright": bright,
                                           "dark": _dark_of(bright).astype(np.float32),
                                           "id": "tiny.png"})
    dark_patch, bright_patch = _batches(
        pipeline.validation_dataset(source, patch_size=32, batch_size=1), 1)[0]
    expected = np.pad(bright, ((0, 22), (0, 19), (0, 0)), mode="symmetric")
    np.testing.assert_allclose(bright_patch[0] * 255.0, expected, atol=1e-3)
    np.testing.assert_allclose(dark_patch[0] * 255.0, _dark_of(expected), atol=1e-3)
    # Training works on the tiny pair too and stays aligned.
    dark, bright_out = _batches(pipeline.train_dataset(source, patch_size=32, batch_size=2), 1)[0]
    np.testing.assert_array_equal(np.round(dark * 255.0), _dark_of(np.round(bright_out * 255.0)))


def test_validation_is_fixed_finite_and_independent_of_batch_size():
    source = _images_source(count=5, size=(40, 44))

    def make(batch_size):
        return pipeline.validation_dataset(
            source, patch_size=16, batch_size=batch_size, seed=2, simulation="paper")

    dataset = make(2)
    epoch_one = list(dataset.as_numpy_iterator())
    epoch_two = list(dataset.as_numpy_iterator())
    assert [dark.shape[0] for dark, _ in epoch_one] == [2, 2, 1]
    for (dark_a, bright_a), (dark_b, bright_b) in zip(epoch_one, epoch_two):
        np.testing.assert_array_equal(dark_a, dark_b)
        np.testing.assert_array_equal(bright_a, bright_b)
    dark_all = np.concatenate([dark for dark, _ in epoch_one])
    single = np.concatenate([dark for dark, _ in make(5).as_numpy_iterator()])
    np.testing.assert_array_equal(dark_all, single)
    assert np.all(dark_all.mean(axis=(1, 2, 3)) < np.concatenate(
        [bright for _, bright in epoch_one]).mean(axis=(1, 2, 3)))
    capped = pipeline.validation_dataset(source, patch_size=16, batch_size=2,
                                         simulation="paper", max_patches=3)
    assert sum(dark.shape[0] for dark, _ in capped.as_numpy_iterator()) == 3


def test_validation_pairs_are_aligned_crops():
    source, brights = _pairs_source()
    for dark, bright in pipeline.validation_dataset(source, patch_size=32,
                                                    batch_size=2).as_numpy_iterator():
        for i in range(dark.shape[0]):
            bright_8bit = np.round(bright[i] * 255.0)
            np.testing.assert_array_equal(np.round(dark[i] * 255.0), _dark_of(bright_8bit))
            assert _locate(bright_8bit, brights)[1:3] == (False, 0)  # no flip, no rotation


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=0), "patch_size"),
    (dict(batch_size=-1), "batch_size"),
    (dict(patch_size=32.5), "patch_size"),
    (dict(train_fraction=0.0), "fraction"),
    (dict(train_fraction=1.5), "fraction"),
    (dict(seed=-1), "seed"),
    (dict(simulation="paper"), "simulation=None"),
])
def test_bad_arguments_fail_clearly(kwargs, message):
    source, _ = _pairs_source(sizes=((40, 40),))
    with pytest.raises(ValueError, match=message):
        pipeline.train_dataset(source, **kwargs)


def test_bad_sources_fail_clearly():
    with pytest.raises(ValueError, match="simulation preset"):
        pipeline.train_dataset(_images_source(), patch_size=16)
    with pytest.raises(ValueError, match="bright"):
        pipeline.train_dataset(tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 3))))
    with pytest.raises(ValueError, match="empty"):
        pipeline.train_dataset(_images_source().take(0), simulation="paper")
    with pytest.raises(ValueError, match="empty"):
        pipeline.validation_dataset(_images_source().take(0), patch_size=8, batch_size=2,
                                    simulation="paper")
    with pytest.raises(ValueError, match="preset"):
        pipeline.train_dataset(_images_source(), simulation="no_such_preset")


def test_through_real_tfrecords(tmp_path):
    """Pairs (8-bit PNG) and bright-only 16-bit TIFFs through data_prep, data.load, the pipeline."""
    from PIL import Image
    import tifffile

    from data_prep import prepare
    from lowlight_tf import data

    rng = np.random.default_rng(11)
    brights = []
    for folder in ("low", "high"):
        (tmp_path / "pairs" / folder).mkdir(parents=True)
    (tmp_path / "photos").mkdir()
    for i, (height, width) in enumerate(((60, 80), (72, 64), (48, 90))):
        bright = _coordinate_image(height, width, rng).astype(np.uint8)
        brights.append(bright.astype(np.float32))
        Image.fromarray(bright).save(tmp_path / "pairs" / "high" / f"{i}.png")
        Image.fromarray(_dark_of(bright.astype(np.int64)).astype(np.uint8)).save(
            tmp_path / "pairs" / "low" / f"{i}.png")
        photo = rng.integers(0, 65536, (height, width, 3)).astype(np.uint16)
        tifffile.imwrite(tmp_path / "photos" / f"photo{i}.tif", photo)
    output_dir = str(tmp_path / "tfrecords")
    prepare.make_tfrecords("pairs", output_dir=output_dir, name="toy_pairs",
                           input_dir=str(tmp_path / "pairs"), splits="train:1.0")
    prepare.make_tfrecords("images", output_dir=output_dir, name="toy_photos",
                           input_dir=str(tmp_path / "photos"), splits="train:1.0",
                           bit_depth="16")

    pairs = data.load(output_dir, "toy_pairs", "train")
    seen_images = set()
    for dark, bright in _batches(pipeline.train_dataset(pairs, patch_size=32, batch_size=8), 4):
        for i in range(8):
            bright_8bit = np.round(bright[i] * 255.0)
            np.testing.assert_array_equal(np.round(dark[i] * 255.0), _dark_of(bright_8bit))
            found = _locate(bright_8bit, brights)
            assert found is not None
            seen_images.add(found[0])
    assert seen_images == {0, 1, 2}

    photos = data.load(output_dir, "toy_photos", "train")
    dark, bright = _batches(pipeline.train_dataset(photos, patch_size=32, batch_size=4,
                                                   simulation="paper"), 1)[0]
    assert dark.shape == bright.shape == (4, 32, 32, 3)
    assert np.all(dark.mean(axis=(1, 2, 3)) < bright.mean(axis=(1, 2, 3)))
    # 16-bit values survive the uint16 cache exactly (up to float32 rounding).
    codes = bright * 255.0 * 257.0
    np.testing.assert_allclose(codes, np.round(codes), atol=0.02)
    validation = list(pipeline.validation_dataset(photos, patch_size=32, batch_size=2,
                                                  simulation="paper").as_numpy_iterator())
    assert sum(d.shape[0] for d, _ in validation) == 3
