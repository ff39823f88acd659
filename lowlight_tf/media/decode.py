"""Decoding camera raw files and ordinary images into HxWx3 arrays (no TensorFlow at import).

Prepares the bright and dark images the paper trains on (§3.1 simulates dark images from bright
sRGB images; §3.4 uses real dark/bright pairs) and the photos `tools/enhance` reads. Camera raw
files of every LibRaw format are rendered to sRGB with rawpy (camera white balance, 16-bit
output) or packed as SID packs them (`pack_bayer`); ordinary images are read as-is.

Every decoder raises `DecodeError` with a short human-readable reason and one named skip reason
(`DecodeError.reason`, a key of `data_prep.summary.SKIP_REASONS`: unreadable, not_an_image,
truncated, corrupt, unsupported, too_large, ...) that end up in the `summary.json` skip list;
nothing else escapes for a bad file. Picture sizes are read from the header and checked against
`max_pixels` before any pixel is decoded, so a crafted header cannot exhaust memory.
"""
import logging
import os
import struct

import numpy as np
import rawpy
import tifffile
from PIL import Image, UnidentifiedImageError

from lowlight_tf import files
from lowlight_tf.media import formats
from lowlight_tf.media import header


class DecodeError(Exception):
    """A file could not be turned into an image.

    `str(error)` is the human-readable reason for the summary; `error.reason` the named skip
    reason (a key of `data_prep.summary.SKIP_REASONS`).
    """

    def __init__(self, message, reason="corrupt"):
        super().__init__(message)
        self.reason = reason


def check_pixels(width, height, max_pixels, what="picture"):
    """Raise DecodeError("too_large") when width x height exceeds max_pixels (None: no limit)."""
    if max_pixels and int(width) * int(height) > int(max_pixels):
        raise DecodeError(f"{what} of {int(width)}x{int(height)} = "
                          f"{int(width) * int(height) / 1e6:.1f} MP exceeds the pixel limit of "
                          f"{int(max_pixels) / 1e6:g} MP (raise --max_pixels to read it)",
                          "too_large")


def probe_bit_depth(path):
    """Return 16 when a file will decode to 16 bits per channel, else 8 (header only, cheap).

    Raw files always render to 16 bits. Unreadable files report 8; the real decode reports the
    error later.
    """
    if formats.is_raw_path(path):
        return 16
    ext = formats.extension(path)
    try:
        if ext == ".png":
            with open(path, "rb") as f:
                header = f.read(26)
            # PNG signature (8) + IHDR length/type (8) + width, height (8) + bit depth (1).
            if len(header) >= 25 and header[:8] == b"\x89PNG\r\n\x1a\n":
                return 16 if header[24] == 16 else 8
        elif ext in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                return 16 if tif.pages[0].dtype.itemsize > 1 else 8
    except Exception:  # pylint: disable=broad-except
        return 8
    return 8


def _check_file(path):
    """Raise DecodeError for missing, unreadable or zero-byte files."""
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise DecodeError(f"missing or unreadable file ({error.strerror})", "unreadable") \
            from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)", "unreadable")
    if not os.access(path, os.R_OK):
        raise DecodeError("unreadable file (permission denied)", "unreadable")


def _to_rgb(array, path):
    """Return an HxWx3 array from gray, gray+alpha, RGB or RGBA data."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DecodeError(f"unsupported image shape {array.shape}", "unsupported")
    channels = array.shape[2]
    if channels in (1, 2):  # gray (+ alpha): replicate gray into R, G, B.
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif channels in (3, 4):  # RGB (+ alpha): drop alpha.
        array = array[:, :, :3]
    else:
        raise DecodeError(f"unsupported channel count {channels} in {os.path.basename(path)}",
                          "unsupported")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DecodeError("image has zero width or height", "corrupt")
    return np.ascontiguousarray(array)


def _decode_png16(path):
    """Decode a 16-bit PNG with TensorFlow (Pillow reads 16-bit RGB PNGs as 8-bit)."""
    # The one import inside a function: among our dependencies only TensorFlow decodes 16-bit
    # RGB PNGs, and importing it costs seconds and hundreds of MB, which every other file (and
    # every importer of this module) should not pay.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
        data = tf.io.read_file(path)
        return tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    except tf.errors.OpError as error:  # InvalidArgument, DataLoss, ResourceExhausted, ...
        message = (str(error).strip().splitlines() or [""])[0][:120]
        reason = "truncated" if "truncat" in message.lower() else "corrupt"
        raise DecodeError(f"corrupt or truncated PNG ({message})", reason) from None


def _quiet_tifffile():
    """Keep tifffile's warnings about damaged tags off the console (the skip says it all)."""
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _tiff_size(path):
    """Return (width, height) of a TIFF's first page from its header, or None if unreadable."""
    _quiet_tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    except Exception:  # pylint: disable=broad-except
        return None


