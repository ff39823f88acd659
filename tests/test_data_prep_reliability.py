"""Reliability of the offline data job: pixel limit, named skip reasons, byte-identical shards,
supervised keys, and no process or staging folder left behind by a killed make_tfrecords.

Fixtures are generated here (PNG with Pillow, DNG with pidng via test_data_prep's writer); the
kill test reads /proc, so it runs on Linux only.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import staging
from data_prep import summary as summary_lib
from lowlight_tf import data
from conftest import start_tool  # pylint: disable=import-error
from lowlight_tf.media import decode
from lowlight_tf.media import png
from test_data_prep import build, write_dng, write_png8  # pylint: disable=import-error


def _chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def write_bomb_png(path, side=20000):
    """Write a few hundred bytes of PNG whose header claims side x side RGB pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * side + 1) * 8, 9)  # only the first rows: truncated
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows)
                + _chunk(b"IEND", b""))


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_bomb_png(str(bomb))
    assert os.path.getsize(bomb) < 2000
    with pytest.raises(decode.DecodeError, match="exceeds the pixel limit") as error:
        decode.decode_any(str(bomb))
    assert error.value.reason == "too_large"
    # The limit follows max_pixels, for ordinary images (8 and 16 bit) and raw files alike.
    write_png8(str(tmp_path / "small.png"), shape=(20, 28))
    assert decode.decode_any(str(tmp_path / "small.png"), max_pixels=560)[0].shape == (20, 28, 3)
    with pytest.raises(decode.DecodeError) as error:
        decode.decode_any(str(tmp_path / "small.png"), max_pixels=559)
    assert error.value.reason == "too_large"
    png16 = tmp_path / "deep.png"
    png16.write_bytes(png.encode_png(np.zeros((10, 12, 3), np.uint16)))
    with pytest.raises(decode.DecodeError) as error:
        decode.decode_any(str(png16), max_pixels=100)
    assert error.value.reason == "too_large"
    write_dng(str(tmp_path / "raw.dng"), shape=(32, 48))
    with pytest.raises(decode.DecodeError, match="raw picture of 48x32") as error:
        decode.decode_any(str(tmp_path / "raw.dng"), max_pixels=1000)
    assert error.value.reason == "too_large"
    assert decode.decode_any(str(tmp_path / "raw.dng"))[0].shape[:2] == (32, 48)


