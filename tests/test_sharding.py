"""Multi-worker input sharding: FILE when every worker has a TFRecord file of its own, else DATA."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from data_prep import prepare
from lowlight_tf import data, distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_read_their_own_files(tmp_path, sharded_data):
    output_dir, name = os.path.split(sharded_data)
    assert data.num_shards(output_dir, name, "train") == 4
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    args = ["--stage=pretrain", f"--train_data={sharded_data}:train",
            f"--val_data={sharded_data}:val", f"--model_dir={tmp_path / 'run'}",
            "--base_filters=4", "--depth=2", "--patch_size=16", "--batch_size=4", "--epochs=1",
            "--steps_per_epoch=2", "--validation_steps=1", "--num_images=0",
            "--strategy=multi_worker"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    processes = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "train"), *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}})))
        for index in range(2)]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert "4 file(s) split between 2 workers by FILE" in stdout
    assert (tmp_path / "run" / "final.keras").exists()
