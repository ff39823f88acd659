"""Tests of the offline data job (data_prep/ and tools/make_tfrecords) on tiny generated fixtures.

Fixtures are written in the tests: 8-bit PNG/JPEG/BMP with Pillow, 16-bit TIFF with tifffile,
16-bit PNG with TensorFlow, DNG raw files with pidng (Bayer mosaics with a known black level).
References are independent of the code under test: pixels read back through TFDS/TensorFlow's PNG
decoder are compared with the arrays written, raw renders with a direct rawpy call, splits with a
SHA-256 computed here.
"""
import hashlib
import io
import json
import os
import re

import numpy as np
import pytest
import rawpy
import tensorflow as tf
import tifffile
from PIL import Image

from conftest import run_tool  # pylint: disable=import-error
from data_prep import core
from data_prep import pairs
from data_prep import prepare
from data_prep import simulated as simulated_lib
from data_prep import splitting
from lowlight_tf import data
from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import png

BLACK_LEVEL = 64
WHITE_LEVEL = 1023


# ------------------------------------------------------------------------------------------------
# Fixture writers.
# ------------------------------------------------------------------------------------------------
def _rng(seed):
    return np.random.default_rng(seed)


def write_png8(path, seed=0, shape=(20, 28)):
    """Write a random 8-bit RGB PNG; return the array."""
    array = _rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def write_tiff16(path, seed=0, shape=(18, 22)):
    """Write a random 16-bit RGB TIFF; return the array."""
    array = _rng(seed).integers(0, 65536, shape + (3,), dtype=np.uint16)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tifffile.imwrite(path, array, photometric="rgb")
    return array


def write_png16(path, seed=0, shape=(12, 14)):
    """Write a random 16-bit RGB PNG with TensorFlow's encoder; return the array."""
    array = _rng(seed).integers(0, 65536, shape + (3,), dtype=np.uint16)
    tf.io.write_file(path, tf.io.encode_png(array))
    return array


def write_dng(path, seed=0, shape=(32, 48), exposure_scale=1.0):
    """Write an RGGB Bayer DNG (10-bit data, black level 64); return the mosaic."""
    pidng_core = pytest.importorskip("pidng.core")
    from pidng import defs  # pylint: disable=import-outside-toplevel
    height, width = shape
    signal = _rng(seed).integers(0, WHITE_LEVEL - BLACK_LEVEL, shape) * exposure_scale
    mosaic = (BLACK_LEVEL + signal).astype(np.uint16)
    tags = pidng_core.DNGTags()
    tags.set(pidng_core.Tag.ImageWidth, width)
    tags.set(pidng_core.Tag.ImageLength, height)
    tags.set(pidng_core.Tag.TileWidth, width)
    tags.set(pidng_core.Tag.TileLength, height)
    tags.set(pidng_core.Tag.Orientation, defs.Orientation.Horizontal)
    tags.set(pidng_core.Tag.PhotometricInterpretation,
             defs.PhotometricInterpretation.Color_Filter_Array)
    tags.set(pidng_core.Tag.SamplesPerPixel, 1)
    tags.set(pidng_core.Tag.BitsPerSample, 16)
    tags.set(pidng_core.Tag.CFARepeatPatternDim, [2, 2])
    tags.set(pidng_core.Tag.CFAPattern, defs.CFAPattern.RGGB)
    tags.set(pidng_core.Tag.BlackLevel, BLACK_LEVEL)
    tags.set(pidng_core.Tag.WhiteLevel, WHITE_LEVEL)
    identity = [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    tags.set(pidng_core.Tag.ColorMatrix1, identity)
    tags.set(pidng_core.Tag.CalibrationIlluminant1, defs.CalibrationIlluminant.D65)
    tags.set(pidng_core.Tag.AsShotNeutral, [[1, 2], [1, 1], [1, 2]])  # camera WB 2, 1, 2
    tags.set(pidng_core.Tag.Make, "Test")
    tags.set(pidng_core.Tag.Model, "Fixture")
    tags.set(pidng_core.Tag.DNGVersion, defs.DNGVersion.V1_4)
    tags.set(pidng_core.Tag.DNGBackwardVersion, defs.DNGVersion.V1_2)
    tags.set(pidng_core.Tag.PreviewColorSpace, defs.PreviewColorSpace.sRGB)
    directory, file_name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    converter = pidng_core.RAW2DNG()
    converter.options(tags, path=directory, compress=False)
    converter.convert(mosaic, filename=os.path.splitext(file_name)[0])
    written = os.path.join(directory, os.path.splitext(file_name)[0] + ".dng")
    if written != path:
        os.replace(written, path)
    return mosaic


def rawpy_reference(path, no_auto_bright=False):
    """Render a raw file directly with rawpy (the documented options), as the reference."""
    with rawpy.imread(path) as raw:
        return raw.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=no_auto_bright)