def test_every_bad_input_gets_a_named_skip_reason(tmp_path):
    source = tmp_path / "in"
    write_png8(str(source / "good.png"))
    write_bomb_png(str(source / "bomb.png"))
    write_png8(str(source / "big.png"), shape=(40, 50))
    (source / "empty.png").write_bytes(b"")
    (source / "text.jpg").write_text("not a picture")
    full = (source / "good.png").read_bytes()
    (source / "cut.png").write_bytes(full[:len(full) // 2])
    (source / "junk.cr3").write_bytes(b"\0" * 4096)
    summary = build("images", tmp_path / "out", "bad", input_dir=str(source), splits="train:1",
                    max_pixels=1000)
    categories = {item["path"]: item["category"] for item in summary["skipped"]}
    assert categories == {"bomb.png": "too_large", "big.png": "too_large",
                          "empty.png": "unreadable", "text.jpg": "not_an_image",
                          "cut.png": categories["cut.png"], "junk.cr3": "unsupported"}
    assert categories["cut.png"] in ("truncated", "corrupt")
    assert summary["examples"] == 1 and summary["skipped_by_reason"]["too_large"] == 2
    assert set(summary["skip_reasons"]) == set(categories.values())
    assert set(summary["skip_reasons"]) <= set(summary_lib.SKIP_REASONS)
    with open(tmp_path / "out" / "bad" / "1.0.0" / "summary.json") as f:
        assert json.load(f)["skipped_by_reason"] == summary["skipped_by_reason"]


@pytest.mark.slow
def test_pairs_and_simulated_declare_supervised_keys(tmp_path):
    source = tmp_path / "pairs"
    for i in range(2):
        write_png8(str(source / "low" / f"{i}.png"), seed=i)
        write_png8(str(source / "high" / f"{i}.png"), seed=10 + i)
    out = tmp_path / "out"
    build("pairs", out, "prs", input_dir=str(source), splits="train:1")
    builder = tfds.builder_from_directory(data.dataset_dir(str(out), "prs"))
    assert builder.info.supervised_keys == ("dark", "bright")
    dark, bright = next(iter(builder.as_dataset(split="train", as_supervised=True)))
    assert dark.shape == bright.shape == (20, 28, 3)
    loaded = tfds.load("prs", split="train", data_dir=str(out), as_supervised=True)
    assert len(next(iter(loaded))) == 2
    write_png8(str(tmp_path / "photos" / "a.png"))
    build("images", out, "photos", input_dir=str(tmp_path / "photos"), splits="test:1")
    build("simulated", out, "sim", source_data=f"{out}/photos:test", splits="test:1")
    sim = tfds.builder_from_directory(data.dataset_dir(str(out), "sim"))
    assert sim.info.supervised_keys == ("dark", "bright")
    images = tfds.builder_from_directory(data.dataset_dir(str(out), "photos"))
    assert images.info.supervised_keys is None


def _shard_bytes(version_dir):
    return {name: (version_dir / name).read_bytes() for name in sorted(os.listdir(version_dir))
            if ".tfrecord-" in name}


@pytest.mark.slow
def test_two_builds_give_byte_identical_shards(tmp_path):
    """Two processes (each with its own protobuf hash seed) write the same bytes."""
    source = tmp_path / "in"
    for i in range(6):
        write_png8(str(source / f"{i}.png"), seed=i)
    runs = [start_tool("make_tfrecords", "--kind=images", f"--input_dir={source}",
                       f"--output_dir={tmp_path / out}", "--name=same",
                       "--splits=train:0.5,test:0.5", "--max_shard_mb=0.002",
                       env={"PYTHONHASHSEED": "0"})
            for out in ("a", "b")]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]
    first = _shard_bytes(tmp_path / "a" / "same" / "1.0.0")
    second = _shard_bytes(tmp_path / "b" / "same" / "1.0.0")
    assert len(first) >= 3 and first == second
    info = [(tmp_path / out / "same" / "1.0.0" / "dataset_info.json").read_text()
            for out in ("a", "b")]
    assert info[0] == info[1]


def _children(pid):
    """Return the PIDs whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_sigkill_leaves_no_process_and_no_staging_folder(tmp_path):
    source = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(300):
        write_png8(str(source / f"{i:03d}.png"), seed=int(rng.integers(1 << 30)),
                   shape=(96, 128))
    out = tmp_path / "out"
    args = ("--kind=images", f"--input_dir={source}", f"--output_dir={out}", "--name=killed",
            "--splits=train:1", "--num_workers=2")
    run = start_tool("make_tfrecords", *args, env={"PYTHONHASHSEED": "0"})
    deadline = time.monotonic() + 240
    workers = []
    while time.monotonic() < deadline and run.poll() is None:
        workers = _children(run.pid)  # decoding workers and the resource tracker
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert run.poll() is None and len(workers) >= 2, "the build ended before its workers started"
    time.sleep(0.2)  # mid-decode
    workers = _children(run.pid)
    assert run.poll() is None, "the build ended before the kill: use a larger fixture"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    run.stdout.close()  # orphans would hold these pipes open: do not wait for their end
    run.stderr.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "processes outlived a killed job"
    staging = [e for e in os.listdir(out) if e.startswith(".killed.incomplete-")]
    assert staging and not (out / "killed").exists()  # only the hidden folder is left
    # A dead run's folder whose PID was reused by a live process (PID 1 here, started long
    # before) is stale too: the owner's start time tells them apart.
    reused = out / ".other.incomplete-1-xyz"
    reused.mkdir()
    (reused / "owner.json").write_text(json.dumps({"pid": 1, "start_time": -5}))
    again = start_tool("make_tfrecords", *args, env={"PYTHONHASHSEED": "0"})
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    assert not [e for e in os.listdir(out) if ".incomplete-" in e]
    assert data.num_examples(str(out), "killed", "train") == 300


def test_stale_staging_is_removed_also_when_the_dataset_is_reused(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    write_png8(str(source / "a.png"))
    build("images", out, "kept", input_dir=str(source), splits="train:1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = out / f".kept.incomplete-{int(dead.stdout)}-abc"
    (stale / "kept").mkdir(parents=True)
    live = out / f".kept.incomplete-{os.getppid()}-def"  # a live run of this user: kept
    live.mkdir()
    assert build("images", out, "kept", input_dir=str(source), splits="train:1")["reused"]
    assert not stale.exists() and live.exists()
    assert staging.is_alive(os.getppid())
