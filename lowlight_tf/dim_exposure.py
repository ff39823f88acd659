"""Dim (clean, under-exposed) training inputs beside the simulated dark ones (beyond the paper).

The §3.1 simulation teaches what a camera's *dark* frame looks like: noisy, low-contrast,
with the camera's floor and tone. A user's photo may instead be merely *dim*: a clean,
well-rendered photo taken one to three stops too short (the LIME test photos, a dusk snapshot).
An exposure-normalising network (`exposure.ExposureNormalization`) sees such a photo at the same
mean as a dark frame, and a network trained on dark frames only stretches it with the dark
frames' strong curve: highlights clip to white (RESULTS.md, session 5: 52% clipped pixels).

`mix_dim` therefore replaces a fraction of the simulated dark patches of a batch by their bright
patch darkened in *linear light* (sRGB decoded, divided by 2**stops, encoded, rounded to 8 bits),
with `stops` uniform in [0, max_stops]: the target of such an input is the photo itself, so the
network learns to give a clean dim photo its exposure back without changing its tone, and to
leave a well-exposed photo (stops near 0) as it is.
"""
import tensorflow as tf

DEFAULT_MAX_STOPS = 3.5  # the darkest dim photo: 3.5 stops (x 1/11) below its reference


def srgb_to_linear(x):
    """Inverse sRGB transfer curve (IEC 61966-2-1): float32 tensor in [0, 1] -> [0, 1]."""
    return tf.where(x <= 0.04045, x / 12.92, tf.pow((tf.maximum(x, 0.04045) + 0.055) / 1.055, 2.4))


def linear_to_srgb(x):
    """sRGB transfer curve (IEC 61966-2-1): float32 tensor in [0, 1] -> [0, 1]."""
    return tf.where(x <= 0.0031308, x * 12.92,
                    1.055 * tf.pow(tf.maximum(x, 0.0031308), 1.0 / 2.4) - 0.055)


def dim_exposure(bright, stops):
    """Darken sRGB images by `stops` in linear light and round to 8 bits.

    Args:
      bright: float32 [B, H, W, 3] in [0, 255], sRGB.
      stops: float32 [B], >= 0: how many stops (factors of 2 of linear light) to darken.
    Returns:
      float32 [B, H, W, 3] in [0, 255], integer-valued.
    """
    bright = tf.convert_to_tensor(bright, tf.float32)
    ratio = tf.reshape(tf.pow(2.0, -tf.convert_to_tensor(stops, tf.float32)), [-1, 1, 1, 1])
    linear = srgb_to_linear(tf.clip_by_value(bright / 255.0, 0.0, 1.0)) * ratio
    return tf.round(linear_to_srgb(linear) * 255.0)


def mix_dim(dark, bright, fraction, *, seed, max_stops=DEFAULT_MAX_STOPS):
    """Replace about `fraction` of the dark patches of a batch by dim versions of their bright one.

    Args:
      dark: float32 [B, H, W, 3] in [0, 255], simulated dark patches.
      bright: float32 [B, H, W, 3] in [0, 255], their bright patches.
      fraction: float in [0, 1], the probability that a patch is replaced.
      seed: int [2] stateless seed; the same seed gives the same choice and stops.
      max_stops: stops are drawn uniformly from [0, max_stops].
    Returns:
      float32 [B, H, W, 3] in [0, 255]; `dark` itself when fraction is 0.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"The dim fraction must be in [0, 1], got {fraction}.")
    if fraction == 0.0:
        return dark
    draws = tf.random.stateless_uniform([tf.shape(bright)[0], 2], seed=seed)
    chosen = tf.reshape(draws[:, 0] < fraction, [-1, 1, 1, 1])
    return tf.where(chosen, dim_exposure(bright, draws[:, 1] * max_stops), dark)
