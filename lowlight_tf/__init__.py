"""lowlight_tf: transfer learning for extreme low-light images.

Reproduces and extends "Transfer Learning Approach for Processing Extreme Low-Light Images"
(Gupta, Botica, Brown): simulate dark images from bright ones (§3.1), pretrain a
See-in-the-Dark style U-Net on simulated pairs (§3.2-3.3), transfer it to a device with a few
real pairs (§3.4), evaluate in the form of the paper's Table 1 (§4).
"""
import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides our own progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def load_pretrained():
    """The shipped pretrained U-Net (keras.Model); see `lowlight_tf.pretrained`."""
    from lowlight_tf import pretrained  # imports TensorFlow: only when a model is wanted
    return pretrained.load_pretrained()
