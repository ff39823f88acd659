"""Tests for lowlight_tf.adapters and `tools/train --adapters`.

Device adapters merged into the U-Net.
"""
import os

import keras
import numpy as np
import pytest

from lowlight_tf import adapters
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import model as model_lib
from lowlight_tf import training
from test_training import tiny_config  # pylint: disable=import-error


def _image(seed, height=32, width=64):
    return np.random.default_rng(seed).uniform(0, 0.2, (2, height, width, 3)).astype(np.float32)


def _randomise_adapters(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if model_lib.is_adapter(layer.name):
            kernel = layer.get_weights()[0]
            layer.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32)])


def test_zero_adapters_keep_the_pretrained_output():
    keras.utils.set_random_seed(1)
    plain = model_lib.build_unet("rgb", 4, 2)
    adapted = model_lib.build_unet("rgb", 4, 2, adapters=True)
    model_lib.copy_weights(plain, adapted)  # the adapters keep their zeros
    x = _image(0)
    np.testing.assert_array_equal(adapted(x).numpy(), plain(x).numpy())
    # Every 3x3 convolution has its adapter, and nothing else has one.
    names = {layer.name for layer in adapted.layers}
    convs = [layer.name for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)
             and layer.kernel_size == (3, 3)]
    assert len(convs) == 10 and all(c.replace("_conv", "_adapter") in names for c in convs)
    assert sum(model_lib.is_adapter(n) for n in names) == len(convs)


@pytest.mark.parametrize("exposure_normalization", [0.0, exposure_lib.CANONICAL_DARK_MEAN])
def test_merged_model_computes_what_the_adapters_computed(exposure_normalization):
    keras.utils.set_random_seed(2)
    adapted = model_lib.build_unet("rgb", 4, 2, exposure_normalization, adapters=True)
    _randomise_adapters(adapted, seed=3)
    merged = adapters.merge_adapters(adapted)
    assert not adapters.has_adapters(merged)
    assert model_lib.architecture(merged) == {
        k: v for k, v in model_lib.architecture(adapted).items() if k != "adapters"}
    x = _image(4)
    before = model_lib.build_unet("rgb", 4, 2, exposure_normalization)
    model_lib.copy_weights(merged, before)
    np.testing.assert_allclose(merged(x).numpy(), adapted(x).numpy(), atol=2e-6)
    # The adapters mattered: the same 3x3 weights without them give another output.
    for layer in before.layers:
        if layer.name.endswith(("_conv1", "_conv2")):
            layer.set_weights(adapted.get_layer(layer.name).get_weights())
    assert np.abs(before(x).numpy() - adapted(x).numpy()).max() > 1e-3


def test_merge_changes_only_the_centre_tap():
    keras.utils.set_random_seed(5)
    adapted = model_lib.build_unet("rgb", 4, 2, adapters=True)
    _randomise_adapters(adapted, seed=6)
    merged = adapters.merge_adapters(adapted)
    kernel_before = adapted.get_layer("down1_conv1").get_weights()[0]
    kernel_after = merged.get_layer("down1_conv1").get_weights()[0]
    outside = np.ones(kernel_before.shape[:2], bool)
    outside[1, 1] = False
    np.testing.assert_array_equal(kernel_after[outside], kernel_before[outside])
    np.testing.assert_allclose(kernel_after[1, 1] - kernel_before[1, 1],
                               adapted.get_layer("down1_adapter1").get_weights()[0][0, 0],
                               atol=1e-7)
    plain = model_lib.build_unet("rgb", 4, 2)
    assert adapters.merge_adapters(plain) is plain


def test_adapters_train_beside_the_transfer_blocks_only():
    model = model_lib.build_unet("rgb", 4, 2, adapters=True)
    model_lib.set_trainable_blocks(model, "up2,head")
    trainable, frozen = adapters.set_adapters_trainable(model)
    names = {w.path.split("/")[0] for w in model.trainable_weights}
    adapter_names = {layer.name for layer in model.layers if model_lib.is_adapter(layer.name)}
    assert adapter_names <= names
    assert all(n.startswith(("up2_", "head_")) or n in adapter_names for n in names)
    adapter_params = sum(int(np.prod(w.shape)) for layer in model.layers
                         if layer.name in adapter_names for w in layer.weights)
    assert trainable == adapter_params + sum(
        int(np.prod(w.shape)) for layer in model.layers
        if layer.name.startswith(("up2_", "head_")) and layer.name not in adapter_names
        for w in layer.weights)
    assert trainable + frozen == model.count_params()
    with pytest.raises(ValueError, match="no adapters"):
        adapters.set_adapters_trainable(model_lib.build_unet("rgb", 4, 2))


def test_adapters_without_init_from_is_a_clear_error(tmp_path, tiny_data):
    with pytest.raises(training.ConfigError, match="--adapters.*--init_from"):
        training.train(tiny_config(tmp_path / "a", tiny_data, adapters=True))
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_transfer_with_adapters_saves_the_plain_unet(tmp_path, tiny_data):
    pretrained = training.train(tiny_config(tmp_path / "pre", tiny_data, val_data="none",
                                            num_images=0, steps_per_epoch=2))
    result = training.train(tiny_config(tmp_path / "adapt", tiny_data, stage="transfer",
                                        init_from=pretrained.final_model_path, adapters=True,
                                        val_data="none", num_images=0, learning_rate=1e-2))
    before = model_lib.load_model(pretrained.final_model_path)
    final = model_lib.load_model(result.final_model_path)
    assert not adapters.has_adapters(final)
    assert "--adapters" in open(tmp_path / "adapt" / "flags.txt").read()
    # A frozen block changed at its centre tap only (the merged adapter), a trained block anywhere.
    k0, k1 = (m.get_layer("down1_conv1").get_weights()[0] for m in (before, final))
    outside = np.ones(k0.shape[:2], bool)
    outside[1, 1] = False
    np.testing.assert_array_equal(k1[outside], k0[outside])
    assert not np.allclose(k1[1, 1], k0[1, 1])
    # The epoch checkpoint reloads with its adapters (model.json) and computes what final does.
    checkpoint = model_lib.latest_checkpoint(os.path.join(tmp_path, "adapt"))
    from_checkpoint = model_lib.load_model(checkpoint)
    assert adapters.has_adapters(from_checkpoint)
    x = _image(7)
    np.testing.assert_allclose(final(x).numpy(), from_checkpoint(x).numpy(), atol=2e-6)
    # A later plain transfer may start from that checkpoint: its adapters are merged first.
    again = training.train(tiny_config(tmp_path / "plain", tiny_data, stage="transfer",
                                       init_from=checkpoint, val_data="none", num_images=0,
                                       steps_per_epoch=1))
    assert not adapters.has_adapters(model_lib.load_model(again.final_model_path))
