"""Enhancing users' files (paper §3.4's models applied to photos): plan outputs, decode, predict,
set the brightness, write atomically, summarise.

`enhance_paths` is tools/enhance: every input file (raw or image) is decoded
(`inference.decode_input`), predicted with bounded memory (`inference`'s tiling), given its
brightness (`brightness`) and written under a name that never replaces a file the tool did not
create (`files.OutputGuard`); unreadable inputs are skipped with their reason.
"""
import dataclasses
import os
import time

import numpy as np
from PIL import Image

from lowlight_tf import brightness as brightness_lib
from lowlight_tf import chroma
from lowlight_tf import files
from lowlight_tf import metrics
from lowlight_tf import progress as progress_lib
from lowlight_tf.inference import (DEFAULT_OVERLAP, DEFAULT_TILE, ScaledArray,
                                   UnreadableImageError, decode_input, model_geometry,
                                   predict_decoded)
from lowlight_tf.media import formats
from lowlight_tf.media import header
from lowlight_tf.media import png

OUTPUT_FORMATS = ("png", "jpg", "png16")
JPEG_QUALITY = 95


class OutputDirError(ValueError):
    """An output directory that cannot be created or written to."""


def write_image(path, image, fmt, icc_profile=None, exif=None, orientation=1):
    """Writes float32 [H, W, 3] in [0, 1] as `fmt` ("png", "jpg" 8-bit; "png16" 16-bit),
    atomically: `path` holds the complete image or is left as it was. `icc_profile` (RGB ICC
    bytes, e.g. the input's Display P3 profile) and `exif` (EXIF bytes) are embedded when given;
    without a profile the output is untagged sRGB. `orientation` (EXIF 1-8) turns the pixels
    upright after quantising (a quarter of a float copy's memory for 8 bits). Returns the
    written (width, height)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {fmt!r}.")
    peak, dtype = (65535.0, np.uint16) if fmt == "png16" else (255.0, np.uint8)
    # Quantise in row bands: no full-size float temporary for a 24-MP frame.
    pixels = np.empty(image.shape, dtype)
    for begin in range(0, image.shape[0], 256):
        band = np.clip(image[begin:begin + 256], 0.0, 1.0) * peak
        pixels[begin:begin + 256] = np.round(band)
    pixels = header.upright(pixels, orientation)
    size = (pixels.shape[1], pixels.shape[0])
    if fmt == "png16":
        png.write_png(path, pixels, icc_profile=icc_profile, exif=exif)
        return size
    tags = {key: value for key, value in (("icc_profile", icc_profile), ("exif", exif)) if value}
    with files.atomic_path(path) as temporary:
        if fmt == "jpg":
            Image.fromarray(pixels).save(temporary, format="JPEG", quality=JPEG_QUALITY, **tags)
        else:
            Image.fromarray(pixels).save(temporary, format="PNG", **tags)
    return size


def check_output_dir(output_dir):
    """Creates `output_dir` if needed and proves it writable; raises OutputDirError otherwise."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write_test_{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise OutputDirError(f"Cannot write to the output directory {output_dir} ({e.strerror or e}"
                             "); choose a directory you can write to.") from e


def _output_path(output_dir, path, fmt, taken):
    """`NAME_enhanced.EXT` in output_dir; a name already planned in this run gets the source
    extension (`NAME_EXT_enhanced.EXT`), then a counter. Existing files are not looked at here:
    `plan_outputs` refuses them (the documented name is kept, never silently changed)."""
    stem, source_ext = os.path.splitext(os.path.basename(path))
    ext = "jpg" if fmt == "jpg" else "png"
    candidate = os.path.join(output_dir, f"{stem}_enhanced.{ext}")
    if candidate in taken:
        candidate = os.path.join(output_dir, f"{stem}_{source_ext.lstrip('.')}_enhanced.{ext}")
    counter = 2
    while candidate in taken:
        candidate = os.path.join(output_dir, f"{stem}_enhanced_{counter}.{ext}")
        counter += 1
    return candidate


