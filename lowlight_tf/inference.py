"""Full-image and tiled inference and enhancement of users' photos (paper §3.2 stitching).

The paper evaluates "on all patches generated from an image and then stitch[es] them together"
(§3.2): fixed-size, non-overlapping patches. Because the U-Net is fully convolutional, we instead
run it on the whole image, padded (reflect) to the model's size multiple and cropped back. For
images too large for memory the image is cut into overlapping tiles whose predictions are blended
with a smooth window; each tile's weight is zero within a margin of its inner edges, so the blend
equals whole-image inference wherever that margin covers the receptive field, and shows no
seams elsewhere. The paper's non-overlapping stitching stays available (`stitch="paper"`) for
comparison.
With `shift_ensemble` (tools/enhance's default) the prediction is the mean over the image
shifted by one pixel down, right and both, which cancels the 2-pixel texture that the U-Net's
per-phase weights (space-to-depth in, depth-to-space out) leave on smooth surfaces.

`enhance_file` / `enhance_paths` apply a model to camera raw files (every LibRaw format, decoded
by `lowlight_tf.media` as data_prep decodes them) and ordinary images, with bounded memory.
"""
import dataclasses
import os
import weakref

import numpy as np
import tensorflow as tf

from lowlight_tf import curves
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import files
from lowlight_tf import model as model_lib
from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import header as header_lib

STITCH_MODES = ("blend", "paper")
# Tiles are sent to the model in batches of at most this many input pixels, which bounds the
# activation memory of one call (about 0.3 GiB for the default 32-filter U-Net).
MAX_BATCH_PIXELS = 1 << 20
# Default tile side for enhancing photos: with 1024 px tiles a 12-MP image peaks at ~1.6 GiB of
# resident memory (TensorFlow itself ~1 GiB) instead of ~4 GiB whole, and the 32 px overlap
# costs ~5 % extra compute (benchmarks/inference.py).
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 32


class UnreadableImageError(ValueError):
    """A file that is neither a decodable camera raw nor an ordinary image, or one larger than
    the pixel limit; `str(error)` is the reason shown in the skip list."""


# ----------------------------------------------------------------------------------------------
# The model call.

_PREDICTORS = weakref.WeakKeyDictionary()


# The shifts (rows, columns; model-input pixels) of the shift ensemble (`predict_array`).
ENSEMBLE_SHIFTS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _predictor(model):
    """A tf.function running `model` after its exposure normalisation on [B, h, w, C] float32.

    Traced once for any size; the caller multiplies inputs by `exposure.exposure_gain` first.
    """
    try:
        return _PREDICTORS[model]
    except (KeyError, TypeError):
        pass
    channels = int(model.input_shape[-1])
    spec = tf.TensorSpec([None, None, None, channels], tf.float32)
    # Inputs arrive already multiplied by the whole image's exposure gain (predict_array), so
    # tiles share one gain: the layers after the model's exposure normalisation run here.
    core = exposure_lib.after_exposure_normalization(model)
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


def _pad_to(x, height, width, top=0, left=0):
    """Pads [h, w, C] to [height, width, C], reflecting the content: `top` rows above and `left`
    columns before it (the shift ensemble), the rest at the bottom/right. A `ScaledArray` stays
    one (its integer array is padded)."""
    if isinstance(x, ScaledArray):
        return ScaledArray(_pad_to(x.array, height, width, top, left), x.scale)
    pad_h, pad_w = height - x.shape[0] - top, width - x.shape[1] - left
    if pad_h == 0 and pad_w == 0 and top == 0 and left == 0:
        return x
    # "reflect" needs at least 2 pixels; a 1-pixel side can only be repeated.
    mode = "reflect" if min(x.shape[0], x.shape[1]) > 1 else "edge"
    return np.pad(x, ((top, pad_h), (left, pad_w), (0, 0)), mode=mode)


