"""Tests for lowlight_tf.model: the Figure 4 U-Net, its custom layers, blocks and loading."""
import json

import numpy as np
import pytest
import tensorflow as tf

from lowlight_tf import layers
from lowlight_tf import model as model_lib


def _unet_params(in_channels, base, depth):
    """Counts the U-Net's parameters by hand (conv: k*k*cin*cout + cout)."""
    def conv(k, cin, cout):
        return k * k * cin * cout + cout

    total, cin, skips = 0, in_channels, []
    for i in range(depth):
        f = base * 2 ** i
        total += conv(3, cin, f) + conv(3, f, f)
        skips.append(f)
        cin = f
    f = base * 2 ** depth
    total += conv(3, cin, f) + conv(3, f, f)
    cin = f
    for i in range(depth):
        f = base * 2 ** (depth - 1 - i)
        total += conv(2, cin, f)  # transposed conv has the same parameter count
        total += conv(3, f + skips[-1 - i], f) + conv(3, f, f)
        cin = f
    return total + conv(1, cin, 12)


def test_default_model_parameter_count():
    unet = model_lib.build_unet()
    # SID's 4-channel U-Net has 7,760,748 parameters; our rgb input has 12 channels after
    # SpaceToDepth, adding 8 * 9 * 32 weights to down1_conv1.
    assert unet.count_params() == _unet_params(12, 32, 4) == 7_760_748 + 8 * 9 * 32
    assert model_lib.build_unet("bayer").count_params() == 7_760_748
    assert unet.get_layer("bottleneck_conv2").filters == 512


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (64, 16)])
def test_rgb_output_size_equals_input_size(size):
    unet = model_lib.build_unet("rgb", base_filters=4, depth=3)
    assert model_lib.size_multiple(unet) == 16
    x = np.random.default_rng(0).uniform(size=(2, *size, 3)).astype(np.float32)
    assert unet(x).shape == (2, *size, 3)


@pytest.mark.parametrize("size", [(8, 8), (16, 24)])
def test_bayer_output_is_full_resolution_rgb(size):
    unet = model_lib.build_unet("bayer", base_filters=4, depth=3)
    assert model_lib.size_multiple(unet) == 8
    x = np.zeros((1, *size, 4), np.float32)
    assert unet(x).shape == (1, 2 * size[0], 2 * size[1], 3)


def test_size_multiple_of_default_models():
    assert model_lib.size_multiple(model_lib.build_unet()) == 32
    assert model_lib.size_multiple(model_lib.build_unet("bayer")) == 16


def test_depth_to_space_in_graph_and_matches_numpy():
    unet = model_lib.build_unet("rgb", base_filters=4, depth=2)
    last = unet.layers[-1]
    assert isinstance(last, layers.DepthToSpace) and last.name.startswith("head")
    ops = {op.type for op in tf.function(unet).get_concrete_function(
        tf.TensorSpec([1, 8, 8, 3], tf.float32)).graph.get_operations()}
    assert "DepthToSpace" in ops and "SpaceToDepth" in ops
    # Independent reference: output[h*2+i, w*2+j, c] = input[h, w, (i*2 + j)*C + c].
    x = np.arange(2 * 3 * 12, dtype=np.float32).reshape(1, 2, 3, 12)
    expected = x.reshape(1, 2, 3, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 6, 3)
    np.testing.assert_array_equal(layers.DepthToSpace(2)(x).numpy(), expected)
    np.testing.assert_array_equal(layers.SpaceToDepth(2)(expected).numpy(), x)


