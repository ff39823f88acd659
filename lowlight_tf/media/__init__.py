"""Media files without TensorFlow: formats, decoding, PNG writing, example ids.

Importing any module of this package loads no TensorFlow (tests/test_media.py checks it); only
decoding a 16-bit PNG does, at that moment (`decode._decode_png16`).

- `formats`: the extension tables (camera raw, ordinary images), the source-format name of a
  path, the 8/16-bit scale (`UINT16_PER_UINT8` = 257), bit-depth conversion and downscaling.
- `decode`: decoding camera raw files (rawpy/LibRaw, rendered or packed as a Bayer mosaic) and
  ordinary images (Pillow, tifffile) with header and pixel-bomb checks; every bad file raises
  `decode.DecodeError` with a named skip reason.
- `header`: what a file's header says about showing it (EXIF orientation, RGB colour profile,
  EXIF block; a raw file's orientation), read without decoding pixels.
- `png`: the one PNG writer (8 or 16 bits per channel, lossless, atomic file writes).
- `ids`: example ids: integer ranges such as `4-5,29`, file stems and scene keys (index runs).

Import direction: `data_prep` and the rest of `lowlight_tf` import these modules; they import
only `lowlight_tf.files` from this project. This package module imports none of them, so a
caller pays only for the submodule it uses (`ids` needs neither Pillow nor rawpy).
"""