def _run_batches(predict, tiles, gain=1.0):
    """Runs same-shape model inputs [h, w, C] times `gain` in bounded batches.

    Yields [h*s, w*s, 3] float32 predictions in [0, 1].
    """
    height, width = tiles[0].shape[:2]
    batch_size = max(1, MAX_BATCH_PIXELS // (height * width))
    for begin in range(0, len(tiles), batch_size):
        batch = np.stack([np.asarray(t[...], np.float32)  # t[...]: a ScaledArray converts
                          for t in tiles[begin:begin + batch_size]])
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
                  exposure_gain=None, shift_ensemble=False):
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
        (`exposure.exposure_gain`); None computes it from `x`. Every tile uses this one gain, so
        tiled and whole-image inference agree.
      shift_ensemble: the mean of the model's predictions for the input shifted by each of
        ENSEMBLE_SHIFTS (reflected into the gap, cropped back; 4x the compute). The U-Net's
        space-to-depth and depth-to-space give every 2x2 pixel phase weights of its own, which
        leaves a 2-pixel periodic texture; the four shifts put each output pixel once in every
        phase and cancel it (RESULTS.md, session 17). For a bayer model a shift is one packed
        pixel (two sensor pixels, keeping the colour pattern).

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
    predict = _predictor(model)
    gain = exposure_lib.exposure_gain(model, x) if exposure_gain is None else float(exposure_gain)
    height, width = x.shape[:2]
    shifts = ENSEMBLE_SHIFTS if shift_ensemble else ((0, 0),)
    total = None
    for dy, dx in shifts:
        # The image shifted down by dy and right by dx (reflected into the gap), so each output
        # pixel falls in another 2x2 phase of the U-Net's space-to-depth and depth-to-space;
        # the padding stays what one pass needs (the network's context reaches the borders).
        size = (height + dy, width + dx)
        if stitch == "paper":
            patch = _round_up(tile or 64, multiple)
            padded = _pad_to(x, _round_up(size[0], patch), _round_up(size[1], patch), dy, dx)
            out = _predict_paper(predict, padded, gain, patch, out_scale)
        else:
            padded = _pad_to(x, _round_up(size[0], multiple), _round_up(size[1], multiple),
                             dy, dx)
            out = _predict_padded(predict, padded, gain, size, tile, overlap, multiple,
                                  out_scale)
        out = out[dy * out_scale:(dy + height) * out_scale, dx * out_scale:(dx + width) * out_scale]
        if total is None:
            total = np.array(out, np.float32)
        else:
            total += out
        del out, padded
    if len(shifts) > 1:
        total /= np.float32(len(shifts))
    return np.clip(total, 0.0, 1.0, out=total)


def _predict_padded(predict, padded, gain, size, tile, overlap, multiple, out_scale):
    """One pass over `padded` ([H, W, C], sides multiples of `multiple`): whole, or in blended
    tiles; returns float32 [size[0] * out_scale, size[1] * out_scale, 3]."""
    if tile is None or (tile >= padded.shape[0] and tile >= padded.shape[1]):
        out = next(_run_batches(predict, [padded], gain))
        return out[:size[0] * out_scale, :size[1] * out_scale]
    tile = _round_up(tile, multiple)
    overlap = _round_up(max(int(overlap), 0), multiple) if overlap else 0
    if overlap > tile // 2:
        raise ValueError(f"overlap ({overlap} px after rounding to the model's multiple "
                         f"{multiple}) must be at most half the tile ({tile} px); use a larger "
                         "tile or a smaller overlap.")
    return _predict_blended(predict, padded, gain, size, tile, overlap, multiple, out_scale)


