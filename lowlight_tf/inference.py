"""Full-image and tiled inference and enhancement of users' photos (paper §3.2 stitching).

The paper evaluates "on all patches generated from an image and then stitch[es] them together"
(§3.2): fixed-size, non-overlapping patches. Because the U-Net is fully convolutional, we instead
run it on the whole image, padded (reflect) to the model's size multiple and cropped back. For
images too large for memory the image is cut into overlapping tiles whose predictions are blended
with a smooth window; each tile's weight is zero within a margin of its inner edges, so the blend
equals whole-image inference wherever that margin covers the receptive field, and shows no
seams elsewhere. The paper's non-overlapping stitching stays available (`stitch="paper"`) for
comparison.

`enhance_file` / `enhance_paths` apply a model to camera raw files (every LibRaw format, decoded
by `lowlight_tf.media` as data_prep decodes them) and ordinary images, with bounded memory.
"""
import dataclasses
import os
import time
import weakref

import numpy as np
import tensorflow as tf
from PIL import Image

from lowlight_tf import curves
from lowlight_tf import files
from lowlight_tf import metrics
from lowlight_tf import model as model_lib
from lowlight_tf import progress as progress_lib
from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import png

STITCH_MODES = ("blend", "paper")
OUTPUT_FORMATS = ("png", "jpg", "png16")
# Tiles are sent to the model in batches of at most this many input pixels, which bounds the
# activation memory of one call (about 0.3 GiB for the default 32-filter U-Net).
MAX_BATCH_PIXELS = 1 << 20
# Default tile side for enhancing photos: with 1024 px tiles a 12-MP image peaks at ~1.6 GiB of
# resident memory (TensorFlow itself ~1 GiB) instead of ~4 GiB whole, and the 32 px overlap
# costs ~5 % extra compute (benchmarks/inference.py).
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 32
JPEG_QUALITY = 95

class UnreadableImageError(ValueError):
    """A file that is neither a decodable camera raw nor an ordinary image, or one larger than
    the pixel limit; `str(error)` is the reason shown in the skip list."""


class OutputDirError(ValueError):
    """An output directory that cannot be created or written to."""


# ----------------------------------------------------------------------------------------------
# The model call.

_PREDICTORS = weakref.WeakKeyDictionary()


def _predictor(model):
    """A tf.function running `model` after its exposure normalisation on [B, h, w, C] float32.

    Traced once for any size; the caller multiplies inputs by `model.exposure_gain` first.
    """
    try:
        return _PREDICTORS[model]
    except (KeyError, TypeError):
        pass
    channels = int(model.input_shape[-1])
    spec = tf.TensorSpec([None, None, None, channels], tf.float32)
    # Inputs arrive already multiplied by the whole image's exposure gain (predict_array), so
    # tiles share one gain: the layers after the model's exposure normalisation run here.
    core = model_lib.after_exposure_normalization(model)
    function = tf.function(lambda x: core(x, training=False), input_signature=[spec])
    try:
        _PREDICTORS[model] = function
    except TypeError:
        pass
    return function


def model_geometry(model):
    """Returns (input_channels, output_scale, multiple) of a U-Net.

    `output_scale` is the output side divided by the input side (1 for rgb, 2 for bayer, whose
    input is the half-resolution packed mosaic); `multiple` is what input sides must divide by.
    """
    channels = int(model.input_shape[-1])
    return channels, (2 if channels == 4 else 1), model_lib.size_multiple(model)


