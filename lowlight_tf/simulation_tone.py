"""Camera tone curves for the simulation: one monotone 256-entry curve per RGB channel.

Beyond the paper's §3.1: a calibrated preset may carry a tone curve T (float [3, 256]) that the
composite applies to the bright image first (`lowlight_tf.simulation`, "tone curve"); it is
fitted by `lowlight_tf.calibration.fit_tone_curve`. `lowlight_tf.simulation` re-exports both
functions, so callers write `simulation.apply_tone_curve`.
"""
import numpy as np
import tensorflow as tf


def apply_tone_curve(image, curve):
    """Map each channel through its tone curve, linearly interpolated between integer values.

    Args:
      image: float32 [B, H, W, 3] in [0, 255] (values outside are clipped to it first).
      curve: float [3, 256], curve[c, v] = output for input value v of channel c (RGB), in
        [0, 255] and non-decreasing along v (`check_tone_curve`).
    Returns:
      float32 [B, H, W, 3] in [0, 255].
    """
    image = tf.clip_by_value(tf.convert_to_tensor(image, tf.float32), 0.0, 255.0)
    table = tf.reshape(tf.transpose(tf.convert_to_tensor(curve, tf.float32)), [-1])  # [256 * 3]
    lower = tf.minimum(tf.floor(image), 254.0)
    fraction = image - lower
    index = tf.cast(lower, tf.int32) * 3 + tf.range(3)  # row v, column c of the [256, 3] table
    below = tf.gather(table, index)
    above = tf.gather(table, index + 3)
    return below + fraction * (above - below)


def check_tone_curve(curve, name="tone curve"):
    """Return a valid tone curve as float64 [3, 256]; a ValueError says what is wrong."""
    curve = np.asarray(curve, np.float64)
    if curve.shape != (3, 256):
        raise ValueError(f"{name} must have shape [3, 256] (one 256-entry curve per RGB channel), "
                         f"got {curve.shape}.")
    if not np.all(np.isfinite(curve)) or curve.min() < 0.0 or curve.max() > 255.0:
        raise ValueError(f"{name} values must be finite and in [0, 255].")
    if np.any(np.diff(curve, axis=1) < -1e-6):
        raise ValueError(f"{name} must be non-decreasing along its 256 input values.")
    return curve
