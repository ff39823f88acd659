"""What an image file's header says about showing its pixels: orientation, colour profile, EXIF.

`decode.decode_image` returns ordinary images upright with these facts in its meta;
`tools/enhance` turns a bayer model's prediction by a raw file's orientation and writes the
input's colour profile and EXIF into its output, so a phone's portrait photo stays portrait, in
its colour space, with its date. Headers only: no pixel is decoded here, and nothing raises.
"""
import collections
import logging
import warnings

import numpy as np
import rawpy
import tifffile
from PIL import Image

from lowlight_tf.media import formats


def open_image(path, max_pixels=None):
    """Image.open(path) (header only) with Pillow's bomb limit following `max_pixels`.

    Pillow refuses pictures above twice its own `MAX_IMAGE_PIXELS` (DecompressionBombError) and
    warns above it; our limit (None: none) replaces both, so the same file is accepted or refused
    the same way by every tool (`decode` names the refusal). The caller checks the header size
    against max_pixels before `load()`.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_pixels) if max_pixels else None
    try:
        with warnings.catch_warnings():
            # Bomb warnings: our limit replaces Pillow's. UserWarnings: Pillow's notes about
            # damaged tags ("Tag data larger than file"); a failure is reported as the skip.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# EXIF Orientation (tag 274) -> the numpy steps that turn the stored pixels upright, as viewers
# and Pillow's ImageOps.exif_transpose show them (2: mirrored, 3: upside down, 6: a phone held
# upright, ...). rot90 with k=1 turns counter-clockwise.
ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class HeaderFacts(collections.namedtuple("HeaderFacts", "orientation icc_profile exif")):
    """What an ordinary image's header says about showing its pixels (`header_facts`).

    orientation: the EXIF Orientation (1-8), 1 when absent, out of range or unreadable.
    icc_profile: the embedded ICC colour profile (bytes) when it describes RGB data, else None
        (a CMYK or gray profile does not describe the RGB pixels `decode_image` returns).
    exif: the photo's EXIF block (bytes: date, camera, exposure, GPS) rewritten for the upright
        pixels (no Orientation tag, upright pixel dimensions), or None (no EXIF, a TIFF whose
        tags describe its own file layout, or a block too damaged or too large to carry over).
    """


EXIF_FORMATS = ("jpeg", "png", "webp")  # whose EXIF block is the photo's, not its file layout
_EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x8769, 0xA002, 0xA003
MAX_EXIF_BYTES = 60000  # a JPEG APP1 segment holds at most 65533


def _upright_exif(exif, size, orientation):
    """Return `exif` (a Pillow Exif) as bytes for the upright pixels, or None if it cannot be."""
    exif.pop(ORIENTATION_TAG, None)
    if not len(exif):  # pylint: disable=use-implicit-booleaness-not-len
        return None
    width, height = size if orientation < 5 else size[::-1]
    details = exif.get_ifd(_EXIF_IFD)
    if _EXIF_WIDTH in details or _EXIF_HEIGHT in details:
        details[_EXIF_WIDTH], details[_EXIF_HEIGHT] = width, height
    data = exif.tobytes()
    return data if len(data) <= MAX_EXIF_BYTES else None


def header_facts(path):
    """Return the HeaderFacts of an ordinary image (its header only; never raises).

    Pillow reads JPEG/PNG/WebP/TIFF headers; tifffile's tags serve TIFFs Pillow cannot open. A
    damaged EXIF block or profile counts as none: the pixels still decode.
    """
    orientation, profile, exif = 1, None, None
    try:
        with open_image(path) as image:
            tags = image.getexif()
            orientation = tags.get(ORIENTATION_TAG, 1)
            profile = image.info.get("icc_profile")
            if (image.format or "").lower() in EXIF_FORMATS:
                try:
                    exif = _upright_exif(tags, image.size, int(orientation)
                                         if orientation in _UPRIGHT else 1)
                except Exception:  # pylint: disable=broad-except
                    exif = None
    except Exception:  # pylint: disable=broad-except
        if formats.format_name(path) == "tiff":
            logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # damaged tags: none
            try:
                with tifffile.TiffFile(path) as tif:
                    tags = tif.pages[0].tags
                    orientation = getattr(tags.get("Orientation"), "value", 1)
                    profile = getattr(tags.get("InterColorProfile"), "value", None)
            except Exception:  # pylint: disable=broad-except
                pass
    try:
        orientation = int(orientation)
    except (TypeError, ValueError):
        orientation = 1
    profile = bytes(profile) if isinstance(profile, (bytes, bytearray, np.ndarray)) else None
    # ICC header: bytes 16-19 name the data colour space.
    rgb_profile = profile is not None and len(profile) >= 128 and profile[16:20] == b"RGB "
    return HeaderFacts(orientation if orientation in _UPRIGHT else 1,
                       profile if rgb_profile else None, exif)


def upright(array, orientation):
    """Return an [H, W, ...] array turned as its EXIF `orientation` (1-8) says to display it."""
    step = _UPRIGHT.get(int(orientation))
    return array if step is None else np.ascontiguousarray(step(array))


# LibRaw's `sizes.flip` (how the camera was held) as the EXIF Orientation `upright` takes.
_LIBRAW_FLIP_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


def raw_orientation(path):
    """Return a raw file's orientation (EXIF 1-8) from LibRaw's header, 1 when unknown.

    `decode_raw` renders upright already (LibRaw turns its output); `pack_bayer` keeps the
    sensor's layout, whose CFA pattern a bayer model needs, so its prediction is turned after.
    """
    try:
        with rawpy.imread(path) as raw:
            return _LIBRAW_FLIP_ORIENTATION.get(int(raw.sizes.flip), 1)
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError):
        return 1