def _round_up(value, multiple):
    return -(-int(value) // multiple) * multiple


def _pad_to(x, height, width):
    """Pads [h, w, C] at the bottom/right to [height, width, C], reflecting the content."""
    pad_h, pad_w = height - x.shape[0], width - x.shape[1]
    if pad_h == 0 and pad_w == 0:
        return x
    # "reflect" needs at least 2 pixels; a 1-pixel side can only be repeated.
    mode = "reflect" if min(x.shape[0], x.shape[1]) > 1 else "edge"
    return np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _run_batches(predict, tiles, gain=1.0):
    """Runs same-shape model inputs [h, w, C] times `gain` in bounded batches.

    Yields [h*s, w*s, 3] float32 predictions in [0, 1].
    """
    height, width = tiles[0].shape[:2]
    batch_size = max(1, MAX_BATCH_PIXELS // (height * width))
    for begin in range(0, len(tiles), batch_size):
        batch = np.stack([np.asarray(t, np.float32) for t in tiles[begin:begin + batch_size]])
        if gain != 1.0:
            batch *= np.float32(gain)
        out = predict(tf.constant(batch)).numpy()
        for item in out:
            yield item


def _tile_starts(length, tile, stride):
    """Start offsets of tiles of side `tile` covering [0, length); the last ends at `length`."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def _balanced_tile(length, tile, overlap, multiple):
    """The smallest tile side (a multiple of `multiple`, at most `tile`) that covers `length`
    with as many tiles as `tile` needs, so the last tile does not mostly repeat its neighbour."""
    if length <= tile:
        return length
    count = -(-(length - overlap) // (tile - overlap))
    return min(tile, _round_up(-(-(length + (count - 1) * overlap) // count), multiple))


def _ramp(distance, margin, ramp):
    """Raised-cosine weight: 0 for distance < margin, rising smoothly to 1 at margin + ramp."""
    t = np.clip((distance - margin) / ramp, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _window_1d(start, tile, length, overlap, scale):
    """Blending weights, float32 [tile * scale], of one tile along one axis of `length` input px.

    Zero within overlap / 4 of an inner edge, a raised cosine over the next overlap / 2, one in
    the middle; sides on the image border keep weight one. With two tiles overlapping by exactly
    `overlap`, their weights sum to one.
    """
    position = (np.arange(tile * scale, dtype=np.float64) + 0.5) / scale
    weight = np.ones_like(position)
    if overlap <= 0:
        return weight.astype(np.float32)
    margin, ramp = overlap / 4.0, overlap / 2.0
    if start > 0:
        weight *= _ramp(position, margin, ramp)
    if start + tile < length:
        weight *= _ramp(tile - position, margin, ramp)
    return weight.astype(np.float32)


def predict_array(model, x, *, tile=None, overlap=DEFAULT_OVERLAP, stitch="blend",
                  exposure_gain=None):
    """Runs the model on one model-range input of any size.

    Args:
      model: a U-Net from `lowlight_tf.model` (rgb or bayer input).
      x: the model input, [h, w, C] (C = 3 for rgb, 4 for the packed bayer mosaic), float32 in
        [0, 1] (any dtype convertible to float32; converted tile by tile).
      tile: None for whole-image inference; else the tile side in *input* pixels, rounded up to
        the model's size multiple. With stitch="paper" it is the patch size (default 64 px, the
        paper's patch).
      overlap: overlap between neighbouring tiles in input pixels (rounded up to the size
        multiple), at most tile / 2; ignored for whole-image inference and paper stitching.
      stitch: "blend" (overlapping tiles, smooth window) or "paper" (non-overlapping patches).
      exposure_gain: for a model with exposure normalisation, the gain of the whole image
        (`model.exposure_gain`); None computes it from `x`. Every tile uses this one gain, so
        tiled and whole-image inference agree.

    Returns:
      float32 [h * s, w * s, 3], the prediction clipped to [0, 1]; s = 2 for bayer, else 1.
    """
    if stitch not in STITCH_MODES:
        raise ValueError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}.")
    channels, out_scale, multiple = model_geometry(model)
    if x.ndim != 3 or x.shape[-1] != channels:
        kind = "a packed bayer mosaic [H/2, W/2, 4]" if channels == 4 else "an RGB image [H, W, 3]"
        raise ValueError(f"This model expects {kind}; got an input of shape {x.shape}. A bayer "
                         "model needs camera raw input and an rgb model needs RGB images.")
    height, width = x.shape[:2]
    predict = _predictor(model)
    gain = model_lib.exposure_gain(model, x) if exposure_gain is None else float(exposure_gain)
    if stitch == "paper":
        patch = _round_up(tile or 64, multiple)
        padded = _pad_to(x, _round_up(height, patch), _round_up(width, patch))
        rows, cols = padded.shape[0] // patch, padded.shape[1] // patch
        tiles = [padded[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
                 for r in range(rows) for c in range(cols)]
        out = np.empty((rows * patch * out_scale, cols * patch * out_scale, 3), np.float32)
        side = patch * out_scale
        for index, prediction in enumerate(_run_batches(predict, tiles, gain)):
            r, c = divmod(index, cols)
            out[r * side:(r + 1) * side, c * side:(c + 1) * side] = prediction
        return np.clip(out[:height * out_scale, :width * out_scale], 0.0, 1.0)

    padded_h, padded_w = _round_up(height, multiple), _round_up(width, multiple)
    padded = _pad_to(x, padded_h, padded_w)
    if tile is None or (tile >= padded_h and tile >= padded_w):
        out = next(_run_batches(predict, [padded], gain))
        return np.clip(out[:height * out_scale, :width * out_scale], 0.0, 1.0)

    tile = _round_up(tile, multiple)
    overlap = _round_up(max(int(overlap), 0), multiple) if overlap else 0
    if overlap > tile // 2:
        raise ValueError(f"overlap ({overlap} px after rounding to the model's multiple "
                         f"{multiple}) must be at most half the tile ({tile} px); use a larger "
                         "tile or a smaller overlap.")
    tile_h = _balanced_tile(padded_h, tile, overlap, multiple)
    tile_w = _balanced_tile(padded_w, tile, overlap, multiple)
    starts_y = _tile_starts(padded_h, tile_h, tile_h - overlap)
    starts_x = _tile_starts(padded_w, tile_w, tile_w - overlap)
    # The windows are separable and the tiles form a grid, so the sum of all weights is the
    # outer product of the 1-D sums: no full-size weight image is needed.
    windows_y = [_window_1d(s, tile_h, padded_h, overlap, out_scale) for s in starts_y]
    windows_x = [_window_1d(s, tile_w, padded_w, overlap, out_scale) for s in starts_x]
    sum_y = np.zeros(padded_h * out_scale, np.float32)
    sum_x = np.zeros(padded_w * out_scale, np.float32)
    for s, w in zip(starts_y, windows_y):
        sum_y[s * out_scale:(s + tile_h) * out_scale] += w
    for s, w in zip(starts_x, windows_x):
        sum_x[s * out_scale:(s + tile_w) * out_scale] += w
    # Only the cropped output region is accumulated.
    out_h, out_w = height * out_scale, width * out_scale
    out = np.zeros((out_h, out_w, 3), np.float32)
    grid = [(iy, ix) for iy in range(len(starts_y)) for ix in range(len(starts_x))]
    batch_size = max(1, MAX_BATCH_PIXELS // (tile_h * tile_w))
    for begin in range(0, len(grid), batch_size):
        chunk = grid[begin:begin + batch_size]
        tiles = [padded[starts_y[iy]:starts_y[iy] + tile_h, starts_x[ix]:starts_x[ix] + tile_w]
                 for iy, ix in chunk]
        for (iy, ix), prediction in zip(chunk, _run_batches(predict, tiles, gain)):
            y0, x0 = starts_y[iy] * out_scale, starts_x[ix] * out_scale
            y1, x1 = min(y0 + tile_h * out_scale, out_h), min(x0 + tile_w * out_scale, out_w)
            if y1 <= y0 or x1 <= x0:
                continue
            weight = np.outer(windows_y[iy][:y1 - y0], windows_x[ix][:x1 - x0])
            out[y0:y1, x0:x1] += prediction[:y1 - y0, :x1 - x0] * weight[..., None]
    # Normalise by the summed weights in row bands (no full-size temporary).
    sum_y, sum_x = sum_y[:out_h], sum_x[:out_w]
    for begin in range(0, out_h, 256):
        band = out[begin:begin + 256]
        band /= np.outer(sum_y[begin:begin + 256], sum_x)[..., None]
        np.clip(band, 0.0, 1.0, out=band)
    return out


def predict_image(model, image, *, tile=None, overlap=DEFAULT_OVERLAP, stitch="blend"):
    """Enhances one RGB image of any size with an rgb U-Net.

    Args:
      model: an rgb U-Net (`build_unet(input_mode="rgb")` or `load_model`).
      image: float32 [H, W, 3] in [0, 255], the dark image.
      tile, overlap, stitch: see `predict_array` (sizes in pixels of `image`).

    Returns:
      float32 [H, W, 3] in [0, 255], the enhanced image (not quantised).
    """
    image = np.asarray(image, np.float32)
    if image.size and (image.min() < 0.0 or image.max() > 255.0):
        raise ValueError(f"predict_image expects [0, 255] values, got [{image.min()}, "
                         f"{image.max()}].")
    out = predict_array(model, image / 255.0, tile=tile, overlap=overlap, stitch=stitch)
    out *= 255.0
    return out


# ----------------------------------------------------------------------------------------------
# Reading users' files.

@dataclasses.dataclass
class DecodedInput:
    """One decoded input file.

    `model_input` is what the model consumes ([H, W, 3] RGB or [H/2, W/2, 4] packed bayer), in
    [0, 1] as float32, or uint8/uint16 with `scale` the divisor to [0, 1] (kept integer to bound
    memory; converted tile by tile).
    """
    model_input: np.ndarray
    scale: float
    is_raw: bool
    description: str


def _srgb_to_linear(x):
    """Inverse sRGB transfer curve (IEC 61966-2-1) on [0, 1] values."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    """sRGB transfer curve (IEC 61966-2-1) on [0, 1] values."""
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def _bt709_to_linear(x):
    """Inverse of LibRaw's default output curve (BT.709: power 1/2.222, toe slope 4.5)."""
    return np.where(x < 0.081, x / 4.5, ((x + 0.099) / 1.099) ** (1.0 / 0.45))


def _linear_to_bt709(x):
    """LibRaw's default output curve (rawpy postprocess gamma=(2.222, 4.5))."""
    return np.where(x < 0.018, x * 4.5, 1.099 * np.power(x, 0.45) - 0.099)


def amplify(image, ratio, *, curve="srgb"):
    """Multiplies the *linear* light of a gamma-encoded image by `ratio`, clipping at white.

    SID amplifies the linear sensor signal by the exposure ratio before the network; for
    rendered images we undo the output curve, amplify, clip and re-apply it, row band by row
    band so a 24-MP frame needs no full-size float64 copy.

    Args:
      image: uint8 or uint16 [H, W, 3] (gamma-encoded).
      ratio: positive float.
      curve: "srgb" for ordinary images, "bt709" for LibRaw renders.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    to_linear, from_linear = ((_srgb_to_linear, _linear_to_srgb) if curve == "srgb"
                              else (_bt709_to_linear, _linear_to_bt709))
    scale = float(np.iinfo(image.dtype).max)
    out = np.empty(image.shape, np.float32)
    for begin in range(0, image.shape[0], 256):
        band = image[begin:begin + 256].astype(np.float64) / scale
        out[begin:begin + 256] = from_linear(np.minimum(to_linear(band) * ratio, 1.0))
    return out


def decode_input(path, *, input_channels=3, ratio=None, max_pixels=files.DEFAULT_MAX_PIXELS):
    """Decodes a user's file into what the model consumes.

    Raw files are rendered by `media.decode` (camera white balance, 16-bit sRGB; the decoder
    tools/make_tfrecords uses) with LibRaw's auto-brightening off, so a dark frame reaches the
    model dark, as in training; a bayer model gets the packed mosaic (`decode.pack_bayer`).

    Args:
      path: a camera raw file (any LibRaw format) or an ordinary image (PNG, JPEG, TIFF, BMP).
      input_channels: 3 for an rgb model, 4 for a bayer model (raw files only).
      ratio: exposure ratio (> 0) applied to the linear signal before the model, as in SID;
        None leaves the input as it is.
      max_pixels: largest width x height accepted, checked on the header before any pixel is
        decoded (`media.decode`'s limit, shared by every tool); None or 0 for no limit.

    Returns:
      DecodedInput.

    Raises:
      UnreadableImageError: the file cannot be decoded, is over the pixel limit, or a bayer
        model got a non-raw image. No other exception escapes for a bad file.
    """
    if not os.path.isfile(path):
        raise UnreadableImageError("no such file")
    is_raw = formats.is_raw_path(path)
    if input_channels == 4:
        if not is_raw:
            raise UnreadableImageError("this bayer model needs camera raw files; this is not "
                                       "one (use an rgb model for ordinary images)")
        try:
            packed = decode.pack_bayer(path, max_pixels=max_pixels)
        except decode.DecodeError as e:
            raise UnreadableImageError(str(e)) from None
        if ratio:
            packed *= np.float32(ratio)
            np.clip(packed, 0.0, 1.0, out=packed)
        return DecodedInput(packed, 1.0, True, f"raw {packed.shape[1] * 2}x"
                            f"{packed.shape[0] * 2} packed bayer")
    try:
        array, _ = decode.decode_any(path, no_auto_bright=True, max_pixels=max_pixels)
    except decode.DecodeError as e:
        hint = ("; raise --max_pixels if the file is genuine"
                if getattr(e, "reason", "") == "too_large" and "--max_pixels" not in str(e)
                else "")
        raise UnreadableImageError(f"{e}{hint}") from e
    except MemoryError:
        raise UnreadableImageError("not enough memory to decode this image; lower --max_pixels "
                                   "or free memory") from None
    kind = "raw" if is_raw else ("16-bit" if array.dtype == np.uint16 else "8-bit")
    description = f"{array.shape[1]}x{array.shape[0]} {kind}"
    if ratio:
        array = amplify(array, ratio, curve="bt709" if is_raw else "srgb")
        return DecodedInput(array, 1.0, is_raw, description + f", x{ratio:g}")
    return DecodedInput(array, float(np.iinfo(array.dtype).max), is_raw, description)


class _ScaledArray:
    """Read-only view of an integer image as float32 / scale, converted per slice (low memory)."""

    def __init__(self, array, scale):
        self.array, self.scale = array, np.float32(scale)
        self.shape, self.ndim = array.shape, array.ndim

    def __getitem__(self, index):
        return self.array[index].astype(np.float32) / self.scale


def _predict_decoded(model, decoded, tile, overlap):
    """Runs the model on a DecodedInput; returns float32 [H * s, W * s, 3] in [0, 1]."""
    x = decoded.model_input
    _, out_scale, multiple = model_geometry(model)
    if tile is not None:  # image pixels -> model-input pixels (the packed mosaic is half size)
        tile, overlap = max(1, tile // out_scale), overlap // out_scale
    if decoded.scale == 1.0:
        return predict_array(model, x, tile=tile, overlap=overlap)
    height, width = x.shape[:2]
    if tile is None or (height <= tile and width <= tile):
        return predict_array(model, x.astype(np.float32) / np.float32(decoded.scale))
    # Tiled: pad the integer image (half the bytes of float32) and convert tiles as they are cut.
    gain = model_lib.exposure_gain(model, _ScaledArray(x, decoded.scale))
    padded = _pad_to(x, _round_up(height, multiple), _round_up(width, multiple))
    out = predict_array(model, _ScaledArray(padded, decoded.scale), tile=tile, overlap=overlap,
                        exposure_gain=gain)
    return out[:height * out_scale, :width * out_scale]


# ----------------------------------------------------------------------------------------------
# Calibrated exposure (beyond the paper).

def expected_brightness(dark, exposure_curve):
    """Mean over pixels and channels of the camera's expected bright value for `dark`.

    `curves.expected_brightness`: dark float [H, W, 3] in [0, 1], exposure_curve float
    [3, 256] in [0, 255]; returns a float in [0, 1].
    """
    return curves.expected_brightness(dark, exposure_curve)


def anchor_exposure(prediction, dark, exposure_curve, out=None):
    """Scale a prediction so its mean brightness is the calibrated camera's expectation.

    A single dark sRGB image does not tell its exposure: a network trained on simulated pairs
    whose exposure varies pulls every output towards its training photos' typical brightness
    (RESULTS.md, issue 6). The calibration pairs do tell how bright this camera's scenes come
    out for a given dark value; this keeps the network's structure and colour and takes the
    global brightness from them (one gain for all channels).

    Args:
      prediction: float32 [H, W, 3] in [0, 1], the model output for `dark`.
      dark: float [H, W, 3] in [0, 1], the model input.
      exposure_curve: float [3, 256], see `expected_brightness`.
      out: None, or a float32 array of the prediction's shape to write into (may be
        `prediction` itself: no full-size copy for a large photo).
    Returns:
      float32 [H, W, 3] in [0, 1] (`out` when given).
    """
    current = float(np.mean(prediction, dtype=np.float64))
    gain = expected_brightness(dark, exposure_curve) / current if current > 0.0 else 1.0
    result = np.multiply(prediction, np.float32(gain), out=out, dtype=np.float32)
    return np.clip(result, 0.0, 1.0, out=result)


# ----------------------------------------------------------------------------------------------
# The user's brightness control and no-reference checks of an output (beyond the paper).

BRIGHTNESS_AUTO = "auto"
# "auto" never lifts the mean of an input at least this bright (of full scale) ...
WELL_EXPOSED_MEAN = 0.25
# ... by more than this factor: a photo that is already well exposed stays about as it is.
AUTO_MAX_GAIN = 1.15


@dataclasses.dataclass(frozen=True)
class Brightness:
    """A parsed `--brightness`: kind "auto", "mean" (value: target mean in (0, 1)) or "ev"
    (value: exposure change in stops, linear light)."""
    kind: str = BRIGHTNESS_AUTO
    value: float = 0.0

    def __str__(self):
        if self.kind == "mean":
            return f"{self.value:g}"
        if self.kind == "ev":
            return f"{self.value:+g}ev"
        return BRIGHTNESS_AUTO


def parse_brightness(text):
    """Parses a brightness setting: "auto", a mean level in (0, 1) such as "0.4", or an exposure
    change in EV such as "+1ev", "-0.5EV".

    Returns:
      Brightness. A Brightness is returned as it is.
    Raises:
      ValueError: with the accepted forms, for anything else.
    """
    if isinstance(text, Brightness):
        return text
    raw = str(text).strip().lower()
    usage = ("use 'auto' (keep the network's brightness), a mean level between 0 and 1 such as "
             "'0.4', or an exposure change in EV such as '+1ev' or '-0.5ev'")
    if raw in ("", BRIGHTNESS_AUTO):
        return Brightness()
    try:
        if raw.endswith("ev"):
            value = float(raw[:-2])
            if not np.isfinite(value) or abs(value) > 16:
                raise ValueError
            return Brightness("ev", value)
        value = float(raw)
    except ValueError:
        raise ValueError(f"Invalid brightness {text!r}: {usage} (EV within +-16).") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"Invalid brightness {text!r}: a mean level must lie strictly between 0 "
                         f"and 1 (fraction of full scale); {usage}.")
    return Brightness("mean", value)


def image_mean(image):
    """Mean over pixels and channels of float [H, W, C] in [0, 1] (or a `_ScaledArray`), in row
    bands (no full-size temporary); 0.0 for an empty image."""
    total, count = 0.0, 0
    for begin in range(0, image.shape[0], 256):
        band = np.asarray(image[begin:begin + 256], np.float32)
        total += float(np.sum(band, dtype=np.float64))
        count += band.size
    return total / count if count else 0.0


def _input_brightness(dark):
    """Display mean of a model input in [0, 1]: sRGB images as they are; a packed bayer mosaic
    [h, w, 4] is linear, so its values are sRGB-encoded first (roughly what it looks like)."""
    if dark.shape[-1] != 4:
        return image_mean(dark)
    total, count = 0.0, 0
    for begin in range(0, dark.shape[0], 256):
        band = np.clip(np.asarray(dark[begin:begin + 256], np.float64), 0.0, 1.0)
        total += float(np.sum(_linear_to_srgb(band)))
        count += band.size
    return total / count if count else 0.0


def _gain_for_mean(prediction, target, bins=4096):
    """The gain g with mean(clip(g * prediction, 0, 1)) = target (as close as clipping allows).

    One pass collects the count and the sum of the values in each of `bins` bins; the clipped
    mean of a gain is then sum_b min(g * sum_b, count_b), exact except in the one bin that
    straddles the clipping point 1 / g. Bisection on that.
    """
    counts = np.zeros(bins, np.float64)
    sums = np.zeros(bins, np.float64)
    for begin in range(0, prediction.shape[0], 256):
        band = np.clip(np.asarray(prediction[begin:begin + 256], np.float64).ravel(), 0.0, 1.0)
        index = np.minimum((band * bins).astype(np.int64), bins - 1)
        counts += np.bincount(index, minlength=bins)
        sums += np.bincount(index, weights=band, minlength=bins)
    total = counts.sum()
    if total == 0 or sums.sum() <= 0.0:
        return 1.0  # an all-black output cannot be brightened by a gain

    def clipped_mean(gain):
        return float(np.minimum(sums * gain, counts).sum()) / total

    low, high = 0.0, target * total / sums.sum()  # the gain without clipping
    while clipped_mean(high) < target and high < 1e6:  # clipping needs more gain
        low, high = high, high * 2.0
    for _ in range(50):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if clipped_mean(middle) < target else (low, middle)
    return 0.5 * (low + high)


def apply_brightness(prediction, dark, brightness=BRIGHTNESS_AUTO, out=None):
    """Sets the brightness of a model output as the user asked (one gain for every pixel and
    channel, clipped to [0, 1]).

    - "auto": the network's output as it is, except that an input already well exposed (mean
      >= WELL_EXPOSED_MEAN of full scale) is never brightened by more than AUTO_MAX_GAIN in mean:
      the output is scaled down until mean(output) <= 1.15 * mean(input).
    - a mean level m in (0, 1): the gain that makes the clipped output's mean m (below m only if
      even white everywhere cannot reach it).
    - an exposure change of E stops ("+1ev"): the output's linear light (inverse sRGB curve) is
      multiplied by 2**E, clipped at white and re-encoded, as a camera exposure change would;
      sRGB values of mid-tones rise by about 2**(E / 2.2).

    Args:
      prediction: float32 [H, W, 3] in [0, 1], the model output for `dark`.
      dark: the model input: float [H, W, 3] in [0, 1] (or a `_ScaledArray`), or a packed bayer
        mosaic [H/2, W/2, 4] in [0, 1] (linear); only its mean is used, by "auto".
      brightness: "auto", a mean level, an EV text (see `parse_brightness`) or a Brightness.
      out: None, or a float32 array of the prediction's shape to write into (may be
        `prediction` itself).
    Returns:
      float32 [H, W, 3] in [0, 1] (`out` when given).
    Raises:
      ValueError: an invalid brightness setting.
    """
    setting = parse_brightness(brightness)
    if out is None:
        out = np.empty(prediction.shape, np.float32)
    if setting.kind == "ev":
        ratio = 2.0 ** setting.value
        for begin in range(0, prediction.shape[0], 256):
            band = np.clip(np.asarray(prediction[begin:begin + 256], np.float64), 0.0, 1.0)
            out[begin:begin + 256] = _linear_to_srgb(np.minimum(_srgb_to_linear(band) * ratio,
                                                                1.0))
        return out
    gain = 1.0
    if setting.kind == "mean":
        gain = _gain_for_mean(prediction, setting.value)
    else:
        input_mean = _input_brightness(dark)
        output_mean = image_mean(prediction)
        if input_mean >= WELL_EXPOSED_MEAN and output_mean > AUTO_MAX_GAIN * input_mean:
            gain = AUTO_MAX_GAIN * input_mean / output_mean
    result = np.multiply(prediction, np.float32(gain), out=out, dtype=np.float32)
    return np.clip(result, 0.0, 1.0, out=result)


def no_reference_stats(image):
    """Two no-reference numbers that show a blow-out: mean brightness and clipped highlights.

    Args:
      image: float [H, W, 3] in [0, 1] (an output before quantisation).
    Returns:
      dict: `mean` (float in [0, 1], over pixels and channels) and `clipped` (float in [0, 1],
      the fraction of pixels with any channel >= 254 after rounding to 8 bits).
    """
    clipped, pixels = 0, 0
    threshold = (metrics.CLIPPED_LEVEL - 0.5) / 255.0  # rounds to >= 254 in 8 bits
    for begin in range(0, image.shape[0], 256):
        band = np.asarray(image[begin:begin + 256], np.float32)
        clipped += int(np.count_nonzero(np.any(band >= threshold, axis=-1)))
        pixels += band.shape[0] * band.shape[1]
    return {"mean": image_mean(image), "clipped": clipped / pixels if pixels else 0.0}


# ----------------------------------------------------------------------------------------------
# Writing.

def write_image(path, image, fmt):
    """Writes float32 [H, W, 3] in [0, 1] as `fmt` ("png", "jpg" 8-bit; "png16" 16-bit),
    atomically: `path` holds the complete image or is left as it was."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {fmt!r}.")
    peak, dtype = (65535.0, np.uint16) if fmt == "png16" else (255.0, np.uint8)
    # Quantise in row bands: no full-size float temporary for a 24-MP frame.
    pixels = np.empty(image.shape, dtype)
    for begin in range(0, image.shape[0], 256):
        band = np.clip(image[begin:begin + 256], 0.0, 1.0) * peak
        pixels[begin:begin + 256] = np.round(band)
    if fmt == "png16":
        png.write_png(path, pixels)
        return
    with files.atomic_path(path) as temporary:
        if fmt == "jpg":
            Image.fromarray(pixels).save(temporary, format="JPEG", quality=JPEG_QUALITY)
        else:
            Image.fromarray(pixels).save(temporary, format="PNG")


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


