"""The device recipe of configs/device_adapt.flags and device_transfer.flags, end to end.

The three commands of device_adapt.flags on generated data: the ISP simulation calibrated on a
device's pairs (simulated with known parameters), the shipped model's pretraining continued
with it (--init_from=shipped), and the paper's two-block transfer on the pairs.
"""
import os

import numpy as np
import pytest

from conftest import run_tool  # pylint: disable=import-error
from data_prep import prepare
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import model as model_lib
from lowlight_tf import pretrained
from test_calibration_isp import known_pairs, write_pair_folder  # pylint: disable=import-error
from test_training import final_weights as weights  # pylint: disable=import-error

FAST = ("--patch_size=64", "--batch_size=2", "--epochs=1", "--steps_per_epoch=2",
        "--warmup_steps=1")


def changed_blocks(before, after):
    """Blocks with at least one weight that differs between two weight dicts."""
    return {model_lib.block_of(path.split("/")[0]) for path, value in before.items()
            if not np.array_equal(after[path], value)}


@pytest.mark.slow
def test_device_adapt_then_transfer(tmp_path, tiny_data):
    write_pair_folder(tmp_path / "pairs", known_pairs(True, size=128)[:3])
    prepare.make_tfrecords("pairs", output_dir=str(tmp_path / "tfrecords"), name="device",
                           input_dir=str(tmp_path / "pairs"), splits="train:1.0")
    preset = tmp_path / "device_isp.json"
    result = run_tool("calibrate_simulation", f"--pairs={tmp_path / 'pairs'}", "--model=isp",
                      f"--output={preset}")
    assert result.returncode == 0, result.stderr[-3000:]

    adapt, transfer = tmp_path / "adapt", tmp_path / "transfer"
    result = run_tool("train", "--flagfile=device_adapt", f"--simulation_params={preset}",
                      f"--train_data={tiny_data}:train", f"--model_dir={adapt}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    flags_text = (adapt / "flags.txt").read_text()
    assert f"--init_from={pretrained.model_path()}" in flags_text
    adapted = str(adapt / model_lib.FINAL_MODEL_NAME)
    assert exposure_lib.exposure_layer(model_lib.load_model(adapted)) is None  # normalisation off
    shipped = weights(pretrained.model_path())
    assert changed_blocks(shipped, weights(adapted)) >= {"down1", "bottleneck", "up4", "head"}

    result = run_tool("train", "--flagfile=device_transfer", f"--init_from={adapt}",
                      f"--train_data={tmp_path / 'tfrecords' / 'device'}:train",
                      f"--model_dir={transfer}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert changed_blocks(weights(adapted),
                          weights(str(transfer / model_lib.FINAL_MODEL_NAME))) == {"up4", "head"}
    assert os.path.isfile(transfer / "flags.txt")
