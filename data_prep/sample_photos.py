"""The embedded default data: scikit-image's bundled colour photographs as an `images` dataset.

Gives a new user a bright-image dataset for the paper's §3.1 simulation and §3.3 pretraining
without any download: the photos ship inside the scikit-image wheel (`skimage/data/`). They are
written as PNGs under `ROOT/photos/` and turned into the dataset `ROOT/tfrecords/sample` with fixed
splits (too few photos for hash splits to fill all three), built once and reused afterwards.
"""
import os

import numpy as np

# Natural colour photos bundled in skimage/data (no pooch download needed), with their split.
# Left out: grey images, synthetic/test patterns, microscopy, the nearly black Hubble field.
SAMPLE_PHOTOS = (
    ("astronaut.png", "train"),
    ("coffee.png", "train"),
    ("motorcycle_left.png", "train"),
    ("motorcycle_right.png", "train"),
    ("chelsea.png", "val"),
    ("rocket.jpg", "test"),
)
DATASET_NAME = "sample"
SPLITS = ("train", "val", "test")


def skimage_data_dir():
    """Return the folder holding scikit-image's bundled data files."""
    import skimage.data  # pylint: disable=import-outside-toplevel
    return os.path.dirname(skimage.data.__file__)


def write_sample_photos(photos_dir):
    """Write the bundled photos as 8-bit RGB PNGs into photos_dir (existing files are kept).

    Returns:
        {png file name: split} of the photos available in this scikit-image install.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    source_dir = skimage_data_dir()
    os.makedirs(photos_dir, exist_ok=True)
    written = {}
    for file_name, split in SAMPLE_PHOTOS:
        source = os.path.join(source_dir, file_name)
        target_name = os.path.splitext(file_name)[0] + ".png"
        target = os.path.join(photos_dir, target_name)
        if not os.path.exists(target):
            if not os.path.exists(source):
                continue  # Not bundled in this scikit-image version.
            with Image.open(source) as image:
                rgb = np.asarray(image.convert("RGB"))
            # Hidden name while writing: an interrupted write is never read as a photo.
            temporary = os.path.join(photos_dir, f".{target_name}.incomplete")
            Image.fromarray(rgb).save(temporary, format="PNG")
            os.replace(temporary, target)
        written[target_name] = split
    return written


def ensure_sample_datasets(root, report=None):
    """Build (first call) or reuse the sample `images` dataset under root.

    Args:
        root: folder for `photos/` (PNGs) and `tfrecords/sample/` (the dataset).
        report: optional callable(str) for progress lines.

    Returns:
        dict split -> dataset spec, e.g. {"train": "ROOT/tfrecords/sample:train", "val": ...,
        "test": ...}, plus "output_dir" and "name".

    Raises:
        data_prep.core.InputError: when scikit-image ships none of the photos.
    """
    from data_prep import core  # pylint: disable=import-outside-toplevel
    from data_prep import prepare  # pylint: disable=import-outside-toplevel
    photos_dir = os.path.join(root, "photos")
    output_dir = os.path.join(root, "tfrecords")
    if not os.path.isfile(os.path.join(prepare.version_dir_of(output_dir, DATASET_NAME),
                                       "dataset_info.json")):
        overrides = write_sample_photos(photos_dir)
        if not overrides:
            raise core.InputError(
                f"None of the sample photos {[n for n, _ in SAMPLE_PHOTOS]} is bundled in "
                f"{skimage_data_dir()}; reinstall scikit-image or pass your own images.")
        prepare.make_tfrecords("images", output_dir=output_dir, name=DATASET_NAME,
                               input_dir=photos_dir, splits="train:0.8,val:0.1,test:0.1",
                               split_overrides=overrides, report=report)
    specs = {split: f"{output_dir}/{DATASET_NAME}:{split}" for split in SPLITS}
    specs.update(output_dir=output_dir, name=DATASET_NAME)
    return specs