def _enhance_one(model, path, output_path, *, ratio, fmt, tile, overlap, exposure_curve=None,
                 brightness=BRIGHTNESS_AUTO, max_pixels=files.DEFAULT_MAX_PIXELS):
    """Decodes, predicts and writes one file; returns ((width, height), no_reference_stats)."""
    channels, _, _ = model_geometry(model)
    decoded = decode_input(path, input_channels=channels, ratio=ratio, max_pixels=max_pixels)
    if exposure_curve is not None and (decoded.is_raw or ratio):
        raise UnreadableImageError("a calibrated exposure applies to the calibrated camera's "
                                   "own dark images as they are, not to raw files or --ratio "
                                   "amplified ones; enhance it without the exposure preset")
    prediction = _predict_decoded(model, decoded, tile, overlap)
    x = decoded.model_input
    dark = x if decoded.scale == 1.0 else _ScaledArray(x, decoded.scale)
    if exposure_curve is not None:
        prediction = anchor_exposure(prediction, dark, exposure_curve, out=prediction)
    prediction = apply_brightness(prediction, dark, brightness, out=prediction)
    del decoded, x, dark
    write_image(output_path, prediction, fmt)
    return (prediction.shape[1], prediction.shape[0]), no_reference_stats(prediction)


def _check_options(ratio, fmt, exposure_curve=None, model=None, brightness=BRIGHTNESS_AUTO,
                   max_pixels=files.DEFAULT_MAX_PIXELS):
    """Validates enhance options; returns the parsed Brightness. Raises ValueError."""
    setting = parse_brightness(brightness)
    if exposure_curve is not None:
        if np.shape(exposure_curve) != (3, 256):
            raise ValueError(f"exposure_curve must be [3, 256], got {np.shape(exposure_curve)}.")
        if model is not None and model_geometry(model)[0] != 3:
            raise ValueError("A calibrated exposure needs an rgb model (a bayer model takes raw "
                             "files, which the exposure curve does not describe).")
        if setting.kind != BRIGHTNESS_AUTO:
            raise ValueError(f"Both a calibrated exposure and --brightness={setting} set the "
                             "output's brightness; give only one of them.")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {fmt!r}.")
    if ratio is not None and not ratio > 0:
        raise ValueError(f"ratio must be positive, got {ratio}.")
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be positive (0 or None: no limit), got {max_pixels}.")
    return setting


