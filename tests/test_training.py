"""Tests for lowlight_tf.training and tools/train: CLI end to end, resume, errors, determinism."""
import glob
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, run_tool, start_tool  # pylint: disable=import-error
from lowlight_tf import model as model_lib
from lowlight_tf import callbacks, pretrained, train_config, training

SMOKE = os.path.join(ROOT, "configs", "smoke.flags")


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    from data_prep import sample_photos
    root = str(tmp_path_factory.mktemp("sample"))
    sample_photos.ensure_sample_datasets(root)
    return root


def tiny_config(model_dir, data, **overrides):
    """A TrainConfig for a 4-filter, depth-2 U-Net on 16x16 patches, a few steps."""
    values = dict(model_dir=str(model_dir), train_data=f"{data}:train", val_data=f"{data}:val",
                  base_filters=4, depth=2, patch_size=16, batch_size=4, epochs=1,
                  steps_per_epoch=3, validation_steps=1, num_images=2, verbose=0)
    values.update(overrides)
    return train_config.TrainConfig(**values)


def summary_tags(log_dir):
    """{tag: plugin} of every summary in the event files of log_dir."""
    tags = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name
    return tags


def final_weights(model):
    """{weight path: array} of a .keras file, or of a model_dir's final model (load_model
    resolves the folder)."""
    return {w.path: w.numpy() for w in model_lib.load_model(model).weights}


