"""Distribution tests: MirroredStrategy on 2 logical CPUs, a 2-process multi-worker run."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, run_train_workers, tool_env  # pylint: disable=import-error

# Runs in a fresh interpreter: logical devices must be configured before TensorFlow starts.
MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from lowlight_tf import train_config, training
    config = train_config.TrainConfig(model_dir="unused", base_filters=4, depth=2,
                                  trainable_blocks="all", learning_rate=1e-3)
    rng = np.random.default_rng(0)
    bright = rng.uniform(size=(8, 16, 16, 3)).astype(np.float32)
    dark = (bright * 0.1).astype(np.float32)
    results = {}
    weights = None
    for name, strategy in (
            ("one", training.make_strategy("default")),
            ("two", training.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"]))):
        model, _, _ = training.create_model(config, strategy)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        losses = [float(model.train_on_batch(dark, bright, return_dict=True)["loss"])
                  for _ in range(3)]
        results[name] = {"replicas": strategy.num_replicas_in_sync, "losses": losses,
                         "kernel": model.get_layer("head_conv").kernel.numpy().tolist()}
    print("RESULT" + json.dumps(results))
""")


@pytest.mark.slow
def test_mirrored_two_devices_same_loss_as_one():
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=ROOT, env=tool_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [text for text in result.stdout.splitlines() if text.startswith("RESULT")][-1]
    results = json.loads(line[len("RESULT"):])
    assert results["one"]["replicas"] == 1 and results["two"]["replicas"] == 2
    # The global batch of 8 is split 4 + 4; the MAE and its gradient must equal the one-device
    # values up to float32 reduction order, step after step.
    np.testing.assert_allclose(results["two"]["losses"], results["one"]["losses"], rtol=1e-5)
    np.testing.assert_allclose(results["two"]["kernel"], results["one"]["kernel"], atol=1e-5)
    assert results["one"]["losses"][2] < results["one"]["losses"][0]


@pytest.mark.slow
def test_two_process_multi_worker_run_completes(tmp_path, tiny_data):
    model_dir = tmp_path / "run"
    outputs = run_train_workers(
        "--stage=pretrain", f"--train_data={tiny_data}:train", f"--val_data={tiny_data}:val",
        f"--model_dir={model_dir}", "--base_filters=4", "--depth=2", "--patch_size=16",
        "--batch_size=4", "--epochs=2", "--steps_per_epoch=2", "--validation_steps=1",
        "--num_images=2")
    for returncode, _, stderr in outputs:
        assert returncode == 0, stderr[-3000:]
    outputs = [(stdout, stderr) for _, stdout, stderr in outputs]
    assert "2 replica(s)" in outputs[0][0] and "2 replica(s)" in outputs[1][0]
    # Only the chief (worker 0) writes into model_dir.
    assert (model_dir / "final.keras").exists()
    assert sorted(os.listdir(model_dir / "checkpoints")) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