def enhance_file(model, path, output_dir, *, ratio=None, fmt="png", tile=DEFAULT_TILE,
                 overlap=DEFAULT_OVERLAP, output_path=None, exposure_curve=None,
                 brightness=BRIGHTNESS_AUTO, overwrite=False,
                 max_pixels=files.DEFAULT_MAX_PIXELS):
    """Enhances one raw or ordinary image file and writes the result (atomically).

    Args:
      model: a U-Net (rgb: raw files are rendered to sRGB first; bayer: raw files only).
      path: the input file.
      output_dir: where the result goes (must exist and be writable).
      ratio: exposure ratio applied to the linear signal before the model (SID's
        amplification), None for none.
      fmt: "png" (8-bit), "jpg" (8-bit, quality 95) or "png16" (16-bit PNG).
      tile, overlap: tiled inference (image pixels) bounding memory for any image size; None
        runs the whole image at once.
      output_path: explicit output file; default `output_dir/NAME_enhanced.png|jpg`.
      exposure_curve: None, or float [3, 256] (`SimulationPreset.exposure_curve` of the camera
        that took the photo): set the output's brightness with it (`anchor_exposure`). Ordinary
        images of that camera only, without `ratio`.
      brightness: "auto", a mean level in (0, 1) or an EV change (`apply_brightness`).
      overwrite: replace an existing output file (never the input itself).
      max_pixels: pixel limit checked on the header before decoding (None/0: none).

    Returns:
      The written path.

    Raises:
      UnreadableImageError: the input cannot be decoded (nothing is written).
      files.OutputExistsError: the output exists and `overwrite` is False.
      files.OutputIsInputError: the output path is the input.
    """
    _check_options(ratio, fmt, exposure_curve, model, brightness, max_pixels)
    output_path = output_path or _output_path(output_dir, path, fmt, set())
    files.OutputGuard(inputs=[path], overwrite=overwrite).claim(output_path)
    _enhance_one(model, path, output_path, ratio=ratio, fmt=fmt, tile=tile, overlap=overlap,
                 exposure_curve=exposure_curve, brightness=brightness, max_pixels=max_pixels)
    return output_path