def _decode_tiff(path, max_pixels):
    """Decode a TIFF with tifffile (8/16-bit, gray or RGB), falling back to Pillow."""
    size = _tiff_size(path)
    if size is not None:
        check_pixels(*size, max_pixels)
    try:
        # The first page only: tifffile.imread walks the whole page chain, which never ends on
        # a corrupt file whose chain loops (found by benchmarks/fuzz_decoders.py).
        with tifffile.TiffFile(path) as tif:
            array = tif.pages[0].asarray()
    except Exception as tiff_error:  # pylint: disable=broad-except
        try:
            return _decode_pillow(path, max_pixels)[0]
        except DecodeError as error:
            if error.reason == "too_large":
                raise
            # A header tifffile could parse makes it a damaged TIFF, not another kind of file.
            reason = error.reason if size is None else "corrupt"
            raise DecodeError(f"not a readable TIFF ({tiff_error})", reason) from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # Planar (separate) configuration.
    return array


def _open_pillow(path, max_pixels):
    """`header.open_image`, with Pillow's refusal of a picture over the limit as our skip."""
    try:
        return header.open_image(path, max_pixels)
    except Image.DecompressionBombError as error:
        raise DecodeError(f"picture too large for the pixel limit ({error})", "too_large") \
            from None


def image_size(path, max_pixels=None):
    """Return (width, height) of an ordinary image from its header, without decoding pixels.

    Raises:
        DecodeError: unreadable files, unrecognised content, or (with max_pixels) too large.
    """
    _check_file(path)
    if formats.format_name(path) == "tiff":
        size = _tiff_size(path)
        if size is not None:
            return size
    try:
        with _open_pillow(path, max_pixels) as image:
            return image.size
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content despite the image extension)",
                          "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError,
            ArithmeticError, struct.error) as error:
        raise DecodeError(f"corrupt or unreadable image header ({error})", "corrupt") from None


def _decode_pillow(path, max_pixels):
    """Decode PNG/JPEG/BMP/TIFF with Pillow; return (array, pillow format name)."""
    try:
        with _open_pillow(path, max_pixels) as image:
            fmt = (image.format or "").lower()
            check_pixels(*image.size, max_pixels)
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                array = np.asarray(image).astype(np.uint16)
            elif mode == "I":
                array = np.asarray(image)
                if array.min() < 0 or array.max() > 65535:
                    raise DecodeError("32-bit integer image out of the 16-bit range",
                                      "unsupported")
                array = array.astype(np.uint16)
            elif mode in ("RGB", "RGBA", "L", "LA"):
                array = np.asarray(image)
            elif mode == "1":
                array = np.asarray(image.convert("L"))
            else:  # P, CMYK, YCbCr, ...: let Pillow convert to 8-bit RGB.
                array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content despite the image extension)",
                          "not_an_image") from None
    except Image.DecompressionBombError as error:
        raise DecodeError(f"picture too large for the pixel limit ({error})", "too_large") \
            from None
    except MemoryError:
        raise DecodeError("out of memory while decoding", "too_large") from None
    except (TypeError, IndexError, KeyError, ArithmeticError, struct.error) as error:
        # Pillow's plugins raise these on malformed headers (benchmarks/fuzz_decoders.py).
        raise DecodeError(f"corrupt image ({type(error).__name__}: {error})", "corrupt") \
            from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error)
        if "truncated" in text or isinstance(error, EOFError):
            raise DecodeError(f"truncated image ({text})", "truncated") from None
        raise DecodeError(f"corrupt or unreadable image ({text})", "corrupt") from None
    return array, ("jpeg" if fmt == "mpo" else fmt)


