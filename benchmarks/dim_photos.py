"""Dim photos for the no-reference exposure check, and a before/after panel of one of them.

Writes darkened copies of well-exposed photos (scikit-image's bundled sample photos by default,
plus any --extra_dirs) into --output_dir: each photo is darkened by 1, 2 and 3 stops in linear
light (sRGB decoded, divided by 2**stops, encoded, rounded to 8 bits; `inference.amplify` with
ratio 2**-stops), i.e. dim photos, not pitch dark ones. Then

  tools/evaluate --model=MODEL --unpaired=OUTPUT_DIR --output_dir=eval/dim --baselines=auto_gain

reports each method's mean brightness and clipped-highlight fraction on them (issue: a
model that blows out a dim photo shows a high clipped fraction). With --panel=PATH and one or
more --models, it also writes a panel for one dim photo: input | auto-gain | each model.

  python benchmarks/dim_photos.py --output_dir=/tmp/dim
  python benchmarks/dim_photos.py --output_dir=/tmp/dim --models=old.keras,new.keras \
      --labels=before,after --panel=docs/dim_photo_panel.png --panel_photo=coffee_minus2ev.png
"""
import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import sample_photos  # noqa: E402
from lowlight_tf import baselines, files, inference  # noqa: E402
from lowlight_tf import model as model_lib  # noqa: E402

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the dim photos (created).")
_EXTRA_DIRS = flags.DEFINE_list("extra_dirs", [], "More folders of well-exposed photos.")
_STOPS = flags.DEFINE_list("stops", ["1", "2", "3"], "Stops to darken each photo by.")
_MODELS = flags.DEFINE_list("models", [], "Models (.keras or model_dir) for the panel.")
_LABELS = flags.DEFINE_list("labels", [], "A label per --models entry.")
_PANEL = flags.DEFINE_string("panel", "", "Write a panel PNG here (needs --models).")
_PANEL_PHOTO = flags.DEFINE_string("panel_photo", "coffee_minus2ev.png",
                                   "Which dim photo (file name in --output_dir) the panel shows.")
flags.mark_flag_as_required("output_dir")


def _bright_photos(extra_dirs):
    """(name, path) of every well-exposed photo to darken."""
    sample_dir = os.path.join(_OUTPUT_DIR.value, ".sample_photos")
    written = sample_photos.write_sample_photos(sample_dir)
    photos = [(os.path.splitext(n)[0], os.path.join(sample_dir, n)) for n in sorted(written)]
    for folder in extra_dirs:
        prefix = os.path.basename(os.path.normpath(folder))
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
                photos.append((f"{prefix}_{os.path.splitext(name)[0]}",
                               os.path.join(folder, name)))
    return photos


def write_dim_photos(output_dir, extra_dirs, stops):
    """Write PNGs NAME_minusKev.png; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for name, path in _bright_photos(extra_dirs):
        with Image.open(path) as image:
            bright = np.asarray(image.convert("RGB"))
        for stop in stops:
            dim = inference.amplify(bright, 2.0 ** -float(stop), curve="srgb")
            target = os.path.join(output_dir, f"{name}_minus{float(stop):g}ev.png")
            with files.atomic_path(target) as temporary:
                Image.fromarray(np.round(dim * 255.0).astype(np.uint8)).save(temporary)
            paths.append(target)
    return paths


def write_panel(photo_path, models, labels, panel_path):
    """input | auto-gain | each model, side by side, labelled in the file's text chunk."""
    with Image.open(photo_path) as image:
        dim = np.asarray(image.convert("RGB"), np.float32)
    columns = [dim, baselines.apply("auto_gain", dim)]
    for path in models:
        columns.append(inference.predict_image(model_lib.load_model(path), dim))
    strip = np.concatenate([np.clip(np.round(c), 0, 255).astype(np.uint8) for c in columns], 1)
    with files.atomic_path(panel_path) as temporary:
        Image.fromarray(strip).save(temporary)
    print(f"panel: {panel_path}: input | auto-gain | {' | '.join(labels)}")
    for label, column in zip(["input", "auto-gain"] + labels, columns):
        clipped = float(np.mean(np.any(column >= 254.0, axis=-1)))
        print(f"  {label:>12}: mean {column.mean():6.1f} / 255, clipped {clipped:.2%}")


def main(argv):
    del argv
    paths = write_dim_photos(_OUTPUT_DIR.value, _EXTRA_DIRS.value, _STOPS.value)
    print(f"{len(paths)} dim photos in {_OUTPUT_DIR.value}")
    if _PANEL.value:
        if not _MODELS.value:
            raise app.UsageError("--panel needs --models.")
        labels = _LABELS.value or [os.path.basename(m) for m in _MODELS.value]
        write_panel(os.path.join(_OUTPUT_DIR.value, _PANEL_PHOTO.value), _MODELS.value, labels,
                    _PANEL.value)


if __name__ == "__main__":
    app.run(main)
