"""Exposure normalisation (beyond the paper): the network sees one canonical darkness.

A dark sRGB image does not say how long it was exposed: the same scene one stop brighter has
twice the mean. An exposure-normalising U-Net (`model.build_unet(exposure_normalization=...)`)
scales each input image by `normalization_gain(its mean, target_mean)` before its first block
(the exposure-aware recipe of RESULTS.md, issue 17). The same gain formula serves the layer,
tiled inference (`exposure_gain` on the whole image, then `after_exposure_normalization` per
tile), the exports and the training pipeline (patches multiplied by their whole image's gain,
the layer passed through with `exposure_applied_outside`).
"""
import contextlib

import keras
import numpy as np
import tensorflow as tf

# Mean of the canonical dark input in [0, 1] for models that normalise exposure: about the mean
# of ELIEI's real low-light photos (10/255, its data README), so the network sees the levels and
# 8-bit quantisation of real dark photos.
CANONICAL_DARK_MEAN = 10.0 / 255.0
# The exposure normalisation's floor on an image's mean level ([0, 1]): a black image is not
# amplified more than CANONICAL_DARK_MEAN / MIN_MEAN.
MIN_MEAN = 0.25 / 255.0


def normalization_gain(mean, target_mean):
    """The exposure normalisation's gain: target_mean / max(mean, MIN_MEAN).

    `mean` is an image's mean level in [0, 1] (float or float32 tensor, any shape); the floor
    keeps a black image from being amplified without bound. Returns the same type and shape.
    """
    return target_mean / tf.maximum(mean, MIN_MEAN)


@keras.saving.register_keras_serializable(package="lowlight_tf")
class ExposureNormalization(keras.layers.Layer):
    """Scales each image so its mean is `target_mean`: the network sees one canonical darkness.

    A dark sRGB image does not say how long it was exposed: the same scene one stop brighter
    has twice the mean. Normalising the mean before the network makes its output independent
    of the input's exposure (beyond the paper; the exposure-aware recipe of RESULTS.md).
    [B, H, W, C] float32 in [0, 1] -> same shape, each image times target_mean / its mean
    (the mean floored at `MIN_MEAN`, so a black image is not amplified without bound).
    Tiled inference computes the gain once on the whole image (`exposure_gain`) and runs the
    layers after this one (`after_exposure_normalization`), so tiles share one gain. Training
    with `--exposure_gain=image` does the same for patches: the input pipeline multiplies each
    patch by its whole image's gain, and `exposure_applied_outside` makes this layer pass its
    input through while the model is fitted.
    """

    def __init__(self, target_mean=CANONICAL_DARK_MEAN, **kwargs):
        super().__init__(**kwargs)
        self.target_mean = float(target_mean)
        if not 0.0 < self.target_mean < 1.0:
            raise ValueError(f"target_mean must be in (0, 1), got {target_mean}.")
        self.applied_outside = False  # set by exposure_applied_outside; never saved

    def call(self, inputs):
        if self.applied_outside:
            return inputs
        mean = tf.reduce_mean(inputs, axis=[1, 2, 3], keepdims=True)
        return inputs * normalization_gain(mean, self.target_mean)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["target_mean"] = self.target_mean
        return config


def exposure_layer(model):
    """The model's ExposureNormalization layer, or None (the paper's model has none)."""
    for layer in model.layers:
        if isinstance(layer, ExposureNormalization):
            return layer
    return None


def exposure_gain(model, image):
    """The gain the model's exposure normalisation applies to `image` as a whole (1.0 if none).

    Args:
      model: a U-Net from `build_unet`.
      image: array-like [H, W, C] in [0, 1] (any numeric dtype; NumPy, or an object with
        `shape` and slicing that returns arrays), the whole model input.
    Returns:
      float: target_mean / max(mean of image, MIN_MEAN).
    """
    layer = exposure_layer(model)
    if layer is None:
        return 1.0
    total, count = 0.0, 0
    for begin in range(0, image.shape[0], 256):  # row bands: no full-size float copy
        band = np.asarray(image[begin:begin + 256], np.float64)
        total, count = total + float(band.sum()), count + band.size
    return float(normalization_gain(total / max(count, 1), layer.target_mean))


@contextlib.contextmanager
def exposure_applied_outside(model):
    """While inside, the model's ExposureNormalization passes its input through unchanged.

    For training on patches the input pipeline has already multiplied by their whole image's
    gain (`--exposure_gain=image`), as tiled inference does with `exposure_gain`. Keras traces
    its train/test functions inside, so they are dropped on exit: later calls trace again with
    the layer active. A model without the layer is unaffected.
    """
    layer = exposure_layer(model)
    if layer is None:
        yield model
        return
    layer.applied_outside = True
    try:
        yield model
    finally:
        layer.applied_outside = False
        model.train_function = model.test_function = model.predict_function = None


def after_exposure_normalization(model):
    """The model from the exposure normalisation's output on (the model itself if it has none).

    Inputs must already be multiplied by `exposure_gain(model, whole_image)`.
    """
    layer = exposure_layer(model)
    if layer is None:
        return model
    return keras.Model(layer.output, model.output, name=f"{model.name}_after_exposure")