def decode_image(path, *, max_pixels=files.DEFAULT_MAX_PIXELS):
    """Read an ordinary image (png/jpeg/tiff/bmp, 8 or 16 bit) as-is.

    Args:
        path: file path.
        max_pixels: largest width x height decoded (checked on the header first); None or 0
            for no limit.

    Returns:
        (image, meta): image uint8 or uint16 [H, W, 3] (gray is replicated, alpha dropped), values
        as stored, turned upright as its EXIF Orientation says (a phone's portrait JPEG comes out
        portrait, as raw files do from LibRaw); meta dict with `source_format` (str), `is_raw`
        False and the `header.HeaderFacts` fields: `orientation` (the EXIF value applied, 1 for
        none), `icc_profile` (the RGB colour profile the values are in, bytes, or None) and
        `exif` (the EXIF block for the upright pixels, bytes, or None).

    Raises:
        DecodeError: with the reason, for empty, truncated, corrupt, too large or non-image
            files.
    """
    _check_file(path)
    fmt = formats.format_name(path)
    if fmt == "tiff":
        array = _decode_tiff(path, max_pixels)
    elif fmt == "png" and probe_bit_depth(path) == 16:
        check_pixels(*image_size(path, max_pixels), max_pixels)
        array = _decode_png16(path)
    else:
        array, pil_format = _decode_pillow(path, max_pixels)
        fmt = pil_format or fmt
    if array.size == 0:  # min()/max() below raise ValueError on it (benchmarks/fuzz_decoders)
        raise DecodeError("image has zero width or height", "corrupt")
    if array.dtype not in (np.uint8, np.uint16):
        if array.dtype.kind in "ui" and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)
        else:
            raise DecodeError(f"unsupported sample type {array.dtype} (need 8 or 16-bit "
                              "integers)", "unsupported")
    facts = header.header_facts(path)
    return (header.upright(_to_rgb(array, path), facts.orientation),
            {"source_format": fmt, "is_raw": False, **facts._asdict()})


def cfa_pattern_name(raw_pattern, color_desc):
    """Return the 2x2 CFA pattern as a string such as `RGGB` (empty when not a 2x2 Bayer CFA).

    Args:
        raw_pattern: rawpy `raw_pattern`, int array of colour indices, or None.
        color_desc: rawpy `color_desc`, bytes such as b"RGBG".
    """
    if raw_pattern is None:
        return ""
    pattern = np.asarray(raw_pattern)
    if pattern.shape != (2, 2):
        return ""
    colors = color_desc.decode("ascii", "replace") if isinstance(color_desc, bytes) \
        else str(color_desc)
    try:
        return "".join(colors[int(i)] for i in pattern.reshape(-1))
    except IndexError:
        return ""


def decode_raw(path, *, half_size=False, no_auto_bright=False,
               max_pixels=files.DEFAULT_MAX_PIXELS):
    """Render a camera raw file to sRGB with rawpy/LibRaw.

    Uses the camera's white balance, 16 bits per channel, LibRaw's default sRGB gamma curve.

    Args:
        path: raw file path (any LibRaw format).
        half_size: render at half resolution (each 2x2 Bayer block becomes one pixel; fast).
        no_auto_bright: disable LibRaw's automatic brightening (the paper's authors rendered dark
            frames this way so that they stay dark).
        max_pixels: largest rendered width x height; checked on LibRaw's header sizes before
            the raw data is unpacked. None or 0 for no limit.

    Returns:
        (image, meta): image uint16 [H, W, 3] in [0, 65535]; meta dict with `source_format`,
        `is_raw` True, `black_level` float32[4] (per CFA channel, raw DN), `white_level` float32
        (raw DN), `cfa_pattern` (e.g. `RGGB`), `camera_white_balance` float32[4].

    Raises:
        DecodeError: unsupported format, truncated, corrupt or too large file.
    """
    _check_file(path)
    try:
        with rawpy.imread(path) as raw:  # Opens and parses the header; unpacks nothing yet.
            sizes = raw.sizes
            check_pixels(max(sizes.width, sizes.raw_width), max(sizes.height, sizes.raw_height),
                         max_pixels, "raw picture")
            black_level = np.zeros(4, np.float32)
            levels = np.asarray(raw.black_level_per_channel, np.float32).reshape(-1)[:4]
            black_level[:levels.size] = levels
            white_balance = np.zeros(4, np.float32)
            wb = np.asarray(raw.camera_whitebalance, np.float32).reshape(-1)[:4]
            white_balance[:wb.size] = wb
            meta = {
                "source_format": formats.format_name(path),
                "is_raw": True,
                "black_level": black_level,
                "white_level": np.float32(raw.white_level),
                "cfa_pattern": cfa_pattern_name(raw.raw_pattern, raw.color_desc),
                "camera_white_balance": white_balance,
            }
            image = raw.postprocess(use_camera_wb=True, output_bps=16, half_size=half_size,
                                    no_auto_bright=no_auto_bright)
    except rawpy.LibRawFileUnsupportedError:
        raise DecodeError("unsupported raw format (LibRaw cannot read this file)",
                          "unsupported") from None
    except rawpy.LibRawIOError:
        raise DecodeError("truncated or unreadable raw file (LibRaw I/O error)",
                          "truncated") from None
    except (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError, MemoryError) as error:
        raise DecodeError(f"raw picture too large to decode (LibRaw: {type(error).__name__})",
                          "too_large") from None
    except rawpy.NotSupportedError as error:
        raise DecodeError(f"unsupported raw file (LibRaw: {type(error).__name__})",
                          "unsupported") from None
    except rawpy.LibRawError as error:
        raise DecodeError(f"corrupt raw file (LibRaw: {type(error).__name__})", "corrupt") \
            from None
    except (OSError, ValueError) as error:
        raise DecodeError(f"unreadable raw file ({error})", "unreadable") from None
    return _to_rgb(np.asarray(image, np.uint16), path), meta