def test_bilinear_upsample_matches_keras_and_keeps_flat_images_flat():
    x = np.random.default_rng(5).uniform(size=(2, 3, 5, 4)).astype(np.float32)
    ours = layers.BilinearUpsample(2)(x).numpy()
    assert ours.shape == (2, 6, 10, 4)
    keras_layer = tf.keras.layers.UpSampling2D(2, interpolation="bilinear")
    np.testing.assert_allclose(ours, keras_layer(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(layers.BilinearUpsample(2)(np.full((1, 3, 3, 2), 0.3,
                                                                  np.float32)).numpy(), 0.3)


def test_every_layer_name_starts_with_its_block():
    unet = model_lib.build_unet("rgb", base_filters=4, depth=3)
    assert model_lib.block_names(unet) == [
        "down1", "down2", "down3", "bottleneck", "up1", "up2", "up3", "head"]
    for layer in unet.layers:
        if layer.name in ("dark", "space_to_depth"):
            assert not layer.weights
            continue
        assert model_lib.block_of(layer.name) is not None, layer.name
        assert layer.name.startswith(model_lib.block_of(layer.name) + "_")
    assert model_lib.default_transfer_blocks(unet) == ["up3", "head"]


def test_keras_round_trip_identical_outputs(tmp_path):
    unet = model_lib.build_unet("rgb", base_filters=4, depth=2)
    x = np.random.default_rng(1).uniform(size=(2, 16, 24, 3)).astype(np.float32)
    path = str(tmp_path / "unet.keras")
    unet.save(path)
    loaded = model_lib.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), unet(x).numpy())
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in unet.layers]
    assert model_lib.architecture(loaded) == {"input_mode": "rgb", "base_filters": 4, "depth": 2}


@pytest.mark.parametrize("input_mode,channels", [("rgb", 3), ("bayer", 4)])
def test_resize_upsampling_model(input_mode, channels, tmp_path):
    """upsampling="resize": no transposed convolution, and a head_smooth that starts as the
    identity, so the untrained output is the depth-to-space of the head's 1x1 convolution."""
    unet = model_lib.build_unet(input_mode, base_filters=4, depth=2, upsampling="resize")
    layer_types = {type(layer).__name__ for layer in unet.layers}
    assert "Conv2DTranspose" not in layer_types and "BilinearUpsample" in layer_types
    assert unet.layers[-1].name == "head_smooth"
    # 3x3 upconvs (9/4 of the 2x2 ones' kernel) and 3*3*3*3 + 3 for head_smooth.
    paper = model_lib.build_unet(input_mode, base_filters=4, depth=2)
    upconvs = [(layer.kernel_size, layer.filters, int(layer.kernel.shape[2]))
               for layer in unet.layers if layer.name.endswith("_upconv")]
    extra = sum((9 - 4) * filters * cin for _, filters, cin in upconvs)
    assert unet.count_params() == paper.count_params() + extra + 84
    x = np.random.default_rng(4).uniform(size=(1, 16, 24, channels)).astype(np.float32)
    before_smooth = tf.keras.Model(unet.input, unet.get_layer("head_depth_to_space").output)
    np.testing.assert_allclose(unet(x).numpy(), before_smooth(x).numpy(), atol=1e-6)
    arch = model_lib.architecture(unet)
    assert arch == {"input_mode": input_mode, "base_filters": 4, "depth": 2,
                    "upsampling": "resize"}
    path = str(tmp_path / "resize.keras")
    unet.save(path)
    loaded = model_lib.load_model(path)
    assert model_lib.architecture(loaded) == arch
    np.testing.assert_array_equal(loaded(x).numpy(), unet(x).numpy())
    # Inside a tf.function with unknown height and width, as tiled inference runs it.
    traced = tf.function(lambda t: loaded(t, training=False), input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.float32)])
    np.testing.assert_allclose(traced(tf.constant(x)).numpy(), unet(x).numpy(), atol=1e-6)
    # Weights do not cross between the two upsamplings: the error names the layer.
    with pytest.raises(model_lib.ArchitectureMismatchError, match="upconv"):
        model_lib.copy_weights(unet, paper)
    assert model_lib.default_transfer_blocks(unet) == ["up2", "head"]
    model_lib.set_trainable_blocks(unet, "up2,head")
    assert unet.get_layer("head_smooth").trainable and not unet.get_layer("up1_upconv").trainable


def test_export_writes_saved_model(tmp_path):
    unet = model_lib.build_unet("rgb", base_filters=4, depth=2)
    x = np.random.default_rng(2).uniform(size=(1, 8, 8, 3)).astype(np.float32)
    unet.export(str(tmp_path / "saved"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), unet(x).numpy(), atol=1e-6)