def plan_outputs(paths, output_dir, fmt, guard):
    """Output path of every input, claimed with `guard` before any image is read.

    Args:
      paths: the input files, in processing order.
      output_dir: the output folder.
      fmt: an OUTPUT_FORMATS entry.
      guard: a `files.OutputGuard` that knows the inputs and the --overwrite choice.
    Returns:
      list of output paths, one per input.
    Raises:
      files.OutputIsInputError: an output would replace an input (refused even with overwrite).
      files.OutputExistsError: outputs that exist and this run did not create (without
        overwrite); the message lists them (up to 5) and what to do.
    """
    outputs, taken, exists = [], set(), []
    for path in paths:
        output_path = _output_path(output_dir, path, fmt, taken)
        taken.add(output_path)
        outputs.append(output_path)
    for output_path in outputs:
        try:
            guard.claim(output_path)  # OutputIsInputError propagates: overwrite cannot lift it
        except files.OutputExistsError:
            exists.append(output_path)
    if exists:
        listed = ", ".join(exists[:5]) + (f" and {len(exists) - 5} more" if len(exists) > 5
                                          else "")
        raise files.OutputExistsError(
            f"Refusing to write {len(exists)} output file(s) that exist and this run did not "
            f"create: {listed}. Nothing was written. Choose another --output_dir, move the "
            "files, or pass --overwrite to replace them (inputs are never replaced).")
    return outputs


@dataclasses.dataclass(frozen=True)
class EnhanceOptions:
    """How every file is enhanced: tools/enhance's flags, checked by `check`.

    Attributes:
      ratio: exposure ratio applied to the linear signal before the model (SID's
        amplification), None for none.
      fmt: "png" (8-bit), "jpg" (8-bit, quality 95) or "png16" (16-bit PNG).
      tile, overlap: tiled inference (image pixels) bounding memory for any image size; tile None
        runs the whole image at once.
      exposure_curve: None, or float [3, 256] (`SimulationPreset.exposure_curve` of the camera
        that took the photo): set the output's brightness with it
        (`brightness.anchor_exposure`). Ordinary images of that camera only, without `ratio`.
      exposure_colour: with `exposure_curve`, one gain per channel to the camera's expected
        channel means, so the calibration also sets the colour balance (a cast removed).
      brightness: "auto", a mean level in (0, 1) or an EV change (`brightness.apply_brightness`).
      max_pixels: pixel limit checked on the header before decoding (None/0: none).
      chroma_filter: smooth the output's chroma where its luma is flat, last
        (`chroma.filter_chroma`: the coloured blotches of dark shadows).
      shift_ensemble: run the model as the mean over the four 1-pixel shifts of its input
        (`inference.predict_array`): no 2-pixel periodic texture, 4x the compute.
    """
    ratio: float = None
    fmt: str = "png"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    exposure_curve: np.ndarray = None
    exposure_colour: bool = False
    brightness: str = brightness_lib.BRIGHTNESS_AUTO
    max_pixels: int = files.DEFAULT_MAX_PIXELS
    chroma_filter: bool = True
    shift_ensemble: bool = True

    def check(self, model=None):
        """Raises ValueError naming the conflict or bad value; `model` (optional) must suit
        the options (an exposure curve needs an rgb model)."""
        setting = brightness_lib.parse_brightness(self.brightness)
        if self.exposure_colour and self.exposure_curve is None:
            raise ValueError("The calibrated colour (--exposure_colour) needs the camera's "
                             "calibration: give --exposure_preset too.")
        if self.exposure_curve is not None:
            if np.shape(self.exposure_curve) != (3, 256):
                raise ValueError("exposure_curve must be [3, 256], got "
                                 f"{np.shape(self.exposure_curve)}.")
            if model is not None and model_geometry(model)[0] != 3:
                raise ValueError("A calibrated exposure needs an rgb model (a bayer model takes "
                                 "raw files, which the exposure curve does not describe).")
            if setting.kind != brightness_lib.BRIGHTNESS_AUTO:
                raise ValueError(f"Both a calibrated exposure (--exposure_preset) and "
                                 f"--brightness={setting} set the output's brightness; give "
                                 "only one of them.")
        if self.fmt not in OUTPUT_FORMATS:
            raise ValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {self.fmt!r}.")
        if self.ratio is not None and not self.ratio > 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}.")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise ValueError("max_pixels must be positive (0 or None: no limit), got "
                             f"{self.max_pixels}.")


