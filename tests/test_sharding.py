"""Multi-worker input sharding: FILE when every worker has a TFRecord file of its own, else DATA."""
import os

import numpy as np
from PIL import Image
import pytest

from conftest import run_train_workers  # pylint: disable=import-error
from data_prep import prepare
from lowlight_tf import data, distribute


def test_the_policy_needs_one_file_per_worker():
    assert distribute.shard_policy(files=4, workers=2) == "FILE"
    assert distribute.shard_policy(files=2, workers=2) == "FILE"
    assert distribute.shard_policy(files=1, workers=2) == "DATA"


@pytest.fixture(name="sharded_data")
def _sharded_data(tmp_path):
    """4 train photos in 4 TFRecord files (a tiny shard size) and 2 validation photos."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    overrides = {}
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(
            photos / f"p{i}.png")
        overrides[f"p{i}.png"] = "val" if i >= 4 else "train"
    prepare.make_tfrecords("images", output_dir=str(tmp_path / "tfrecords"), name="tiny",
                           input_dir=str(photos), splits="train:0.7,val:0.3",
                           split_overrides=overrides, max_shard_mb=1e-6)
    return str(tmp_path / "tfrecords" / "tiny")


def test_file_shards_are_disjoint_and_cover_the_split(sharded_data):
    output_dir, name = os.path.split(sharded_data)
    ids = [sorted(e["id"].decode() for e in data.load(
        output_dir, name, "train", file_shard=(index, 2)).as_numpy_iterator())
        for index in range(2)]
    everything = sorted(e["id"].decode() for e in data.load(
        output_dir, name, "train").as_numpy_iterator())
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == everything


@pytest.mark.slow
def test_two_workers_read_their_own_files(tmp_path, sharded_data):
    output_dir, name = os.path.split(sharded_data)
    assert data.num_shards(output_dir, name, "train") == 4
    outputs = run_train_workers(
        "--stage=pretrain", f"--train_data={sharded_data}:train",
        f"--val_data={sharded_data}:val", f"--model_dir={tmp_path / 'run'}", "--base_filters=4",
        "--depth=2", "--patch_size=16", "--batch_size=4", "--epochs=1", "--steps_per_epoch=2",
        "--validation_steps=1", "--num_images=0")
    for returncode, stdout, stderr in outputs:
        assert returncode == 0, stderr[-3000:]
        assert "4 file(s) split between 2 workers by FILE" in stdout
    assert (tmp_path / "run" / "final.keras").exists()