def stored_examples(output_dir, name, split):
    """Return {id: example as numpy} of a split, as stored."""
    examples = {}
    for example in data.load_stored(output_dir, name, split).as_numpy_iterator():
        examples[example["id"].decode()] = example
    return examples


def build(kind, output_dir, name, **kwargs):
    """Run the library entry point quietly."""
    return prepare.make_tfrecords(kind, output_dir=str(output_dir), name=name, **kwargs)


# ------------------------------------------------------------------------------------------------
# Unit tests.
# ------------------------------------------------------------------------------------------------
def test_parse_splits_and_errors():
    assert list(splitting.parse_splits("train:0.8,val:0.1,test:0.1").items()) == [
        ("train", 0.8), ("val", 0.1), ("test", 0.1)]
    for bad in ("train:0.5", "train", "train:x,val:0.5", "Train:1", "a:0.5,a:0.5", "a:1.5"):
        with pytest.raises(ValueError):
            splitting.parse_splits(bad)


def test_split_assignment_matches_sha256_and_fractions():
    splits = splitting.parse_splits("train:0.7,val:0.2,test:0.1")
    ids = [f"dir/img_{i:04d}.png" for i in range(3000)]
    for example_id in ids[:50]:
        position = int(hashlib.sha256(example_id.encode()).hexdigest()[:16], 16) / 2.0 ** 64
        expected = "train" if position < 0.7 else "val" if position < 0.9 else "test"
        assert splitting.assign_split(example_id, splits) == expected
    counts = {name: 0 for name in splits}
    for example_id in ids:
        counts[splitting.assign_split(example_id, splits)] += 1
    assert abs(counts["train"] / 3000 - 0.7) < 0.04
    assert abs(counts["test"] / 3000 - 0.1) < 0.03


def test_encode_png_round_trip_8_and_16_bit():
    image8 = _rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png.encode_png(image8))))
    np.testing.assert_array_equal(decoded, image8)
    image16 = _rng(2).integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    decoded16 = tf.io.decode_png(png.encode_png(image16), dtype=tf.uint16).numpy()
    np.testing.assert_array_equal(decoded16, image16)


def test_downscale_matches_block_mean():
    image = _rng(3).integers(0, 65536, (16, 24, 3), dtype=np.uint16)
    small = formats.downscale(image, 12)
    reference = image.astype(np.float64).reshape(8, 2, 12, 2, 3).mean(axis=(1, 3))
    assert small.shape == (8, 12, 3) and small.dtype == np.uint16
    np.testing.assert_array_equal(small, np.round(reference).astype(np.uint16))
    assert formats.downscale(image, 24) is image


def test_exposure_time_and_cfa_names():
    assert pairs.exposure_time_from_name("Sony/short/00001_00_0.04s.ARW") == 0.04
    assert pairs.exposure_time_from_name("00001_00_10s.ARW") == 10.0
    assert pairs.exposure_time_from_name("100.png") is None
    assert decode.cfa_pattern_name(np.array([[2, 3], [1, 0]]), b"RGBG") == "BGGR"
    assert decode.cfa_pattern_name(None, b"RGBG") == ""