def _predict_paper(predict, padded, gain, patch, out_scale):
    """The paper's stitching: non-overlapping `patch`-pixel patches of [H, W, C] input `padded`
    (sides multiples of `patch`); returns float32 [H * out_scale, W * out_scale, 3]."""
    rows, cols = padded.shape[0] // patch, padded.shape[1] // patch
    tiles = [padded[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
             for r in range(rows) for c in range(cols)]
    out = np.empty((rows * patch * out_scale, cols * patch * out_scale, 3), np.float32)
    side = patch * out_scale
    for index, prediction in enumerate(_run_batches(predict, tiles, gain)):
        r, c = divmod(index, cols)
        out[r * side:(r + 1) * side, c * side:(c + 1) * side] = prediction
    return out


def _predict_blended(predict, padded, gain, size, tile, overlap, multiple, out_scale):
    """Overlapping tiles of the padded input blended with separable smooth windows.

    Args:
      padded: the input padded to the model's multiple, [H, W, C]; size: the unpadded (h, w).
      tile, overlap: already rounded to `multiple`, overlap <= tile / 2.
    Returns:
      float32 [h * out_scale, w * out_scale, 3] in [0, 1].
    """
    padded_h, padded_w = padded.shape[:2]
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
    out_h, out_w = size[0] * out_scale, size[1] * out_scale
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


def predict_image(model, image, *, tile=None, overlap=DEFAULT_OVERLAP, stitch="blend",
                  shift_ensemble=False):
    """Enhances one RGB image of any size with an rgb U-Net.

    Args:
      model: an rgb U-Net (`build_unet(input_mode="rgb")` or `load_model`).
      image: float32 [H, W, 3] in [0, 255], the dark image.
      tile, overlap, stitch, shift_ensemble: see `predict_array` (sizes in pixels of `image`).

    Returns:
      float32 [H, W, 3] in [0, 255], the enhanced image (not quantised).
    """
    image = np.asarray(image, np.float32)
    if image.size and (image.min() < 0.0 or image.max() > 255.0):
        raise ValueError(f"predict_image expects [0, 255] values, got [{image.min()}, "
                         f"{image.max()}].")
    out = predict_array(model, image / 255.0, tile=tile, overlap=overlap, stitch=stitch,
                        shift_ensemble=shift_ensemble)
    out *= 255.0
    return out


# ----------------------------------------------------------------------------------------------
# Reading users' files.

@dataclasses.dataclass
class DecodedInput:
    """One decoded input file.

    `model_input` is what the model consumes ([H, W, 3] RGB or [H/2, W/2, 4] packed bayer), in
    [0, 1] as float32, or uint8/uint16 with `scale` the divisor to [0, 1] (kept integer to bound
    memory; converted tile by tile). `header` (`header_lib.HeaderFacts`) says how to show and tag
    the prediction: turned by its `orientation` (packed bayer input keeps the sensor's layout;
    ordinary images and raw renders are upright already), with the input's `icc_profile` (the
    network keeps the values' encoding) and `exif` (date, camera, GPS).
    """
    model_input: np.ndarray
    scale: float
    is_raw: bool
    description: str
    header: header_lib.HeaderFacts = header_lib.HeaderFacts(1, None, None)


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
    to_linear, from_linear = ((curves.srgb_to_linear, curves.linear_to_srgb) if curve == "srgb"
                              else (curves.bt709_to_linear, curves.linear_to_bt709))
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
                            f"{packed.shape[0] * 2} packed bayer",
                            header_lib.HeaderFacts(header_lib.raw_orientation(path), None, None))
    try:
        array, meta = decode.decode_any(path, no_auto_bright=True, max_pixels=max_pixels)
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
    # Upright already; a raw render is untagged sRGB (LibRaw's output space).
    header = header_lib.HeaderFacts(1, meta.get("icc_profile"), meta.get("exif"))
    if ratio:
        array = amplify(array, ratio, curve="bt709" if is_raw else "srgb")
        return DecodedInput(array, 1.0, is_raw, description + f", x{ratio:g}", header)
    return DecodedInput(array, float(np.iinfo(array.dtype).max), is_raw, description, header)


class ScaledArray:
    """Read-only view of an integer image as float32 / scale, converted per slice (low memory)."""

    def __init__(self, array, scale):
        self.array, self.scale = array, np.float32(scale)
        self.shape, self.ndim = array.shape, array.ndim

    def __getitem__(self, index):
        return self.array[index].astype(np.float32) / self.scale


def predict_decoded(model, decoded, tile, overlap, shift_ensemble=False):
    """Runs the model on a DecodedInput; returns float32 [H * s, W * s, 3] in [0, 1]."""
    x = decoded.model_input
    _, out_scale, _ = model_geometry(model)
    if tile is not None:  # image pixels -> model-input pixels (the packed mosaic is half size)
        tile, overlap = max(1, tile // out_scale), overlap // out_scale
    if decoded.scale == 1.0:
        return predict_array(model, x, tile=tile, overlap=overlap, shift_ensemble=shift_ensemble)
    height, width = x.shape[:2]
    if tile is None or (height <= tile and width <= tile):
        return predict_array(model, x.astype(np.float32) / np.float32(decoded.scale),
                             shift_ensemble=shift_ensemble)
    # Tiled: the integer image is padded (half the bytes of float32) and tiles are converted
    # as they are cut.
    return predict_array(model, ScaledArray(x, decoded.scale), tile=tile, overlap=overlap,
                         shift_ensemble=shift_ensemble)