def test_set_trainable_blocks_exact():
    unet = model_lib.build_unet("rgb", base_filters=4, depth=3)
    trainable, frozen = model_lib.set_trainable_blocks(unet, "up3,head")
    expected = sum(int(np.prod(w.shape)) for layer in unet.layers
                   if layer.name.startswith(("up3_", "head_")) for w in layer.weights)
    assert trainable == expected > 0
    assert trainable + frozen == unet.count_params()
    for layer in unet.layers:
        if layer.weights:
            assert layer.trainable == layer.name.startswith(("up3_", "head_")), layer.name
    assert {w.path.split("/")[0] for w in unet.trainable_weights} == {
        "up3_upconv", "up3_conv1", "up3_conv2", "head_conv"}
    assert model_lib.set_trainable_blocks(unet, ["all"]) == (unet.count_params(), 0)


def test_set_trainable_blocks_rejects_unknown_block():
    unet = model_lib.build_unet("rgb", base_filters=4, depth=2)
    with pytest.raises(ValueError, match="up4.*blocks are down1"):
        model_lib.set_trainable_blocks(unet, ["up4", "head"])
    with pytest.raises(ValueError):
        model_lib.set_trainable_blocks(unet, "")


def test_copy_weights_names_mismatching_layer():
    source = model_lib.build_unet("rgb", base_filters=4, depth=2)
    target = model_lib.build_unet("rgb", base_filters=4, depth=2)
    model_lib.copy_weights(source, target)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(model_lib.ArchitectureMismatchError, match="down1_conv1"):
        model_lib.copy_weights(source, model_lib.build_unet("rgb", base_filters=8, depth=2))
    with pytest.raises(model_lib.ArchitectureMismatchError, match="down3_conv1"):
        model_lib.copy_weights(source, model_lib.build_unet("rgb", base_filters=4, depth=3))


def test_load_model_from_model_dir(tmp_path):
    unet = model_lib.build_unet("bayer", base_filters=4, depth=2)
    model_dir = tmp_path / "run"
    (model_dir / "checkpoints").mkdir(parents=True)
    with open(model_dir / "model.json", "w") as f:
        json.dump(model_lib.architecture(unet), f)
    for epoch in (1, 2, 10):
        unet.save_weights(str(model_dir / "checkpoints" / f"epoch_{epoch:03d}.weights.h5"))
    x = np.random.default_rng(3).uniform(size=(1, 8, 8, 4)).astype(np.float32)
    assert model_lib.latest_checkpoint(str(model_dir)).endswith("epoch_010.weights.h5")
    np.testing.assert_array_equal(model_lib.load_model(str(model_dir))(x).numpy(),
                                  unet(x).numpy())
    other = model_lib.build_unet("bayer", base_filters=4, depth=2)
    other.save(str(model_dir / "final.keras"))
    np.testing.assert_array_equal(model_lib.load_model(str(model_dir))(x).numpy(),
                                  other(x).numpy())


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(model_lib.ModelLoadError, match="missing.keras.*does not exist"):
        model_lib.load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(model_lib.ModelLoadError, match="No model in"):
        model_lib.load_model(str(tmp_path))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(model_lib.ModelLoadError, match="corrupt"):
        model_lib.load_model(str(corrupt))
    orphan = tmp_path / "epoch_001.weights.h5"
    model_lib.build_unet("rgb", 4, 2).save_weights(str(orphan))
    with pytest.raises(model_lib.ModelLoadError, match="model.json"):
        model_lib.load_model(str(orphan))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="input_mode"):
        model_lib.build_unet("raw")
    with pytest.raises(ValueError, match="upsampling"):
        model_lib.build_unet(upsampling="nearest")
    # The training flag's choices are the model's (train_config stays free of TensorFlow).
    from lowlight_tf import train_config
    assert train_config.UPSAMPLING == model_lib.UPSAMPLING
    with pytest.raises(ValueError):
        model_lib.build_unet(depth=0)
