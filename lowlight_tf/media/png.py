"""The one PNG writer: lossless RGB PNG, 8 or 16 bits per channel (Pillow cannot write 16-bit RGB).

Written here rather than with TensorFlow's `encode_png` (about 10x slower, and it must run in
the main process) or Pillow. Every row uses PNG filter 1 (Sub), which suits photographs; the
image is filtered and compressed in row bands, so a 24-MP frame needs no full-size copy.
"""
import struct
import zlib

import numpy as np

from lowlight_tf import files

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BAND_ROWS = 256  # rows filtered per step: bounds the temporary copies of a large image
# zlib level 1 is the fastest and costs little: a 600x400 8-bit photo takes ~20 ms and is 2.5%
# larger than at level 3; 16-bit renders of raw files barely compress beyond 0.77 whatever the
# level (noisy low bits).
DEFAULT_COMPRESS_LEVEL = 1


def _chunk(kind, payload):
    """Return one PNG chunk: length, type, payload, CRC."""
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _sub_filtered(band):
    """Return uint8 [h, 1 + W * bytes per pixel]: filter byte 1 (Sub), then the filtered row.

    Sub stores each byte minus the same byte of the pixel to its left (modulo 256).
    """
    height, width = band.shape[:2]
    bytes_per_pixel = 3 * band.dtype.itemsize
    rows = np.ascontiguousarray(band.astype(band.dtype.newbyteorder(">"), copy=False))
    rows = rows.view(np.uint8).reshape(height, width * bytes_per_pixel)
    filtered = np.empty((height, width * bytes_per_pixel + 1), np.uint8)
    filtered[:, 0] = 1
    filtered[:, 1:bytes_per_pixel + 1] = rows[:, :bytes_per_pixel]
    filtered[:, bytes_per_pixel + 1:] = rows[:, bytes_per_pixel:] - rows[:, :-bytes_per_pixel]
    return filtered


def encode_png(image, compress_level=DEFAULT_COMPRESS_LEVEL, icc_profile=None, exif=None):
    """Encode an RGB image losslessly as PNG bytes (8 or 16 bits per channel).

    Args:
        image: uint8 or uint16 [H, W, 3], values as stored (uint16 in [0, 65535]).
        compress_level: zlib level 0-9.
        icc_profile: an RGB ICC profile (bytes) to embed as the iCCP chunk, or None (sRGB).
        exif: an EXIF block (bytes, with or without the JPEG `Exif\\0\\0` prefix) to embed as the
            eXIf chunk, or None.

    Returns:
        bytes of a valid PNG file (bit depth 8 for uint8, 16 for uint16; colour type RGB).

    Raises:
        ValueError: for any other dtype or shape.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png needs uint8/uint16 [H, W, 3], got {image.dtype} "
                         f"{image.shape}")
    height, width = image.shape[:2]
    compressor = zlib.compressobj(compress_level)
    parts = []
    for begin in range(0, height, _BAND_ROWS):
        filtered = _sub_filtered(image[begin:begin + _BAND_ROWS])
        parts.append(compressor.compress(filtered.tobytes()))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8 * image.dtype.itemsize, 2, 0, 0, 0)
    # iCCP: profile name, NUL, compression method 0 (zlib), the compressed profile.
    tags = [_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile))] \
        if icc_profile else []
    if exif:
        tags.append(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header), *tags,
                     _chunk(b"IDAT", b"".join(parts)), _chunk(b"IEND", b"")])


def write_png(path, image, compress_level=DEFAULT_COMPRESS_LEVEL, icc_profile=None,
              exif=None):
    """Write `encode_png(image)` to `path` atomically (complete or absent, never truncated).

    Args:
        path: the output file.
        image: uint8 or uint16 [H, W, 3].
        compress_level: zlib level 0-9.
        icc_profile: an RGB ICC profile (bytes) to embed, or None.
        exif: an EXIF block (bytes) to embed, or None.
    """
    files.write_bytes(path, encode_png(image, compress_level, icc_profile, exif))
