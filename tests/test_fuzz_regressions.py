"""Regression tests over the crashers benchmarks/fuzz_decoders.py found (tests/fuzz_corpus).

Each corpus file is a mutated copy of a small seed image the fuzzer made itself. Every decoder
entry point must either decode it or raise its named skip exception: data_prep's decode_any
(tools/make_tfrecords), inference.decode_input (tools/enhance) and calibration's pair loader
(tools/calibrate_simulation). File names say what the file once did (e.g. `-typeerror`: a
TypeError escaped; `-bomb`: Pillow's DecompressionBombError escaped).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lowlight_tf import calibration
from lowlight_tf import inference
from lowlight_tf.media import decode

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")
# Files on which decode_any hung (tifffile.imread walked a corrupt page chain without end);
# each runs in a subprocess that must finish within HANG_SECONDS.
HANGS = sorted(name for name in os.listdir(CORPUS) if "-hang" in name)
CRASHERS = sorted(name for name in os.listdir(CORPUS) if name not in HANGS)
HANG_SECONDS = 15


def test_the_corpus_is_small_and_complete():
    assert len(CRASHERS) >= 10 and HANGS
    assert all(os.path.getsize(os.path.join(CORPUS, n)) <= 4096 for n in CRASHERS + HANGS)


def _is_image(array):
    return isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[-1] in (3, 4)


@pytest.mark.parametrize("name", CRASHERS)
def test_every_reader_decodes_or_names_the_skip(name, tmp_path):
    path = os.path.join(CORPUS, name)
    try:
        assert _is_image(decode.decode_any(path)[0])
    except decode.DecodeError as error:
        assert str(error) and error.reason
    try:
        assert _is_image(inference.decode_input(path).model_input)
    except inference.UnreadableImageError as error:
        assert str(error)
    try:
        assert _is_image(calibration.read_image(path))
    except calibration.CalibrationError as error:
        assert name in str(error)  # the message names the file
    # The pair loader as tools/calibrate_simulation calls it: the crasher as a dark image.
    ext = os.path.splitext(name)[1]
    for sub in ("low", "high"):
        (tmp_path / sub).mkdir()
    shutil.copy(path, tmp_path / "low" / f"1{ext}")
    shutil.copy(path, tmp_path / "high" / f"1{ext}")
    try:
        pairs = calibration.load_pairs(str(tmp_path))
        assert pairs and pairs[0].dark.shape == pairs[0].bright.shape
    except calibration.CalibrationError as error:
        assert "1" + ext in str(error)


@pytest.mark.slow
@pytest.mark.parametrize("name", HANGS)
def test_no_decoder_hangs(name):
    code = ("import sys\nfrom lowlight_tf.media import decode\ntry:\n"
            "    decode.decode_any(sys.argv[1])\nexcept decode.DecodeError:\n    pass\n")
    try:
        subprocess.run([sys.executable, "-c", code, os.path.join(CORPUS, name)],
                       capture_output=True, timeout=HANG_SECONDS, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"decode_any({name}) did not return within {HANG_SECONDS} s")
