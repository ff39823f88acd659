"""Installs lowlight_tf: the library, the data_prep builders, the tools/ commands and configs/.

The static metadata is in pyproject.toml. Computed here: every extension-less file in tools/ is
shipped as package data (lowlight_tf/_tools/) and installed as the command `lowlight-NAME`
(underscores become hyphens), an entry point into lowlight_tf.cli that runs the file; the
flagfiles in configs/ are shipped as lowlight_tf/_configs/ so that `--flagfile=NAME` finds them.
"""
import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _tools():
    """Every tool: the extension-less files in tools/ (the rule lowlight_tf.cli also applies)."""
    folder = os.path.join(HERE, "tools")
    return sorted(name for name in os.listdir(folder)
                  if "." not in name and os.path.isfile(os.path.join(folder, name)))


setuptools.setup(
    packages=setuptools.find_packages(include=["lowlight_tf", "lowlight_tf.*", "data_prep",
                                               "data_prep.*"])
    + ["lowlight_tf._tools", "lowlight_tf._configs"],
    package_dir={"lowlight_tf._tools": "tools", "lowlight_tf._configs": "configs"},
    package_data={"lowlight_tf": ["presets/*.json", "pretrained/*.keras", "pretrained/*.md"],
                  "lowlight_tf._tools": _tools(),
                  "lowlight_tf._configs": ["*.flags"]},
    entry_points={"console_scripts": [
        f"lowlight-{tool.replace('_', '-')} = lowlight_tf.cli:{tool}" for tool in _tools()]},
)
