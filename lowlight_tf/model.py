"""The See-in-the-Dark style U-Net of the paper (§3.2, Figure 4) and its transfer blocks (§3.4).

Figure 4 of the paper: an RGB patch is rearranged into a half-resolution, 12-channel tensor (the
paper's "32x32 patch taken from the 64x64 input"; here the lossless `SpaceToDepth` of block 2),
four encoder blocks `down1..down4` (two 3x3 convolutions with LeakyReLU(0.2), then 2x2 max-pool,
doubling the channels each block: 32, 64, 128, 256), a `bottleneck` block (two convolutions, 512
channels, 2x2 spatial for a 64x64 patch), four decoder blocks `up1..up4` (2x2 stride-2 transposed
convolution, concatenation with the matching encoder output, two convolutions) and a `head`
(1x1 convolution to 12 channels, then `DepthToSpace` with block 2) that returns an RGB image of
the input's size. `upsampling="resize"` (beyond the paper, UPSAMPLING) replaces each transposed
convolution by a bilinear resize and a 3x3 convolution, and adds a 3x3 `head_smooth` after
`DepthToSpace`. The architecture is the one of Chen et al. (2018), "Learning to See in the
Dark"; in `bayer` mode the input is their packed 4-channel raw mosaic at half resolution.

Transfer learning (§3.4) retrains only the last two blocks (Figure 4, blue): `up4` and `head`.
Every layer name starts with its block name and `_` so `set_trainable_blocks` can select them;
the only exceptions are the input layer and `space_to_depth`, which hold no weights.
"""
import json
import os
import re
import zipfile

import keras
import numpy as np

from lowlight_tf import exposure as exposure_lib
from lowlight_tf import layers

INPUT_MODES = ("rgb", "bayer")
# Decoder upsampling: "transpose" is the paper's 2x2 stride-2 transposed convolution (Figure 4);
# "resize" (beyond the paper) is a bilinear 2x resize then a 3x3 convolution in every `upN`
# block, and a 3x3 convolution after the head's DepthToSpace, initialised to pass the image
# through (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016). Trained with
# the shipped recipe it scored level with "transpose" and kept the 2-pixel texture, which comes
# from the space-to-depth/depth-to-space phases (inference's shift ensemble removes it).
UPSAMPLING = ("transpose", "resize")  # the first is the paper's and the default
# Chen et al. (2018) and the paper use LeakyReLU with slope 0.2 after every 3x3 convolution.
LEAKY_SLOPE = 0.2
# model_dir layout shared with lowlight_tf.training (docs/interfaces.md).
FINAL_MODEL_NAME = "final.keras"
ARCHITECTURE_NAME = "model.json"
CHECKPOINT_DIR = "checkpoints"
# Name of the 1x1 adapter convolutions inside a block (`down1_adapter1`; lowlight_tf.adapters).
ADAPTER = "adapter"
_CHECKPOINT_RE = re.compile(r"^epoch_(\d+)\.weights\.h5$")


class ModelLoadError(ValueError):
    """A model file or model_dir that cannot be loaded; the message says what to do."""


class ArchitectureMismatchError(ValueError):
    """Weights that do not fit a model; the message names the first layer that differs."""


def _conv_pair(x, filters, block, adapters=False):
    """Two 3x3 'same' convolutions, each followed by LeakyReLU(0.2), named `block_conv1..2`.

    With `adapters`, a zero-initialised 1x1 convolution `block_adapterI` is added beside each
    (`lowlight_tf.adapters`: trained on a device's pairs, then merged into the 3x3 kernel).
    """
    for i in (1, 2):
        conv = keras.layers.Conv2D(filters, 3, padding="same", name=f"{block}_conv{i}")(x)
        if adapters:
            side = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="zeros",
                                       name=f"{block}_{ADAPTER}{i}")(x)
            conv = keras.layers.Add(name=f"{block}_adapted{i}")([conv, side])
        x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{block}_lrelu{i}")(conv)
    return x


def _upsample(x, filters, block, upsampling):
    """The 2x upsampling of decoder `block` to `filters` channels (see UPSAMPLING)."""
    if upsampling == "transpose":
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                            name=f"{block}_upconv")(x)
    x = layers.BilinearUpsample(2, name=f"{block}_upsample")(x)
    return keras.layers.Conv2D(filters, 3, padding="same", name=f"{block}_upconv")(x)


