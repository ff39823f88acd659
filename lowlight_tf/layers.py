"""The U-Net's own Keras layers around tf.nn's space/depth rearrangements (paper §3.2, Figure 4).

`SpaceToDepth` packs the RGB input into the half-resolution 12-channel tensor the first block
sees; `DepthToSpace` is the head's output through `tf.nn.depth_to_space`; `BilinearUpsample`
is the resize of `build_unet(upsampling="resize")`. All are registered with Keras under package
"lowlight_tf", so saved models load by that name.
"""
import keras
import tensorflow as tf

# Depth-to-space factor of the head: 12 channels -> 3 channels at twice the resolution.
BLOCK_SIZE = 2


@keras.saving.register_keras_serializable(package="lowlight_tf")
class SpaceToDepth(keras.layers.Layer):
    """Moves each `block_size` x `block_size` spatial block into channels (tf.nn.space_to_depth).

    [B, H, W, C] -> [B, H / block_size, W / block_size, C * block_size**2], same dtype.
    """

    def __init__(self, block_size=BLOCK_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs):
        return tf.nn.space_to_depth(inputs, self.block_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        return (batch, None if height is None else height // b,
                None if width is None else width // b, channels * b * b)

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config


@keras.saving.register_keras_serializable(package="lowlight_tf")
class DepthToSpace(keras.layers.Layer):
    """Moves channels into `block_size` x `block_size` spatial blocks (tf.nn.depth_to_space).

    [B, H, W, C] -> [B, H * block_size, W * block_size, C / block_size**2], same dtype.
    """

    def __init__(self, block_size=BLOCK_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        return (batch, None if height is None else height * b,
                None if width is None else width * b, channels // (b * b))

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config


@keras.saving.register_keras_serializable(package="lowlight_tf")
class BilinearUpsample(keras.layers.Layer):
    """Bilinear resize by an integer `factor` (tf.image.resize, half-pixel centres).

    [B, H, W, C] -> [B, H * factor, W * factor, C], same dtype. Unlike Keras's UpSampling2D
    (which fails inside a tf.function whose input height and width are unknown, as in tiled
    inference), the output size comes from the input's dynamic shape.
    """

    def __init__(self, factor=2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        size = tf.shape(inputs)[1:3] * self.factor
        return tf.cast(tf.image.resize(inputs, size, method="bilinear"), inputs.dtype)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        f = self.factor
        return (batch, None if height is None else height * f,
                None if width is None else width * f, channels)

    def get_config(self):
        config = super().get_config()
        config["factor"] = self.factor
        return config