def pack_bayer(path, *, max_pixels=files.DEFAULT_MAX_PIXELS):
    """Pack a Bayer raw file as SID does: float32 [H/2, W/2, 4] in [0, 1], channels R G B G.

    The black level is subtracted per CFA channel and the result divided by (white - black);
    the channel order is R, G (same row as R), B, G (same row as B) whatever the CFA layout.
    `max_pixels` (None/0: none) is checked on LibRaw's header sizes before unpacking.

    Raises:
        DecodeError: LibRaw cannot read the file, it is over the pixel limit, or it is not a
            2x2 RGB Bayer mosaic (X-Trans, Foveon).
    """
    try:
        with rawpy.imread(path) as raw:  # parses the header; unpacks on raw_image_visible
            sizes = raw.sizes
            check_pixels(max(sizes.width, sizes.raw_width), max(sizes.height, sizes.raw_height),
                         max_pixels, "raw picture")
            mosaic = raw.raw_image_visible.astype(np.float32)
            colors = raw.raw_colors_visible
            black = np.asarray(raw.black_level_per_channel, np.float32)
            white = float(raw.white_level)
            description = raw.color_desc.decode("ascii", "replace")
            pattern = np.asarray(raw.raw_pattern) if raw.raw_pattern is not None else None
    except MemoryError:
        raise DecodeError("not enough memory to unpack this raw file", "too_large") from None
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError) as e:
        raise DecodeError(f"camera raw file LibRaw cannot decode ({e})", "unsupported") from e
    letters = _bayer_letters(pattern, description, mosaic.ndim)
    height, width = mosaic.shape[0] // 2 * 2, mosaic.shape[1] // 2 * 2
    mosaic, colors = mosaic[:height, :width], colors[:height, :width]
    channel_black = black[np.clip(colors, 0, len(black) - 1)]
    mosaic -= channel_black
    mosaic /= np.maximum(white - channel_black, 1.0)
    np.clip(mosaic, 0.0, 1.0, out=mosaic)
    offsets = [(dy, dx) for dy in (0, 1) for dx in (0, 1)]
    red = offsets[letters.index("R")]
    blue = offsets[letters.index("B")]
    green_with_red = (red[0], 1 - red[1])
    green_with_blue = (blue[0], 1 - blue[1])
    return np.stack([mosaic[dy::2, dx::2] for dy, dx in
                     (red, green_with_red, blue, green_with_blue)], axis=-1)


def _bayer_letters(pattern, description, ndim):
    """Return the colour letters of a 2x2 CFA in reading order; DecodeError if not RGB Bayer."""
    if pattern is None or pattern.shape != (2, 2) or ndim != 2:
        raise DecodeError("not a 2x2 Bayer mosaic; a bayer model cannot read it (use an rgb "
                          "model)", "unsupported")
    try:
        letters = [description[int(pattern[dy, dx])] for dy in (0, 1) for dx in (0, 1)]
    except IndexError:
        letters = []
    if "R" not in letters or "B" not in letters:
        raise DecodeError(f"not an RGB Bayer mosaic (colours {description!r}); a bayer model "
                          "cannot read it (use an rgb model)", "unsupported")
    return letters


def decode_any(path, *, half_size=False, no_auto_bright=False,
               max_pixels=files.DEFAULT_MAX_PIXELS):
    """Decode a raw file (rendered) or an ordinary image (as-is); see decode_raw/decode_image."""
    if formats.is_raw_path(path):
        return decode_raw(path, half_size=half_size, no_auto_bright=no_auto_bright,
                          max_pixels=max_pixels)
    return decode_image(path, max_pixels=max_pixels)