def build_unet(input_mode="rgb", base_filters=32, depth=4, exposure_normalization=0.0,
               adapters=False, upsampling="transpose"):
    """Builds the paper's U-Net (Figure 4) as a Keras functional model.

    Args:
      input_mode: "rgb": input float32 [B, H, W, 3] in [0, 1], H and W multiples of
        2**(depth + 1); "bayer": the packed RGGB mosaic float32 [B, H/2, W/2, 4] in [0, 1],
        sides multiples of 2**depth.
      base_filters: channels of `down1`; block i has base_filters * 2**(i-1) channels and the
        bottleneck base_filters * 2**depth (512 at the defaults).
      depth: number of encoder (and decoder) blocks; the paper uses 4.
      exposure_normalization: 0 for the paper's model; a mean in (0, 1) inserts
        `exposure.ExposureNormalization(target_mean=exposure_normalization)` after the input
        (rgb only).
      adapters: also a zero-initialised 1x1 `..._adapterI` beside every 3x3 convolution (the
        output is unchanged until they train; `lowlight_tf.adapters`).
      upsampling: "transpose" (the paper's) or "resize" (see UPSAMPLING; beyond the paper).

    Returns:
      An uncompiled keras.Model named "unet" whose output is float32 [B, H, W, 3], the enhanced
      image in the model's [0, 1] range (not clipped, so the MAE gradient never vanishes).
    """
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}.")
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}.")
    if int(base_filters) < 1 or int(depth) < 1:
        raise ValueError(f"base_filters and depth must be >= 1, got {base_filters}, {depth}.")
    base_filters, depth = int(base_filters), int(depth)

    if exposure_normalization and input_mode != "rgb":
        raise ValueError("exposure_normalization applies to rgb models only (a raw mosaic's "
                         "exposure is set by --ratio).")
    if input_mode == "rgb":
        inputs = keras.Input(shape=(None, None, 3), name="dark")
        x = inputs
        if exposure_normalization:
            x = exposure_lib.ExposureNormalization(exposure_normalization,
                                                   name="exposure_normalization")(x)
        x = layers.SpaceToDepth(layers.BLOCK_SIZE, name="space_to_depth")(x)
    else:
        inputs = keras.Input(shape=(None, None, 4), name="dark_bayer")
        x = inputs

    skips = []
    for i in range(1, depth + 1):
        block = f"down{i}"
        x = _conv_pair(x, base_filters * 2 ** (i - 1), block, adapters)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"{block}_pool")(x)

    x = _conv_pair(x, base_filters * 2 ** depth, "bottleneck", adapters)

    for i in range(1, depth + 1):
        block = f"up{i}"
        filters = base_filters * 2 ** (depth - i)
        x = _upsample(x, filters, block, upsampling)
        x = keras.layers.Concatenate(axis=-1, name=f"{block}_concat")([x, skips[depth - i]])
        x = _conv_pair(x, filters, block, adapters)

    x = keras.layers.Conv2D(3 * layers.BLOCK_SIZE ** 2, 1, name="head_conv")(x)
    outputs = layers.DepthToSpace(layers.BLOCK_SIZE, name="head_depth_to_space")(x)
    if upsampling == "resize":
        smooth = keras.layers.Conv2D(3, 3, padding="same", name="head_smooth")
        outputs = smooth(outputs)
        kernel = np.zeros((3, 3, 3, 3), dtype="float32")
        kernel[1, 1] = np.eye(3, dtype="float32")  # passes the image through until it trains
        smooth.set_weights([kernel, np.zeros(3, dtype="float32")])
    return keras.Model(inputs, outputs, name="unet")


def block_of(layer_name):
    """Returns the block a layer belongs to ("down1_conv1" -> "down1"), or None for the input."""
    block = layer_name.split("_", 1)[0]
    if re.fullmatch(r"down\d+|up\d+|bottleneck|head", block):
        return block
    return None


def is_adapter(layer_name):
    """True for the 1x1 adapter convolutions of `build_unet(adapters=True)`."""
    return layer_name.split("_", 1)[-1].startswith(ADAPTER)


