"""File formats: the extension tables, source-format names and the 8/16-bit scale.

The one table of camera raw extensions and the one of ordinary image extensions: folders are
scanned with them (`tools/enhance`, `tools/make_tfrecords`), and a file with a raw extension
is always handed to rawpy/LibRaw, any other file to Pillow/tifffile (`decode.decode_any`).
"""
import os

import numpy as np
from PIL import Image

# Camera raw formats LibRaw reads (libraw.org/supported-cameras), checked case-insensitively.
# LibRaw identifies a file by its content, so an extension here only decides which files a
# folder scan picks and that they go to LibRaw. Not listed: .braw (Blackmagic RAW needs
# Blackmagic's SDK) and .eip (a zip archive around an IIQ file); LibRaw reads neither.
RAW_EXTENSIONS = frozenset((
    ".3fr", ".ari", ".arw", ".bay", ".cap", ".cr2", ".cr3", ".crw", ".cs1", ".dcr", ".dcs",
    ".dng", ".drf", ".erf", ".fff", ".gpr", ".iiq", ".k25", ".kdc", ".mdc", ".mef", ".mos",
    ".mrw", ".nef", ".nrw", ".orf", ".pef", ".ptx", ".pxn", ".qtk", ".r3d", ".raf", ".raw",
    ".rdc", ".rw2", ".rwl", ".rwz", ".sr2", ".srf", ".srw", ".sti", ".x3f",
))
# Ordinary image formats read as stored, 8 or 16 bit per channel (tifffile for TIFF, the 16-bit
# PNG reader for 16-bit PNG, Pillow for the rest: its wheels include WebP).
IMAGE_EXTENSIONS = frozenset((
    ".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp",
))

# 65535 / 255: an 8-bit value v is the 16-bit value 257 * v exactly (0 -> 0, 255 -> 65535), so
# uint16 images map to the library's float [0, 255] range by dividing by 257.
UINT16_PER_UINT8 = 257

_FORMAT_NAMES = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}


def extension(path):
    """Return the lowercase extension of `path` with its dot (`a/B.NEF` -> `.nef`)."""
    return os.path.splitext(path)[1].lower()


def is_raw_path(path):
    """Return True when the file extension is a camera raw format (RAW_EXTENSIONS)."""
    return extension(path) in RAW_EXTENSIONS


def is_image_path(path):
    """Return True when the extension is a raw format or an ordinary image format we read."""
    ext = extension(path)
    return ext in RAW_EXTENSIONS or ext in IMAGE_EXTENSIONS


def format_name(path):
    """Return the `source_format` name for a path, e.g. `png`, `jpeg`, `tiff`, `dng`, `nef`."""
    ext = extension(path)
    return _FORMAT_NAMES.get(ext, ext.lstrip("."))


def to_dtype(image, dtype):
    """Convert uint8 <-> uint16 by the 257 scale (exact for 8 -> 16; rounded for 16 -> 8).

    Args:
        image: uint8 or uint16 [H, W, 3].
        dtype: np.uint8 or np.uint16.

    Returns:
        [H, W, 3] array of `dtype`: 8-bit v maps to 16-bit 257 * v, so v / 257 is exact again.
    """
    dtype = np.dtype(dtype)
    if image.dtype == dtype:
        return image
    if dtype == np.uint16:
        return image.astype(np.uint16) * np.uint16(UINT16_PER_UINT8)
    return np.clip(np.round(image.astype(np.float32) / float(UINT16_PER_UINT8)),
                   0, 255).astype(np.uint8)


def downscale(image, max_side):
    """Shrink so that the longer side is at most `max_side` (area averaging); else return as-is.

    Args:
        image: uint8 or uint16 [H, W, 3].
        max_side: positive int, or None/0 for no limit.

    Returns:
        Same dtype, [H', W', 3] with max(H', W') <= max_side and the aspect ratio kept.
    """
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    scale = max_side / float(max(height, width))
    new_size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    limit = np.iinfo(image.dtype).max
    channels = []
    for c in range(image.shape[2]):
        plane = Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
        channels.append(np.asarray(plane.resize(new_size, Image.Resampling.BOX)))
    out = np.stack(channels, axis=-1)
    return np.clip(np.round(out), 0, limit).astype(image.dtype)