def _enhance_one(model, path, output_path, options):
    """Decodes, predicts and writes one file; returns ((width, height), no-reference stats)."""
    channels, _, _ = model_geometry(model)
    decoded = decode_input(path, input_channels=channels, ratio=options.ratio,
                           max_pixels=options.max_pixels)
    curve = options.exposure_curve
    if curve is not None and (decoded.is_raw or options.ratio):
        raise UnreadableImageError("a calibrated exposure applies to the calibrated camera's "
                                   "own dark images as they are, not to raw files or --ratio "
                                   "amplified ones; enhance it without the exposure preset")
    prediction = predict_decoded(model, decoded, options.tile, options.overlap,
                                 options.shift_ensemble)
    x = decoded.model_input
    dark = x if decoded.scale == 1.0 else ScaledArray(x, decoded.scale)
    if curve is not None:
        prediction = brightness_lib.anchor_exposure(prediction, dark, curve, out=prediction,
                                                    per_channel=options.exposure_colour)
    prediction = brightness_lib.apply_brightness(prediction, dark, options.brightness,
                                                 out=prediction)
    facts = decoded.header
    del decoded, x, dark
    if options.chroma_filter:  # a box-window filter: the same before or after turning upright
        prediction = chroma.filter_chroma(prediction)
    size = write_image(output_path, prediction, options.fmt, facts.icc_profile, facts.exif,
                       facts.orientation)
    return size, metrics.no_reference_stats(prediction, peak=1.0)


def enhance_file(model, path, output_dir, options=EnhanceOptions(), *, output_path=None,
                 overwrite=False):
    """Enhances one raw or ordinary image file and writes the result (atomically).

    Args:
      model: a U-Net (rgb: raw files are rendered to sRGB first; bayer: raw files only).
      path: the input file.
      output_dir: where the result goes (must exist and be writable).
      options: an EnhanceOptions (format, tiling, brightness, chroma filter, ...).
      output_path: explicit output file; default `output_dir/NAME_enhanced.png|jpg`.
      overwrite: replace an existing output file (never the input itself).

    Returns:
      The written path.

    Raises:
      ValueError: bad or conflicting options (`EnhanceOptions.check`).
      UnreadableImageError: the input cannot be decoded (nothing is written).
      files.OutputExistsError: the output exists and `overwrite` is False.
      files.OutputIsInputError: the output path is the input.
    """
    options.check(model)
    output_path = output_path or _output_path(output_dir, path, options.fmt, set())
    files.OutputGuard(inputs=[path], overwrite=overwrite).claim(output_path)
    _enhance_one(model, path, output_path, options)
    return output_path


@dataclasses.dataclass
class EnhanceSummary:
    """What `enhance_paths` did: written (input, output) pairs and skipped (input, reason);
    `stats[i]` is `metrics.no_reference_stats(..., peak=1.0)` of `written[i]`'s output."""
    written: list
    skipped: list
    seconds: float
    megapixels: float
    stats: list = dataclasses.field(default_factory=list)


