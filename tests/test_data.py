"""Tests of the reading API lowlight_tf.data (docs/interfaces.md) on a tiny generated dataset."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from data_prep import prepare
from lowlight_tf import data


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """An images dataset mixing 8-bit PNG and 16-bit TIFF (stored uint16) and a pairs dataset."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    arrays = {}
    (root / "images").mkdir()
    for i in range(6):
        arrays[f"p{i}.png"] = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        Image.fromarray(arrays[f"p{i}.png"]).save(root / "images" / f"p{i}.png")
    arrays["t.tif"] = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    tifffile.imwrite(root / "images" / "t.tif", arrays["t.tif"], photometric="rgb")
    for side in ("low", "high"):
        (root / "pairs" / side).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(
                root / "pairs" / side / f"{i}.png")
    out = str(root / "out")
    prepare.make_tfrecords("images", output_dir=out, name="imgs", input_dir=str(root / "images"),
                           splits="train:0.5,test:0.5")
    prepare.make_tfrecords("pairs", output_dir=out, name="prs", input_dir=str(root / "pairs"),
                           splits="train:1")
    return out, arrays


def test_parse_dataset_spec():
    assert data.parse_dataset_spec("out/eliei:test") == ("out", "eliei", "test")
    assert data.parse_dataset_spec("/a/b/name/") == ("/a/b", "name", None)
    assert data.parse_dataset_spec("/a/b/name", default_split="train").split == "train"
    assert data.parse_dataset_spec("name:val") == (".", "name", "val")
    assert data.parse_dataset_spec("out/name:train[:10]").split == "train[:10]"
    for bad in ("", ":test", "/"):
        with pytest.raises(data.DatasetError):
            data.parse_dataset_spec(bad)


def test_load_gives_float_images_in_0_255(datasets):
    out, arrays = datasets
    seen = {}
    for split in ("train", "test"):
        for example in data.load(out, "imgs", split):
            example_id = example["id"].numpy().decode()
            bright = example["bright"].numpy()
            assert bright.dtype == np.float32 and bright.shape == arrays[example_id].shape
            seen[example_id] = bright
            assert example["source_format"].dtype == tf.string
    assert sorted(seen) == sorted(arrays)
    np.testing.assert_array_equal(seen["p0.png"], arrays["p0.png"].astype(np.float32))
    np.testing.assert_array_equal(
        seen["t.tif"], arrays["t.tif"].astype(np.float32) / np.float32(257.0))
    assert seen["t.tif"].max() <= 255.0


def test_kind_counts_and_summary(datasets):
    out, arrays = datasets
    assert data.dataset_kind(out, "imgs") == "images"
    assert data.dataset_kind(out, "prs") == "pairs"
    counts = data.splits(out, "imgs")
    assert sum(counts.values()) == len(arrays)
    assert data.num_examples(out, "imgs", "train") == counts["train"]
    assert data.read_summary(out, "prs")["examples"] == 3
    pair = next(iter(data.load_spec(f"{out}/prs")))  # default split: train
    assert set(pair) >= {"dark", "bright", "id", "exposure_ratio", "source_format"}
    assert pair["dark"].dtype == tf.float32
    assert data.dataset_dir(out, "prs").endswith(os.path.join("prs", "1.0.0"))


def test_missing_dataset_and_split_raise_clear_errors(datasets):
    out, _ = datasets
    with pytest.raises(data.DatasetError, match="No dataset at .*nothing_here"):
        data.load(out, "nothing_here", "train")
    with pytest.raises(data.DatasetError, match="no split 'val'.*available: train"):
        data.load(out, "prs", "val")
    with pytest.raises(ValueError):  # DatasetError is a ValueError
        data.num_examples(out, "prs", "val")