# ------------------------------------------------------------------------------------------------
# Builders over fixture trees.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_images_round_trip_pixel_identical_with_raw_metadata(tmp_path):
    source = tmp_path / "in"
    png8 = write_png8(str(source / "a.png"), seed=1)
    jpeg_like = write_png8(str(source / "nested" / "b.bmp"), seed=2)
    tiff16 = write_tiff16(str(source / "nested" / "c.tif"), seed=3)
    png16 = write_png16(str(source / "d.png"), seed=4)
    write_dng(str(source / "raw" / "e.dng"), seed=5)
    summary = build("images", tmp_path / "out", "mixed", input_dir=str(source), splits="train:1")
    assert summary["dtype"] == "uint16" and summary["examples"] == 5 and not summary["skipped"]
    stored = stored_examples(str(tmp_path / "out"), "mixed", "train")
    assert sorted(stored) == ["a.png", "d.png", "nested/b.bmp", "nested/c.tif", "raw/e.dng"]
    # 8-bit inputs in a uint16 dataset are 257 * v, exactly.
    np.testing.assert_array_equal(stored["a.png"]["bright"], png8.astype(np.uint16) * 257)
    np.testing.assert_array_equal(stored["nested/b.bmp"]["bright"],
                                  jpeg_like.astype(np.uint16) * 257)
    np.testing.assert_array_equal(stored["nested/c.tif"]["bright"], tiff16)
    np.testing.assert_array_equal(stored["d.png"]["bright"], png16)
    raw = stored["raw/e.dng"]
    np.testing.assert_array_equal(raw["bright"], rawpy_reference(str(source / "raw" / "e.dng")))
    assert raw["is_raw"] and raw["source_format"].decode() == "dng"
    np.testing.assert_array_equal(raw["black_level"], [BLACK_LEVEL] * 4)
    assert raw["white_level"] == WHITE_LEVEL
    assert raw["cfa_pattern"].decode() == "RGGB"
    np.testing.assert_array_equal(raw["camera_white_balance"], [2, 1, 2, 0])
    assert not stored["a.png"]["is_raw"] and stored["a.png"]["cfa_pattern"].decode() == ""
    assert stored["nested/c.tif"]["source_format"].decode() == "tiff"
    # The float reading API gives back the 8-bit values exactly.
    loaded = {ex["id"].numpy().decode(): ex for ex in data.load(str(tmp_path / "out"), "mixed",
                                                                "train")}
    np.testing.assert_array_equal(loaded["a.png"]["bright"].numpy(), png8.astype(np.float32))
    assert loaded["nested/c.tif"]["bright"].dtype == tf.float32
    assert float(tf.reduce_max(loaded["nested/c.tif"]["bright"])) <= 255.0


def test_8bit_only_input_stays_uint8_and_max_side(tmp_path):
    source = tmp_path / "in"
    arrays = {f"p{i}.png": write_png8(str(source / f"p{i}.png"), seed=i, shape=(40, 60))
              for i in range(3)}
    summary = build("images", tmp_path / "out", "small", input_dir=str(source), splits="train:1",
                    max_side=30)
    assert summary["dtype"] == "uint8"
    stored = stored_examples(str(tmp_path / "out"), "small", "train")
    for key, array in arrays.items():
        reference = array.astype(np.float64).reshape(20, 2, 30, 2, 3).mean(axis=(1, 3))
        np.testing.assert_array_equal(stored[key]["bright"], np.round(reference).astype(np.uint8))


def test_several_shards_when_shard_size_is_small(tmp_path):
    source = tmp_path / "in"
    for i in range(12):
        write_png8(str(source / f"img{i:02d}.png"), seed=i, shape=(24, 24))
    summary = build("images", tmp_path / "out", "sharded", input_dir=str(source),
                    splits="train:1", max_shard_mb=0.004)
    shards = [f for f in os.listdir(summary["path"]) if f.startswith("sharded-train.tfrecord")]
    assert summary["splits"]["train"]["shards"] == len(shards) > 2
    assert data.num_examples(str(tmp_path / "out"), "sharded", "train") == 12
    assert len(stored_examples(str(tmp_path / "out"), "sharded", "train")) == 12


