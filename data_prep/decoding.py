"""Old import path of two decoder names, kept only for `lowlight_tf.calibration`.

The decoders live in `lowlight_tf.media.decode` (and the extension tables in
`lowlight_tf.media.formats`). `lowlight_tf.calibration` still reads `decoding.decode_image` and
`decoding.DecodeError`; once it imports `lowlight_tf.media.decode`, delete this module. Nothing
else may import it (`lowlight_tf` never imports `data_prep`).
"""
# pylint: disable=unused-import
from lowlight_tf.media.decode import DecodeError, decode_image  # noqa: F401