def block_names(model):
    """Returns the model's block names in graph order, e.g. ["down1", ..., "up4", "head"]."""
    names = []
    for layer in model.layers:
        block = block_of(layer.name)
        if block is not None and block not in names:
            names.append(block)
    return names


def default_transfer_blocks(model):
    """Returns the paper's transfer blocks (Figure 4, blue): the last decoder block and the head."""
    ups = [b for b in block_names(model) if b.startswith("up")]
    return [ups[-1], "head"]


def count_params(weights):
    """The number of scalars in a list of weights (e.g. `model.trainable_weights`)."""
    return int(sum(np.prod(w.shape) for w in weights))


def set_trainable_blocks(model, blocks):
    """Makes exactly the layers of `blocks` trainable and freezes every other layer.

    The caller must (re)compile the model afterwards for the change to reach the optimizer.

    Args:
      model: a model from `build_unet` (or loaded from one).
      blocks: block names, a list or a comma-separated string such as "up4,head"; "all"
        makes every block trainable.

    Returns:
      (trainable_params, non_trainable_params), integer parameter counts after the change.

    Raises:
      ValueError: a block name matches no layer (the message lists the model's blocks).
    """
    if isinstance(blocks, str):
        blocks = [b.strip() for b in blocks.split(",") if b.strip()]
    blocks = list(blocks)
    available = block_names(model)
    if blocks == ["all"]:
        blocks = available
    if not blocks:
        raise ValueError("No trainable blocks given; name at least one of "
                         f"{', '.join(available)} (or 'all').")
    unknown = [b for b in blocks if b not in available]
    if unknown:
        raise ValueError(f"Unknown block(s) {', '.join(unknown)}: this model's blocks are "
                         f"{', '.join(available)}.")
    wanted = set(blocks)
    model.trainable = True
    for layer in model.layers:
        layer.trainable = block_of(layer.name) in wanted
    return count_params(model.trainable_weights), count_params(model.non_trainable_weights)


def size_multiple(model):
    """Returns the number that the model input's height and width must be multiples of.

    2**depth for every max-pool, times 2 when the input passes through `SpaceToDepth`
    (32 for the default rgb model, 16 for bayer).
    """
    multiple = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            multiple *= int(np.prod(layer.pool_size) ** 0.5)
        elif isinstance(layer, layers.SpaceToDepth):
            multiple *= layer.block_size
    return multiple


def architecture(model):
    """Returns the build_unet arguments of a model: {"input_mode", "base_filters", "depth"}, plus
    "exposure_normalization" for a model that normalises exposure, "adapters" for one with
    adapters and "upsampling" for a resize-convolution model (absent: the paper's)."""
    input_mode = ("rgb" if any(isinstance(layer, layers.SpaceToDepth) for layer in model.layers)
                  else "bayer")
    depth = sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    base_filters = model.get_layer("down1_conv1").filters
    exposure = exposure_lib.exposure_layer(model)
    arch = {"input_mode": input_mode, "base_filters": int(base_filters), "depth": int(depth)}
    if exposure is not None:
        arch["exposure_normalization"] = exposure.target_mean
    if any(is_adapter(layer.name) for layer in model.layers):
        arch["adapters"] = True
    if any(isinstance(layer, layers.BilinearUpsample) for layer in model.layers):
        arch["upsampling"] = "resize"
    return arch