def expand_inputs(inputs):
    """Files given explicitly plus the image and raw files inside given folders, sorted."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                candidate = os.path.join(item, name)
                if os.path.isfile(candidate) and formats.is_image_path(name):
                    found.append(candidate)
        else:
            found.append(item)
    return found


def check_inputs(inputs):
    """Raises ValueError naming the problem when the inputs hold no file to enhance.

    Every given path must exist; a folder must hold at least one image or raw file (by
    extension). Returns the files, as `expand_inputs`.
    """
    if not inputs:
        raise ValueError("No input given: name at least one image, raw file or folder.")
    missing = [item for item in inputs if not os.path.exists(item)]
    if missing:
        raise ValueError(f"Input not found: {', '.join(missing[:5])}. Check the path(s).")
    for item in inputs:
        if os.path.isdir(item) and not expand_inputs([item]):
            listed = ", ".join(sorted(formats.IMAGE_EXTENSIONS))
            raise ValueError(f"The folder {item} holds no image or raw file (by extension: "
                             f"{listed}, or a camera raw extension); folders are not searched "
                             "recursively.")
    return expand_inputs(inputs)


def _stats_text(stats):
    return f"mean {stats.mean_brightness:.3f}, clipped {100.0 * stats.clipped_fraction:.2f}%"


def enhance_paths(model, inputs, output_dir, options=EnhanceOptions(), *, overwrite=False,
                  progress=print, show_bar=False):
    """Enhances files and folders of files, skipping unreadable ones with a reason.

    Before any file is read: the options are checked (ValueError, `EnhanceOptions.check`), the
    output directory must
    be writable (OutputDirError), and every output name is planned and claimed (`plan_outputs`:
    an existing file this run did not create is refused unless `overwrite`, an input always).
    Then every decode failure (corrupt, truncated, over the pixel limit, unsupported) is a
    per-file skip with its reason and the batch goes on.

    Args:
      model: a U-Net (see `enhance_file`).
      inputs: file and folder paths (folders: their image and raw files, not recursive).
      output_dir: created if missing.
      options: an EnhanceOptions.
      overwrite: replace existing output files (never an input).
      progress: callable taking one line of text per file (print by default; None: silence).
        Each written file's line gives its size, mean brightness and clipped fraction.
      show_bar: also show a `lowlight_tf.progress` bar (rate, ETA) on stderr.

    Returns:
      EnhanceSummary.
    """
    options.check(model)
    check_output_dir(output_dir)
    progress = progress or (lambda line: None)
    paths = expand_inputs(inputs)
    guard = files.OutputGuard(inputs=paths, overwrite=overwrite)
    outputs = plan_outputs(paths, output_dir, options.fmt, guard)
    written, skipped, stats_list = [], [], []
    megapixels, started = 0.0, time.time()
    reporter = progress_lib.bar(total=len(paths), desc="Enhancing", unit="files",
                                enabled=show_bar)
    try:
        for index, (path, output_path) in enumerate(zip(paths, outputs), 1):
            begin = time.time()
            reporter.set_postfix_str(os.path.basename(path))
            try:
                if not overwrite and os.path.lexists(output_path):
                    raise UnreadableImageError(  # appeared after the plan: not ours to replace
                        f"{output_path} appeared during the run; not replaced (pass "
                        "--overwrite to replace it)")
                (width, height), stats = _enhance_one(model, path, output_path, options)
            except UnreadableImageError as e:
                skipped.append((path, str(e)))
                progress(f"[{index}/{len(paths)}] skipped {path}: {e}")
                continue
            finally:
                reporter.update(1)
            written.append((path, output_path))
            stats_list.append(stats)
            megapixels += width * height / 1e6
            progress(f"[{index}/{len(paths)}] {path} -> {output_path} ({width}x{height}, "
                     f"{_stats_text(stats)}, {time.time() - begin:.1f} s)")
    finally:
        reporter.close()
    return EnhanceSummary(written, skipped, time.time() - started, megapixels, stats_list)


def format_summary(summary, output_dir):
    """One-screen text summary of an EnhanceSummary."""
    lines = [f"Enhanced {len(summary.written)} file(s), {summary.megapixels:.1f} MPix in "
             f"{summary.seconds:.1f} s"
             + (f" ({summary.megapixels / summary.seconds:.2f} MPix/s)"
                if summary.seconds > 0 and summary.megapixels else "")
             + f"; output in {output_dir}"]
    if summary.stats:
        means = [stats.mean_brightness for stats in summary.stats]
        worst = max(range(len(summary.stats)), key=lambda i: summary.stats[i].clipped_fraction)
        clipped = summary.stats[worst].clipped_fraction
        lines.append(f"Output mean brightness {min(means):.3f}-{max(means):.3f} of full scale; "
                     f"most clipped highlights {100.0 * clipped:.2f}% "
                     f"of pixels ({os.path.basename(summary.written[worst][1])})")
    if summary.skipped:
        lines.append(f"Skipped {len(summary.skipped)} file(s):")
        for path, reason in summary.skipped[:20]:
            lines.append(f"  {path}: {reason}")
        if len(summary.skipped) > 20:
            lines.append(f"  ... and {len(summary.skipped) - 20} more")
    return "\n".join(lines)
