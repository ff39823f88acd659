"""The training pipeline's cache choice: memory, disk, none, and auto by a decoded-size budget."""
import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import pipeline


def _source(count=4, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    return tf.data.Dataset.from_tensor_slices({
        "bright": rng.integers(0, 256, (count,) + size + (3,)).astype(np.float32),
        "id": [f"photo_{i}.png" for i in range(count)]})


def _batches(cache, count=5):
    dataset = pipeline.train_dataset(_source(), patch_size=16, batch_size=3, seed=4,
                                     simulation="paper", cache=cache)
    return [dark.numpy() for dark, _ in dataset.take(count)]


def test_every_cache_gives_the_same_batches(tmp_path):
    memory = _batches("memory")
    for cache in ("none", f"disk:{tmp_path / 'cache'}", True, False):
        for a, b in zip(memory, _batches(cache)):
            np.testing.assert_array_equal(a, b)
    assert any(p.name.startswith("cache") for p in tmp_path.iterdir())  # the file cache exists
    with pytest.raises(ValueError, match="cache="):
        _batches("ram")


def test_auto_caches_in_memory_only_within_the_budget(tmp_path):
    source = _source(count=4, size=(40, 48))
    # 4 images of 40 x 48 x 3 uint16 codes = 0.044 MiB; patch 64 extends them to 64 x 64.
    mode, megabytes = pipeline.cache_mode("auto", source, count=4, budget_mb=1)
    assert mode == "memory" and megabytes == pytest.approx(4 * 40 * 48 * 3 * 2 / 2**20)
    mode, megabytes = pipeline.cache_mode("auto", source, count=1000, budget_mb=1,
                                          patch_size=64)
    assert mode == "none" and megabytes == pytest.approx(1000 * 64 * 64 * 3 * 2 / 2**20)
    assert pipeline.cache_mode("none", source, count=4, budget_mb=1) == ("none", None)
    with pytest.raises(ValueError, match="does not exist"):
        pipeline.cache_mode(f"disk:{tmp_path / 'missing' / 'c'}", source, count=4, budget_mb=1)
    with pytest.raises(ValueError, match="not one of"):
        pipeline.cache_mode("fast", source, count=4, budget_mb=1)