def copy_weights(source, target):
    """Copies every weight of `source` into the same-named layer of `target`.

    Adapters of `target` that `source` lacks keep their zeros (a plain model into one with
    adapters: the same function).

    Raises:
      ArchitectureMismatchError: naming the first layer whose weights are missing or differ in
        shape, so a wrong --base_filters or --depth never silently trains from scratch.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    for layer in target.layers:
        if not layer.weights:
            continue
        other = source_layers.pop(layer.name, None)
        if other is None and is_adapter(layer.name):
            continue
        if other is None:
            raise ArchitectureMismatchError(
                f"Layer {layer.name!r} of the new model has no counterpart in the checkpoint "
                f"(checkpoint architecture {architecture(source)}, new {architecture(target)}); "
                "use the same --base_filters/--depth/input mode as the checkpoint.")
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            raise ArchitectureMismatchError(
                f"Layer {layer.name!r} has weight shapes {theirs} in the checkpoint but {mine} in "
                f"the new model (checkpoint architecture {architecture(source)}, new "
                f"{architecture(target)}); use the checkpoint's --base_filters/--depth.")
        layer.set_weights(other.get_weights())
    if source_layers:
        raise ArchitectureMismatchError(
            f"Checkpoint layer(s) {', '.join(sorted(source_layers))} do not exist in the new "
            f"model (checkpoint architecture {architecture(source)}, new "
            f"{architecture(target)}); use the checkpoint's --base_filters/--depth.")


def latest_checkpoint(model_dir):
    """Returns the newest `model_dir/checkpoints/epoch_NNN.weights.h5`, or None."""
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(directory)
             for m in [_CHECKPOINT_RE.match(name)] if m]
    if not found:
        return None
    return os.path.join(directory, max(found)[1])


def _load_weights_file(path):
    """Loads `model_dir/checkpoints/epoch_NNN.weights.h5` using the model_dir's model.json."""
    model_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    arch_path = os.path.join(model_dir, ARCHITECTURE_NAME)
    if not os.path.isfile(arch_path):
        raise ModelLoadError(
            f"Cannot load weights {path}: the architecture file {arch_path} is missing. A "
            "weights checkpoint must sit in MODEL_DIR/checkpoints/ of a tools/train run; pass "
            "that run's model_dir or its final.keras instead.")
    try:
        with open(arch_path, encoding="utf-8") as f:
            model = build_unet(**json.load(f))
        model.load_weights(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"Cannot load weights {path} with architecture {arch_path}: {e}. The file is "
            "corrupt or from another model; pick another epoch_NNN.weights.h5 or retrain.") from e
    return model


def load_model(path):
    """Loads a U-Net for inference or as the starting point of transfer learning.

    Args:
      path: a `.keras` file; a `MODEL_DIR/checkpoints/epoch_NNN.weights.h5` checkpoint; or a
        model_dir written by tools/train (its final.keras, else its latest checkpoint).

    Returns:
      An uncompiled keras.Model (input and output in [0, 1], see `build_unet`).

    Raises:
      ModelLoadError: the path is missing, holds no model, or the file is corrupt.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        final = os.path.join(path, FINAL_MODEL_NAME)
        checkpoint = latest_checkpoint(path)
        if os.path.isfile(final):
            try:
                return load_model(final)
            except ModelLoadError as e:
                if checkpoint is None:
                    raise
                # A damaged final.keras must not hide the run's own checkpoints.
                import sys  # pylint: disable=import-outside-toplevel
                print(f"Warning: {e} Using the latest checkpoint {checkpoint} instead.",
                      file=sys.stderr, flush=True)
                return _load_weights_file(checkpoint)
        if checkpoint is None:
            raise ModelLoadError(
                f"No model in {path}: neither {FINAL_MODEL_NAME} nor "
                f"{CHECKPOINT_DIR}/epoch_NNN.weights.h5 exists. Pass a finished tools/train "
                "model_dir, a .keras file, or train first.")
        return _load_weights_file(checkpoint)
    if not os.path.exists(path):
        raise ModelLoadError(
            f"Model {path} does not exist. Pass a .keras file, a checkpoint "
            "epoch_NNN.weights.h5, or a tools/train model_dir.")
    if path.endswith(".weights.h5"):
        return _load_weights_file(path)
    if not path.endswith(".keras"):
        raise ModelLoadError(
            f"Cannot load {path}: expected a .keras file, an epoch_NNN.weights.h5 checkpoint or "
            "a tools/train model_dir.")
    what_to_do = ("Use a per-epoch checkpoint of the same model_dir (MODEL_DIR/checkpoints/"
                  "epoch_NNN.weights.h5, or pass the model_dir itself), or retrain.")
    if not zipfile.is_zipfile(path):  # Keras would call a damaged archive "File not found"
        raise ModelLoadError(
            f"Cannot load {path}: the file exists ({os.path.getsize(path):,} bytes) but is "
            f"corrupt or truncated (not a complete .keras zip archive; an interrupted save or "
            f"copy?). {what_to_do}")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise ModelLoadError(
            f"Cannot load {path}: the file is corrupt or truncated ({e}). {what_to_do}") from e