@pytest.mark.slow
def test_cli_smoke_pretrain_then_transfer(tmp_path, sample_root):
    pretrain_dir, transfer_dir = str(tmp_path / "pretrain"), str(tmp_path / "transfer")
    result = run_tool("train", f"--flagfile={SMOKE}", f"--model_dir={pretrain_dir}",
                      f"--sample_root={sample_root}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrain finished" in result.stdout
    for epoch in (1, 2):
        assert os.path.isfile(os.path.join(pretrain_dir, "checkpoints",
                                           f"epoch_{epoch:03d}.weights.h5"))
    train_tags = summary_tags(os.path.join(pretrain_dir, "train"))
    val_tags = summary_tags(os.path.join(pretrain_dir, "validation"))
    for tag in ("epoch_loss", "epoch_mae", "epoch_psnr", "epoch_ssim", "epoch_learning_rate",
                "epoch_examples_per_second"):
        assert train_tags.get(tag) == "scalars", (tag, train_tags)
    for tag in ("epoch_mae", "epoch_psnr", "epoch_ssim"):
        assert val_tags.get(tag) == "scalars", (tag, val_tags)
    assert val_tags.get("dark | prediction | bright") == "images", val_tags

    result = run_tool("train", f"--flagfile={SMOKE}", "--stage=transfer",
                      f"--init_from={pretrain_dir}", f"--model_dir={transfer_dir}",
                      f"--sample_root={sample_root}", "--epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(transfer_dir, "checkpoints", "epoch_001.weights.h5"))
    # The replayable flagfile holds the resolved defaults: the smoke model is depth 3.
    flags_text = open(os.path.join(transfer_dir, "flags.txt")).read()
    assert "--stage=transfer" in flags_text and "--trainable_blocks=up3,head" in flags_text
    assert "--base_filters=8" in flags_text
    # Transfer trained only up3 and head: every other weight is the pretrained one.
    before, after = final_weights(pretrain_dir), final_weights(transfer_dir)
    for path, value in before.items():
        block = model_lib.block_of(path.split("/")[0])
        if block in ("up3", "head"):
            continue
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert not np.array_equal(after["head_conv/kernel"], before["head_conv/kernel"])


@pytest.mark.slow
def test_cli_unknown_flag_exits_2_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    result = run_tool("train", f"--flagfile={SMOKE}", f"--model_dir={model_dir}",
                      "--bogus_flag=1")
    assert result.returncode == 2 and "bogus_flag" in result.stderr
    assert not model_dir.exists()


def test_config_errors(tmp_path, tiny_data):
    with pytest.raises(training.ConfigError, match="needs --init_from"):
        training.train(tiny_config(tmp_path / "a", tiny_data, stage="transfer"))
    with pytest.raises(training.ConfigError, match="multiple of 8"):
        training.train(tiny_config(tmp_path / "a", tiny_data, patch_size=12))
    with pytest.raises(training.ConfigError, match="missing_name"):
        training.train(tiny_config(tmp_path / "a", tiny_data,
                                   train_data=str(tmp_path / "missing_name")))
    with pytest.raises(training.ConfigError, match="no split 'test'"):
        training.train(tiny_config(tmp_path / "a", tiny_data, val_data=f"{tiny_data}:test"))
    with pytest.raises(training.ConfigError, match="--strategy=default"):
        training.train(tiny_config(tmp_path / "a", tiny_data, deterministic=True))
    with pytest.raises(training.ConfigError, match="train_fraction"):
        training.train(tiny_config(tmp_path / "a", tiny_data, train_fraction=0.0))
    with pytest.raises(training.ConfigError, match="ssim_weight"):
        training.train(tiny_config(tmp_path / "a", tiny_data, ssim_weight=-1.0))
    assert not (tmp_path / "a").exists()


def test_init_from_shipped_starts_from_the_packaged_model(tmp_path, tiny_data, monkeypatch):
    """--init_from=shipped: the package's pretrained model, its architecture taken with it."""
    shipped = model_lib.architecture(pretrained.load_pretrained())
    config = training.resolve_config(tiny_config(
        tmp_path / "t", tiny_data, stage="transfer", init_from=train_config.SHIPPED,
        base_filters=None, depth=None, exposure_normalization=None, patch_size=64))
    assert config.init_from == pretrained.model_path()
    assert (config.base_filters, config.depth) == (shipped["base_filters"], shipped["depth"])
    assert config.exposure_normalization == shipped["exposure_normalization"]
    # An installation without the file: a ConfigError that says so, nothing written.
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", str(tmp_path / "empty"))
    with pytest.raises(training.ConfigError, match="--init_from=shipped: No shipped"):
        training.resolve_config(tiny_config(tmp_path / "u", tiny_data, stage="transfer",
                                            init_from=train_config.SHIPPED))
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_data):
    class Poison(keras.callbacks.Callback):
        """Makes the weights NaN at the start of the second epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("head_conv").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    model_dir = tmp_path / "nan"
    with pytest.raises(training.TrainingDivergedError,
                       match=r"epoch 2.*Last good checkpoint: .*epoch_001\.weights\.h5"):
        training.train(tiny_config(model_dir, tiny_data, epochs=3),
                       extra_callbacks=[Poison()])
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["epoch_001.weights.h5"]
    assert not (model_dir / "final.keras").exists()
    checkpoint = str(model_dir / "checkpoints" / "epoch_001.weights.h5")
    good = model_lib.load_model(checkpoint)
    assert all(np.isfinite(w).all() for w in good.get_weights())
    # That checkpoint under another architecture: the error names the layer, writes nothing.
    with pytest.raises(model_lib.ArchitectureMismatchError, match="down1_conv1"):
        training.train(tiny_config(tmp_path / "other", tiny_data, stage="transfer",
                                   init_from=checkpoint, base_filters=8))
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path, tiny_data):
    # Two processes (as a user would rerun): --deterministic switches TensorFlow to deterministic
    # kernels for the rest of a process, which must not leak into the other tests, and oneDNN
    # must be off from the start (its kernels are not deterministic).
    args = [f"--train_data={tiny_data}:train", "--val_data=none", "--base_filters=4",
            "--depth=2", "--patch_size=16", "--batch_size=4", "--epochs=1",
            "--steps_per_epoch=4", "--num_images=0", "--seed=7", "--deterministic",
            "--strategy=default"]
    for name in ("a", "b"):
        result = run_tool("train", *args, f"--model_dir={tmp_path / name}",
                          env={"TF_ENABLE_ONEDNN_OPTS": "0"})
        assert result.returncode == 0, result.stderr[-3000:]
    first, second = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert first.keys() == second.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], second[path], err_msg=path)
    # The runs trained: the weights moved away from the seed's initial weights.
    keras.utils.set_random_seed(7)
    fresh = model_lib.build_unet("rgb", 4, 2)
    assert not np.array_equal(fresh.get_layer("head_conv").kernel.numpy(),
                              first["head_conv/kernel"])


@pytest.mark.slow
def test_ssim_loss_term_trains_and_the_model_reloads(tmp_path, tiny_data):
    result = training.train(tiny_config(tmp_path / "ssim", tiny_data, ssim_weight=0.5,
                                        steps_per_epoch=2, val_data="none", num_images=0))
    loss, mae = result.history["loss"][-1], result.history["mae"][-1]
    assert np.isfinite(loss) and loss > mae + 0.01  # the (1 - SSIM) term is in the loss
    assert "--ssim_weight=0.5" in open(tmp_path / "ssim" / "flags.txt").read()
    reloaded = model_lib.load_model(result.final_model_path)
    assert reloaded.output_shape == (None, None, None, 3)


def test_resize_upsampling_trains_and_transfer_keeps_it(tmp_path, tiny_data):
    pretrain = training.train(tiny_config(tmp_path / "pre", tiny_data, upsampling="resize",
                                          steps_per_epoch=2, val_data="none", num_images=0))
    assert "--upsampling=resize" in open(tmp_path / "pre" / "flags.txt").read()
    pretrained = model_lib.load_model(pretrain.final_model_path)
    assert model_lib.architecture(pretrained)["upsampling"] == "resize"
    # Transfer takes the upsampling from --init_from, as it takes the width and depth.
    transfer = training.train(tiny_config(tmp_path / "tr", tiny_data, stage="transfer",
                                          init_from=pretrain.final_model_path, base_filters=None,
                                          depth=None, steps_per_epoch=1, val_data="none",
                                          num_images=0))
    transferred = model_lib.load_model(transfer.final_model_path)
    assert model_lib.architecture(transferred) == model_lib.architecture(pretrained)
    changed = [layer.name for layer in transferred.layers if layer.weights and any(
        not np.array_equal(mine, theirs) for mine, theirs in
        zip(layer.get_weights(), pretrained.get_layer(layer.name).get_weights()))]
    assert changed and {model_lib.block_of(name) for name in changed} <= {"up2", "head"}


@pytest.mark.slow
def test_jit_compile_trains_and_finished_run_is_kept(tmp_path, tiny_data):
    config = tiny_config(tmp_path / "xla", tiny_data, jit_compile=True, steps_per_epoch=2,
                         lr_schedule="cosine", warmup_steps=1, clipnorm=1.0, val_data="none",
                         num_images=0)
    result = training.train(config)
    assert np.isfinite(result.history["loss"]).all()
    assert "--jit_compile" in open(tmp_path / "xla" / "flags.txt").read()
    stamp = os.path.getmtime(result.final_model_path)
    with pytest.raises(training.ConfigError, match="finished run"):
        training.train(config)
    assert os.path.getmtime(result.final_model_path) == stamp


@pytest.mark.slow
def test_kill_and_resume(tmp_path, tiny_data):
    model_dir = tmp_path / "resume"
    args = ["--stage=pretrain", f"--train_data={tiny_data}:train", f"--val_data={tiny_data}:val",
            f"--model_dir={model_dir}", "--base_filters=4", "--depth=2", "--patch_size=16",
            "--batch_size=4", "--epochs=6", "--steps_per_epoch=5", "--validation_steps=1",
            "--num_images=2", "--strategy=default"]
    process = start_tool("train", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = model_dir / "checkpoints" / "epoch_001.weights.h5"
    deadline = time.time() + 600  # a CPU shared with other jobs can take minutes to start
    try:
        while not first.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # The checkpoint is written before the backup: a kill between the two repeats epoch 1.
    backed_up = callbacks.backup_epoch(str(model_dir / "backup")) >= 1
    assert first.exists(), "the first run never finished an epoch"
    assert not (model_dir / "final.keras").exists(), "killed too late: the run had finished"
    assert (model_dir / "backup").is_dir()
    finished = len(glob.glob(str(model_dir / "checkpoints" / "epoch_*.weights.h5")))
    stamp = os.path.getmtime(first)

    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed after epoch" in result.stdout
    resumed_epochs = result.stdout.count("Epoch ")
    assert resumed_epochs <= 6 - finished + 1, result.stdout  # +1: killed while backing up
    assert (model_dir / "final.keras").exists()
    assert (model_dir / "checkpoints" / "epoch_006.weights.h5").exists()
    if backed_up:
        assert os.path.getmtime(first) == stamp
    assert not (model_dir / "backup").exists()
    assert not [n for n in os.listdir(model_dir / "checkpoints") if "partial" in n]


@pytest.mark.slow
def test_thread_flags_reach_tensorflow_in_a_fresh_process(tmp_path):
    """--intra_op_threads/--inter_op_threads are applied before TensorFlow starts."""
    script = (
        "import tensorflow as tf\n"
        "from lowlight_tf import training, train_config\n"
        f"config = train_config.TrainConfig(model_dir={str(tmp_path)!r}, intra_op_threads=1,"
        " inter_op_threads=2)\n"
        "training._set_threads(config)\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split()[-2:] == ["1", "2"]


def test_model_dir_that_is_a_file_is_a_clear_error(tmp_path, tiny_data):
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    with pytest.raises(training.ConfigError, match="is a file, not a directory"):
        training.train(tiny_config(blocker, tiny_data))
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_truncated_final_model_is_rebuilt_and_warnings_say_why(tmp_path, tiny_data, capsys):
    # Patches of 64 px on 48x64 images: every training and validation image is padded; 6
    # example images asked for, but the validation set gives only 2 patches.
    config = tiny_config(tmp_path / "run", tiny_data, patch_size=64, num_images=6,
                         steps_per_epoch=2)
    result = training.train(config)
    err = capsys.readouterr().err
    assert "6 of 6 training images" in err and "smaller than --patch_size=64" in err
    assert "2 of 2 validation images" in err
    assert "TensorBoard shows 2 example image(s), not --num_images=6" in err
    assert err.count("training images") == 1
    final = tmp_path / "run" / "final.keras"
    assert not [n for n in os.listdir(tmp_path / "run") if "partial" in n]
    assert not (tmp_path / "run" / "backup").exists()
    expected = final_weights(tmp_path / "run")

    data = final.read_bytes()
    final.write_bytes(data[:len(data) // 2])  # a kill of an older version during model.save
    with pytest.raises(model_lib.ModelLoadError, match="corrupt or truncated") as error:
        model_lib.load_model(str(final))
    assert "not found" not in str(error.value).lower() and str(final) in str(error.value)
    # The model_dir still loads: from its last checkpoint.
    fallback = model_lib.load_model(str(tmp_path / "run"))
    np.testing.assert_array_equal(fallback.get_layer("head_conv").kernel.numpy(),
                                  expected["head_conv/kernel"])
    # The same command finishes the run again instead of refusing it as finished.
    again = training.train(config)
    assert "corrupt or truncated" in capsys.readouterr().err
    assert again.final_model_path == str(final)
    rebuilt = final_weights(tmp_path / "run")
    for path, value in expected.items():
        np.testing.assert_array_equal(rebuilt[path], value, err_msg=path)
    with pytest.raises(training.ConfigError, match="finished run"):
        training.train(config)
    assert result.last_epoch == 1
