"""Device adapters: a few real pairs retune every block of a frozen pretrained U-Net (issue 16).

Beyond the paper (whose transfer, §3.4, retrains only the last two blocks): after the
reparameterised camera adaptation of LED (Jin et al., "Lighting Every Darkness in Two Pairs",
ICCV 2023), `model.build_unet(adapters=True)` puts a zero-initialised 1x1 convolution
(`block_adapterI`, no bias) beside every 3x3 convolution `block_convI`, their outputs added
before the LeakyReLU. Transfer with `tools/train --adapters` trains those 1x1 kernels (about a
ninth of the network's weights) together with --trainable_blocks, while the pretrained 3x3
kernels stay frozen; the adapters start at zero, so training starts from the pretrained model's
output exactly. A 1x1 kernel equals a 3x3 kernel that is zero outside its centre, so
`merge_adapters` adds it to the centre tap and returns the paper's architecture: the saved
model is the plain U-Net, with no extra inference cost.
"""

from lowlight_tf import model as model_lib


def has_adapters(model):
    """True if `model` (from `model.build_unet`) holds adapter convolutions."""
    return any(model_lib.is_adapter(layer.name) for layer in model.layers)


def set_adapters_trainable(model):
    """Makes every adapter trainable, leaving the other layers' trainability as it is.

    Call after `model.set_trainable_blocks`, then (re)compile.

    Returns:
      (trainable_params, non_trainable_params), integer counts after the change.

    Raises:
      ValueError: the model has no adapters.
    """
    if not has_adapters(model):
        raise ValueError("This model has no adapters: build it with build_unet(adapters=True).")
    for layer in model.layers:
        if model_lib.is_adapter(layer.name):
            layer.trainable = True
    return (model_lib.count_params(model.trainable_weights),
            model_lib.count_params(model.non_trainable_weights))


def merge_adapters(model):
    """The plain U-Net computing what `model` computes: each adapter added to its 3x3 centre.

    Args:
      model: a U-Net from `build_unet(adapters=True)` (a model without adapters is returned
        as it is).
    Returns:
      A new, uncompiled keras.Model with `model`'s architecture minus the adapters; its output
      equals `model`'s up to float32 rounding (the same input [B, H, W, 3] in [0, 1] and output).
    """
    if not has_adapters(model):
        return model
    arch = {k: v for k, v in model_lib.architecture(model).items() if k != "adapters"}
    plain = model_lib.build_unet(**arch)
    for layer in plain.layers:
        if not layer.weights:
            continue
        weights = model.get_layer(layer.name).get_weights()
        adapter_name = layer.name.replace("_conv", f"_{model_lib.ADAPTER}", 1)
        if layer.name.split("_", 1)[-1].startswith("conv") and _has_layer(model, adapter_name):
            kernel, bias = weights
            side = model.get_layer(adapter_name).get_weights()[0]  # [1, 1, C_in, C_out]
            kernel = kernel.copy()
            kernel[kernel.shape[0] // 2, kernel.shape[1] // 2] += side[0, 0]
            weights = [kernel, bias]
        layer.set_weights(weights)
    return plain


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)