@dataclasses.dataclass
class EnhanceSummary:
    """What `enhance_paths` did: written (input, output) pairs and skipped (input, reason);
    `stats[i]` is `no_reference_stats` of `written[i]`'s output."""
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
    return f"mean {stats['mean']:.3f}, clipped {100.0 * stats['clipped']:.2f}%"


def enhance_paths(model, inputs, output_dir, *, ratio=None, fmt="png", tile=DEFAULT_TILE,
                  overlap=DEFAULT_OVERLAP, exposure_curve=None, brightness=BRIGHTNESS_AUTO,
                  overwrite=False, max_pixels=files.DEFAULT_MAX_PIXELS, progress=print,
                  show_bar=False):
    """Enhances files and folders of files, skipping unreadable ones with a reason.

    Before any file is read: the options are checked (ValueError), the output directory must
    be writable (OutputDirError), and every output name is planned and claimed (`plan_outputs`:
    an existing file this run did not create is refused unless `overwrite`, an input always).
    Then every decode failure (corrupt, truncated, over the pixel limit, unsupported) is a
    per-file skip with its reason and the batch goes on.

    Args:
      model: a U-Net (see `enhance_file`).
      inputs: file and folder paths (folders: their image and raw files, not recursive).
      output_dir: created if missing.
      ratio, fmt, tile, overlap, exposure_curve, brightness, overwrite, max_pixels: see
        `enhance_file`.
      progress: callable taking one line of text per file (print by default; None: silence).
        Each written file's line gives its size, mean brightness and clipped fraction.
      show_bar: also show a `lowlight_tf.progress` bar (rate, ETA) on stderr.

    Returns:
      EnhanceSummary.
    """
    _check_options(ratio, fmt, exposure_curve, model, brightness, max_pixels)
    check_output_dir(output_dir)
    progress = progress or (lambda line: None)
    paths = expand_inputs(inputs)
    guard = files.OutputGuard(inputs=paths, overwrite=overwrite)
    outputs = plan_outputs(paths, output_dir, fmt, guard)
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
                (width, height), stats = _enhance_one(
                    model, path, output_path, ratio=ratio, fmt=fmt, tile=tile, overlap=overlap,
                    exposure_curve=exposure_curve, brightness=brightness, max_pixels=max_pixels)
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
        means = [stats["mean"] for stats in summary.stats]
        worst = max(range(len(summary.stats)), key=lambda i: summary.stats[i]["clipped"])
        lines.append(f"Output mean brightness {min(means):.3f}-{max(means):.3f} of full scale; "
                     f"most clipped highlights {100.0 * summary.stats[worst]['clipped']:.2f}% "
                     f"of pixels ({os.path.basename(summary.written[worst][1])})")
    if summary.skipped:
        lines.append(f"Skipped {len(summary.skipped)} file(s):")
        for path, reason in summary.skipped[:20]:
            lines.append(f"  {path}: {reason}")
        if len(summary.skipped) > 20:
            lines.append(f"  ... and {len(summary.skipped) - 20} more")
    return "\n".join(lines)
