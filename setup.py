"""Installs lowlight_tf: the library, the data_prep builders and the tools/ commands."""
import glob
import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _tool_scripts():
  """Every executable file in tools/ (no extension) is installed as a command."""
  return sorted(
      path for path in glob.glob(os.path.join("tools", "*"))
      if os.path.isfile(path) and "." not in os.path.basename(path))


setuptools.setup(
    name="lowlight_tf",
    version="0.1.0",
    description=("Transfer learning for extreme low-light images: simulate dark images, "
                 "pretrain a See-in-the-Dark U-Net, transfer to a device with a few real pairs."),
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["lowlight_tf", "lowlight_tf.*", "data_prep",
                                               "data_prep.*"]),
    package_data={"lowlight_tf": ["presets/*.json"]},
    scripts=_tool_scripts(),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.14",
        "tensorboard",
        "tensorflow-datasets",
        "rawpy",
        "numpy",
        "scipy",
        "absl-py",
        "Pillow",
        "scikit-image",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pidng", "tifffile"],
    },
)