@pytest.mark.slow
def test_splits_are_deterministic_and_stable_when_data_grows(tmp_path):
    source = tmp_path / "in"
    for i in range(20):
        write_png8(str(source / f"img{i:02d}.png"), seed=i, shape=(8, 8))
    splits = "train:0.6,val:0.2,test:0.2"

    def membership(name):
        found = {}
        for split in data.splits(str(tmp_path / "out"), name):
            for example_id in stored_examples(str(tmp_path / "out"), name, split):
                found[example_id] = split
        return found

    build("images", tmp_path / "out", "first", input_dir=str(source), splits=splits)
    build("images", tmp_path / "out", "second", input_dir=str(source), splits=splits)
    first = membership("first")
    assert first == membership("second") and len(first) == 20
    assert len(set(first.values())) == 3
    for i in range(20, 26):  # More data later: the old images keep their split.
        write_png8(str(source / f"img{i:02d}.png"), seed=i, shape=(8, 8))
    build("images", tmp_path / "out", "grown", input_dir=str(source), splits=splits)
    grown = membership("grown")
    assert {k: grown[k] for k in first} == first and len(grown) == 26


def _truncated_copy(path, target):
    with open(path, "rb") as f:
        payload = f.read()
    with open(target, "wb") as f:
        f.write(payload[:len(payload) // 2])


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    source = tmp_path / "in"
    write_png8(str(source / "good.png"), seed=0)
    (source / "empty.png").write_bytes(b"")
    (source / "text.jpg").write_text("this is not a picture")
    write_png8(str(tmp_path / "whole.png"), seed=1, shape=(64, 64))
    _truncated_copy(str(tmp_path / "whole.png"), str(source / "cut.png"))
    Image.fromarray(_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        str(tmp_path / "whole.jpg"), quality=95)
    _truncated_copy(str(tmp_path / "whole.jpg"), str(source / "cut.jpg"))
    (source / "junk.cr3").write_bytes(b"\x00not a raw file" * 50)
    write_dng(str(tmp_path / "whole.dng"), seed=3)
    _truncated_copy(str(tmp_path / "whole.dng"), str(source / "cut.dng"))
    (source / "README.txt").write_text("ignored, not an image extension")
    unreadable = source / "locked.png"
    write_png8(str(unreadable), seed=4)
    os.chmod(unreadable, 0)
    summary = build("images", tmp_path / "out", "bad", input_dir=str(source), splits="train:1")
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    assert summary["examples"] == (2 if os.geteuid() == 0 else 1)  # root reads mode-000 files
    assert "empty file" in reasons["empty.png"]
    assert reasons["text.jpg"].startswith("not an image")
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["junk.cr3"].startswith("unsupported raw format")
    assert "cut.dng" in reasons
    if os.geteuid() != 0:
        assert "unreadable" in reasons["locked.png"]
    assert summary["ignored_files"] == 1 and summary["skipped_count"] == len(reasons)
    with open(os.path.join(summary["path"], "summary.json")) as f:
        assert json.load(f)["skipped"] == summary["skipped"]


def test_nothing_usable_and_missing_dir_are_input_errors(tmp_path):
    with pytest.raises(prepare.InputError, match="does not exist"):
        build("images", tmp_path / "out", "none", input_dir=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(prepare.InputError, match="Nothing usable"):
        build("images", tmp_path / "out", "none", input_dir=str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.png").write_text("no")
    with pytest.raises(prepare.InputError, match="empty file"):
        build("images", tmp_path / "out", "none", input_dir=str(bad))
    assert not os.path.exists(tmp_path / "out" / "none")
    assert not [e for e in os.listdir(tmp_path / "out") if "incomplete" in e]
    with pytest.raises(prepare.InputError, match="not a valid dataset name"):
        build("images", tmp_path / "out", "Bad-Name", input_dir=str(bad))


def test_split_whose_inputs_all_fail_is_dropped(tmp_path):
    source = tmp_path / "in"
    overrides = {"good.png": "train", "bad.png": "test"}
    write_png8(str(source / "good.png"))
    (source / "bad.png").write_bytes(b"")
    summary = build("images", tmp_path / "out", "drop", input_dir=str(source),
                    split_overrides=overrides)
    assert list(summary["splits"]) == ["train"] and summary["examples"] == 1
    assert any("dropped" in note for note in summary["notes"])
    with pytest.raises(data.DatasetError, match="no split 'test'"):
        data.load(str(tmp_path / "out"), "drop", "test")


def test_existing_dataset_is_reused_only_with_the_same_fingerprint(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    write_png8(str(source / "a.png"))
    first = build("images", out, "reuse", input_dir=str(source), splits="train:1")
    stored = json.loads((out / "reuse" / "1.0.0" / "fingerprint.json").read_text())
    assert stored["digest"] == first["fingerprint"]
    assert list(stored["inputs"]) == [str(source / "a.png")]
    again = build("images", out, "reuse", input_dir=str(source), splits="train:1")
    assert again["reused"] and again["examples"] == 1
    # Another input set, other options, a changed file: refused, with the differences named.
    write_png8(str(source / "b.png"), seed=1)
    with pytest.raises(prepare.InputError, match=r"(?s)1 new input file.*b\.png.*--overwrite"):
        build("images", out, "reuse", input_dir=str(source), splits="train:1")
    os.remove(source / "b.png")
    with pytest.raises(prepare.InputError, match=r"max_side: stored None, now 8"):
        build("images", out, "reuse", input_dir=str(source), splits="train:1", max_side=8)
    with pytest.raises(prepare.InputError, match=r"splits: stored"):
        build("images", out, "reuse", input_dir=str(source), splits="train:0.5,test:0.5")
    os.utime(source / "a.png", ns=(1, 1))
    with pytest.raises(prepare.InputError, match=r"1 input file\(s\) changed"):
        build("images", out, "reuse", input_dir=str(source), splits="train:1")
    write_png8(str(source / "b.png"), seed=1)
    fresh = build("images", out, "reuse", input_dir=str(source), splits="train:1",
                  overwrite=True)
    assert not fresh["reused"] and fresh["examples"] == 2
    assert data.num_examples(str(out), "reuse", "train") == 2
    assert build("images", out, "reuse", input_dir=str(source), splits="train:1")["reused"]
    with pytest.raises(prepare.InputError, match="already holds"):
        build("pairs", out, "reuse", input_dir=str(source))


def test_split_ids_that_match_no_input_are_an_error(tmp_path):
    source = tmp_path / "in"
    for i in (4, 5, 7):
        write_png8(str(source / f"{i}.png"), seed=i)
    with pytest.raises(prepare.InputError, match=r"calib:9999, calib:nosuch match no input"):
        build("images", tmp_path / "out", "ids", input_dir=str(source), splits="train:1",
              split_ids=["calib:4,9999,nosuch"])
    assert not (tmp_path / "out" / "ids").exists()
    summary = build("images", tmp_path / "out", "ids", input_dir=str(source), splits="train:1",
                    split_ids=["calib:4-6,7"])
    assert summary["splits"]["calib"]["examples"] == 3


def test_interrupted_run_leaves_no_readable_dataset(tmp_path):
    source = tmp_path / "in"
    write_png8(str(source / "a.png"))

    def interrupt(line):
        if "inputs," in line:  # the first progress line during generation
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build("images", tmp_path / "out", "cut", input_dir=str(source), splits="train:1",
              report=interrupt)
    assert not os.path.exists(tmp_path / "out" / "cut")
    with pytest.raises(data.DatasetError, match="No dataset"):
        data.load(str(tmp_path / "out"), "cut", "train")
    # A run killed hard leaves a hidden staging folder: never read, removed by the next run.
    stale = tmp_path / "out" / ".cut.incomplete-999999-abc"
    (stale / "cut" / "1.0.0").mkdir(parents=True)
    (stale / "cut" / "1.0.0" / "dataset_info.json").write_text("{}")
    with pytest.raises(data.DatasetError):
        data.load(str(tmp_path / "out"), "cut", "train")
    build("images", tmp_path / "out", "cut", input_dir=str(source), splits="train:1")
    assert not stale.exists()
    assert data.num_examples(str(tmp_path / "out"), "cut", "train") == 1


def test_pairs_from_low_high_folders(tmp_path):
    source = tmp_path / "in"
    dark = {n: write_png8(str(source / "low" / n), seed=i)
            for i, n in enumerate(["1.png", "2.png"])}
    bright = {n: write_png8(str(source / "high" / n), seed=10 + i)
              for i, n in enumerate(["1.png", "2.png"])}
    write_png8(str(source / "low" / "3.png"), seed=20, shape=(20, 28))
    write_png8(str(source / "high" / "3.png"), seed=21, shape=(21, 28))  # size mismatch
    write_png8(str(source / "low" / "4.png"), seed=22)  # no bright
    write_png8(str(source / "high" / "5.png"), seed=23)  # no dark
    summary = build("pairs", tmp_path / "out", "folders", input_dir=str(source), splits="train:1")
    assert summary["examples"] == 2 and summary["dtype"] == "uint8"
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    assert reasons["3.png"].startswith("size mismatch")
    assert reasons["4.png"] == "no matching file in high/"
    assert reasons["high/5.png"] == "no matching file in low/"
    stored = stored_examples(str(tmp_path / "out"), "folders", "train")
    for name in dark:
        np.testing.assert_array_equal(stored[name]["dark"], dark[name])
        np.testing.assert_array_equal(stored[name]["bright"], bright[name])
        assert stored[name]["exposure_ratio"] == 0.0
    assert data.dataset_kind(str(tmp_path / "out"), "folders") == "pairs"


def test_pairs_from_sid_list_with_raw_frames(tmp_path):
    source = tmp_path / "sid"
    write_dng(str(source / "Sony" / "short" / "00001_00_0.1s.dng"), seed=1, exposure_scale=0.02)
    write_dng(str(source / "Sony" / "short" / "00001_01_0.04s.dng"), seed=2, exposure_scale=0.02)
    write_dng(str(source / "Sony" / "long" / "00001_00_10s.dng"), seed=3)
    list_path = source / "Sony_test_list.txt"
    list_path.write_text(
        "./Sony/short/00001_00_0.1s.dng ./Sony/long/00001_00_10s.dng ISO200 F8\n"
        "./Sony/short/00001_01_0.04s.dng ./Sony/long/00001_00_10s.dng ISO200 F8\n"
        "./Sony/short/00002_00_0.1s.dng ./Sony/long/00002_00_10s.dng ISO200 F8\n"
        "only_one_path\n")
    summary = build("pairs", tmp_path / "out", "sid", pair_list=str(list_path), splits="train:1")
    assert summary["examples"] == 2 and summary["dtype"] == "uint16"
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    assert reasons["Sony/short/00002_00_0.1s.dng"].startswith("missing file")
    assert "malformed" in reasons["Sony_test_list.txt:4"]
    stored = stored_examples(str(tmp_path / "out"), "sid", "train")
    first = stored["Sony/short/00001_00_0.1s.dng"]
    assert first["exposure_ratio"] == pytest.approx(100.0)
    assert stored["Sony/short/00001_01_0.04s.dng"]["exposure_ratio"] == pytest.approx(250.0)
    np.testing.assert_array_equal(
        first["dark"], rawpy_reference(str(source / "Sony/short/00001_00_0.1s.dng"), True))
    np.testing.assert_array_equal(
        first["bright"], rawpy_reference(str(source / "Sony/long/00001_00_10s.dng"), True))
    assert first["dark"].mean() < first["bright"].mean() / 5  # rendered without auto-brightening


@pytest.mark.slow
def test_simulated_dataset_is_reproducible(tmp_path):
    pytest.importorskip("lowlight_tf.simulation")
    source = tmp_path / "in"
    for i in range(4):
        write_png8(str(source / f"s{i}.png"), seed=i, shape=(16, 16))
    out = str(tmp_path / "out")
    build("images", out, "bright", input_dir=str(source), splits="train:0.5,test:0.5")
    first = build("simulated", out, "sim_a", source_data=f"{out}/bright", splits="test:1", seed=7)
    build("simulated", out, "sim_b", source_data=f"{out}/bright", splits="test:1", seed=7)
    build("simulated", out, "sim_c", source_data=f"{out}/bright", splits="test:1", seed=8)
    assert first["examples"] == 4 and data.dataset_kind(out, "sim_a") == "simulated"
    a, b, c = (stored_examples(out, name, "test") for name in ("sim_a", "sim_b", "sim_c"))
    for key, example in a.items():
        np.testing.assert_array_equal(example["dark"], b[key]["dark"])
        np.testing.assert_array_equal(example["params"], b[key]["params"])
        assert example["dark"].dtype == np.uint8 and np.all(example["params"] > 0)
        np.testing.assert_array_equal(example["bright"],
                                      np.asarray(Image.open(str(source / key))))
        assert example["dark"].mean() < example["bright"].mean()
    assert any(not np.array_equal(a[k]["params"], c[k]["params"]) for k in a)
    only_test = build("simulated", out, "sim_d", source_data=f"{out}/bright:test", splits="test:1")
    assert only_test["examples"] == data.num_examples(out, "bright", "test")


@pytest.mark.slow
def test_sample_photos_dataset_is_built_once_and_reused(tmp_path):
    from data_prep import sample_photos  # pylint: disable=import-outside-toplevel
    specs = sample_photos.ensure_sample_datasets(str(tmp_path))
    info = os.path.join(prepare.version_dir_of(specs["output_dir"], "sample"), "dataset_info.json")
    built_at = os.path.getmtime(info)
    for split in ("train", "val", "test"):
        spec = data.parse_dataset_spec(specs[split])
        assert data.num_examples(spec.output_dir, spec.name, spec.split) >= 1
    first = next(iter(data.load_spec(specs["val"])))
    reference = np.asarray(Image.open(os.path.join(sample_photos.skimage_data_dir(),
                                                   "chelsea.png")).convert("RGB"))
    np.testing.assert_array_equal(first["bright"].numpy(), reference.astype(np.float32))
    assert sample_photos.ensure_sample_datasets(str(tmp_path)) == specs
    assert os.path.getmtime(info) == built_at


# ------------------------------------------------------------------------------------------------
# The command line, end to end.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_end_to_end_and_exit_codes(tmp_path):
    source = tmp_path / "in"
    for i in range(5):
        write_png8(str(source / "low" / f"{i}.png"), seed=i)
        write_png8(str(source / "high" / f"{i}.png"), seed=10 + i)
    (source / "low" / "9.png").write_bytes(b"")
    (source / "high" / "9.png").write_bytes(b"")
    out = tmp_path / "out"
    result = run_tool("make_tfrecords", "--kind=pairs", f"--input_dir={source}",
                      f"--output_dir={out}", "--name=cli_pairs", "--splits=train:0.6,test:0.4",
                      "--num_workers=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cli_pairs" in result.stdout and "skipped 1 inputs" in result.stdout
    # Progress through lowlight_tf.progress (plain lines without a terminal); TFDS's INFO quiet.
    assert "[pairs] train: done" in result.stderr and "inputs/s" in result.stderr
    assert not re.search(r"^I\d{4} .*\.py:\d+\]", result.stderr, re.M), result.stderr[-2000:]
    version_dir = out / "cli_pairs" / "1.0.0"
    with open(version_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["examples"] == 5 and summary["skipped"][0]["path"] == "9.png"
    assert "--kind=pairs" in (version_dir / "flags.txt").read_text()
    assert sum(data.splits(str(out), "cli_pairs").values()) == 5

    changed = run_tool("make_tfrecords", "--kind=pairs", f"--input_dir={source}",
                       f"--output_dir={out}", "--name=cli_pairs", "--splits=train:0.6,test:0.4",
                       "--max_side=8")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "max_side: stored None, now 8" in changed.stderr and "--overwrite" in changed.stderr
    no_ids = run_tool("make_tfrecords", "--kind=pairs", f"--input_dir={source}",
                      f"--output_dir={out}", "--name=other", "--split_ids=calib:9999,nosuch")
    assert no_ids.returncode == 2 and "calib:9999, calib:nosuch" in no_ids.stderr
    missing = run_tool("make_tfrecords", "--kind=images", f"--input_dir={tmp_path / 'nowhere'}",
                       f"--output_dir={out}", "--name=x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_flag = run_tool("make_tfrecords", "--kind=images", f"--input_dir={source}",
                        f"--output_dir={out}", "--name=x", "--splits=train:0.5")
    assert bad_flag.returncode == 2 and "--splits" in bad_flag.stderr


def test_images_from_several_folders_get_prefixed_ids(tmp_path):
    """Comma-separated --input_dir folders make one dataset; ids keep the folder names."""
    from data_prep import prepare
    from lowlight_tf import data
    rng = np.random.default_rng(3)
    for folder in ("clean", "high"):
        (tmp_path / folder).mkdir()
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{index}.png")
    summary = prepare.make_tfrecords(
        "images", output_dir=str(tmp_path / "out"), name="both",
        input_dir=f"{tmp_path / 'clean'},{tmp_path / 'high'}", splits="train:1.0")
    assert summary["examples"] == 6
    ids = sorted(e["id"].decode() for e in data.load(str(tmp_path / "out"), "both", "train")
                 .as_numpy_iterator())
    assert ids == [f"{folder}/{i}.png" for folder in ("clean", "high") for i in range(3)]
    with pytest.raises(prepare.InputError, match="share a folder name"):
        prepare.make_tfrecords("images", output_dir=str(tmp_path / "out"), name="dup",
                               input_dir=f"{tmp_path / 'clean'},{tmp_path / 'clean'}")


CRASHY_MODULE = """
import os


def decode(task):
    if task == "crash":
        os._exit(3)  # what a segfaulting C decoder does to its process
    return ("ok", task.upper())
"""


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [1, 2])
def test_parallel_map_survives_a_crashing_worker(tmp_path, monkeypatch, num_workers):
    (tmp_path / "crashy_decoder.py").write_text(CRASHY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    import crashy_decoder  # pylint: disable=import-outside-toplevel,import-error
    tasks = ["a", "b", "crash", "c", "d", "e", "f", "crash", "g"]
    results = list(core.parallel_map(crashy_decoder.decode, tasks, num_workers))
    assert [task for task, _ in results] == tasks  # every input accounted for, in order
    for task, result in results:
        if task == "crash":
            assert result == ("skip", core.CRASH_REASON, "decoder_crash")
        else:
            assert result == ("ok", task.upper())


@pytest.mark.parametrize("model", ["paper_composite", "isp"])
def test_simulated_dataset_stores_what_the_preset_simulates(tmp_path, model):
    from lowlight_tf import simulation, simulation_isp  # pylint: disable=import-outside-toplevel
    source = tmp_path / "in"
    for i in range(2):
        write_png8(str(source / f"s{i}.png"), seed=i, shape=(16, 16))
    out = str(tmp_path / "out")
    build("images", out, "bright", input_dir=str(source), splits="test:1")
    preset = simulation.load_preset("paper")
    if model == "isp":
        preset = simulation.SimulationPreset(
            "isp_test", None, None, quantize=True, model=simulation_isp.ISP_MODEL,
            isp=simulation_isp.IspParams(
                log_exposure_mean=np.log([0.1, 0.12, 0.08]), log_exposure_cov=np.eye(3) * 0.01,
                shot_gain=np.array([4e-4, 3e-4, 5e-4]), read_noise=np.array([6e-4, 5e-4, 7e-4]),
                log_shot_gain_std=0.1))
    simulation.save_preset(preset, tmp_path / "preset.json")
    build("simulated", out, "sim", source_data=f"{out}/bright", splits="test:1", seed=3,
          simulation_params=str(tmp_path / "preset.json"))
    for key, example in stored_examples(out, "sim", "test").items():
        seed = simulated_lib.example_seed(3, key)
        dark, params = preset.simulate(example["bright"][None].astype(np.float32), seed=seed)
        if model == "paper_composite":  # the composite's dark images are always quantised
            dark, _ = simulation.simulate(
                example["bright"][None].astype(np.float32), params, noise_peak=preset.noise_peak,
                seed=tf.unstack(tf.random.experimental.stateless_split(seed, 2))[1],
                quantize=True, tone_curve=preset.tone_curve), None
        np.testing.assert_array_equal(example["dark"], np.round(dark.numpy()[0]))
        np.testing.assert_array_equal(example["params"], params.numpy()[0])
        assert example["params"].shape == ((4,) if model == "isp" else (5,))
        assert example["noise_peak"] == (0.0 if model == "isp" else np.float32(preset.noise_peak))
    summary = json.loads((tmp_path / "out" / "sim" / core.VERSION / "summary.json").read_text())
    assert summary["options"]["noise_peak"] == (0.0 if model == "isp" else preset.noise_peak)
