"""The training pipeline's cache choice: memory, disk, none, and auto by a decoded-size budget."""
import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import pipeline
from lowlight_tf import pipeline_cache


def _source(count=4, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    return tf.data.Dataset.from_tensor_slices({
        "bright": rng.integers(0, 256, (count,) + size + (3,)).astype(np.float32),
        "id": [f"photo_{i}.png" for i in range(count)]})


def _batches(cache, count=5):
    dataset = pipeline.train_dataset(_source(), patch_size=16, batch_size=3, seed=4,
                                     simulation="paper", cache=cache)
    return [dark.numpy() for dark, _ in dataset.take(count)]


def test_cached_modes_give_the_same_batches_and_streaming_is_reproducible(tmp_path):
    memory = _batches("memory")
    for cache in (f"disk:{tmp_path / 'cache'}", True):
        for a, b in zip(memory, _batches(cache)):
            np.testing.assert_array_equal(a, b)
    assert any(p.name.startswith("cache") for p in tmp_path.iterdir())  # the file cache exists
    streaming, again = _batches("none"), _batches(False)
    for a, b in zip(streaming, again):
        np.testing.assert_array_equal(a, b)
    assert streaming[0].shape == memory[0].shape
    with pytest.raises(ValueError, match="cache="):
        _batches("ram")


def test_streaming_visits_every_image_each_epoch():
    """Constant images with distinct values: the streamed patches name their image."""
    values = np.arange(6, dtype=np.float32) * 40 + 10
    source = tf.data.Dataset.from_tensor_slices({
        "bright": np.broadcast_to(values[:, None, None, None], (6, 20, 20, 3)).copy(),
        "dark": np.broadcast_to(values[:, None, None, None] / 4, (6, 20, 20, 3)).copy(),
        "id": [f"p{i}.png" for i in range(6)]})
    dataset = pipeline.train_dataset(source, patch_size=8, batch_size=6, seed=1, cache="none",
                                     shuffle_buffer=4)
    seen = [np.round(bright[:, 0, 0, 0].numpy() * 255) for _, bright in dataset.take(4)]
    counts = np.unique(np.concatenate(seen), return_counts=True)
    np.testing.assert_array_equal(counts[0], values)
    # 24 patches = 4 epochs; the 4-patch buffer mixes neighbouring epochs by at most one visit.
    assert counts[1].min() >= 3 and counts[1].max() <= 5


def test_auto_caches_in_memory_only_within_the_budget(tmp_path):
    source = _source(count=4, size=(40, 48))
    # 4 images of 40 x 48 x 3 uint16 codes = 0.044 MiB; patch 64 extends them to 64 x 64.
    mode, megabytes = pipeline_cache.cache_mode("auto", source, count=4, budget_mb=1)
    assert mode == "memory" and megabytes == pytest.approx(4 * 40 * 48 * 3 * 2 / 2**20)
    mode, megabytes = pipeline_cache.cache_mode("auto", source, count=1000, budget_mb=1,
                                                patch_size=64)
    assert mode == "none" and megabytes == pytest.approx(1000 * 64 * 64 * 3 * 2 / 2**20)
    assert pipeline_cache.cache_mode("none", source, count=4, budget_mb=1) == ("none", None)
    with pytest.raises(ValueError, match="does not exist"):
        pipeline_cache.cache_mode(f"disk:{tmp_path / 'missing' / 'c'}", source, count=4,
                                  budget_mb=1)
    with pytest.raises(ValueError, match="not one of"):
        pipeline_cache.cache_mode("fast", source, count=4, budget_mb=1)


def test_streaming_reads_few_files_at_once_and_the_same_examples(tmp_path):
    """data.load(readers=) (what --cache=none uses) gives the same examples as the default."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from data_prep import prepare  # pylint: disable=import-outside-toplevel
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / f"p{i}.png")
    out = str(tmp_path / "tfrecords")
    prepare.make_tfrecords("images", output_dir=out, name="many", input_dir=str(tmp_path),
                           splits="train:1", max_shard_mb=0.003)
    assert data.num_shards(out, "many", "train") > pipeline.STREAM_READERS
    default = {e["id"]: e["bright"] for e in data.load(out, "many", "train").as_numpy_iterator()}
    few = list(data.load(out, "many", "train", readers=pipeline.STREAM_READERS)
               .as_numpy_iterator())
    assert len(few) == len(default) == 12
    for example in few:
        np.testing.assert_array_equal(example["bright"], default[example["id"]])
