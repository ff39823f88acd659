"""The shipped pretrained model: ready to enhance photos without training anything.

The file is package data (`lowlight_tf/pretrained/`, the one binary the repository holds) with its
model card beside it: the command and commit that produced it, its training data and the
metrics measured on it. `tools/enhance` and `tools/export` use it when no `--model` is given.
"""
import os

from lowlight_tf import model as model_lib

# Folder of the shipped model inside the installed package.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
MODEL_NAME = "lowlight_eliei.keras"
CARD_NAME = "MODEL_CARD.md"


class NoPretrainedModelError(FileNotFoundError):
    """This installation holds no shipped model file; the message says what to do."""


def model_path():
    """Path of the shipped `.keras` model; raises NoPretrainedModelError when it is missing."""
    path = os.path.join(PRETRAINED_DIR, MODEL_NAME)
    if not os.path.isfile(path):
        raise NoPretrainedModelError(
            f"No shipped pretrained model at {path}: this installation was built without it. "
            "Reinstall lowlight_tf from a full checkout, or pass --model=PATH (a .keras file or "
            "a model_dir written by tools/train).")
    return path


def card_path():
    """Path of the shipped model's card (Markdown): how it was made and what it measured."""
    return os.path.join(PRETRAINED_DIR, CARD_NAME)


def load_pretrained():
    """Load the shipped pretrained U-Net.

    Returns:
      keras.Model: an rgb U-Net taking float32 [B, H, W, 3] in [0, 1] (H, W multiples of
      `model.size_multiple`; `inference.predict_array` pads any size) and returning the enhanced
      image, float32 [B, H, W, 3] in [0, 1] (unclipped). See the card (`card_path()`) for its
      training data, recipe and measured PSNR/SSIM.
    """
    return model_lib.load_model(model_path())
