"""The TensorFlow-free media package: extension tables, PNG writer, 8/16-bit scale, ids."""
import ast
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import header
from lowlight_tf.media import ids
from lowlight_tf.media import png


def test_media_imports_no_tensorflow():
    code = ("import sys\n"
            "import lowlight_tf.media\n"
            "from lowlight_tf.media import decode, formats, ids, png\n"
            "from data_prep import splitting, workers\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
            "print(loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_lowlight_tf_never_imports_data_prep():
    package = os.path.dirname(os.path.dirname(os.path.abspath(decode.__file__)))
    offenders = []
    for folder, _, names in os.walk(package):
        for name in sorted(n for n in names if n.endswith(".py")):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(m.split(".")[0] == "data_prep" for m in modules):
                    offenders.append(f"{os.path.relpath(os.path.join(folder, name), package)}:"
                                     f"{node.lineno}")
    assert not offenders, f"lowlight_tf must not import data_prep: {offenders}"


def test_extension_tables_are_lowercase_disjoint_and_cover_both_old_lists():
    for table in (formats.RAW_EXTENSIONS, formats.IMAGE_EXTENSIONS):
        assert all(ext.startswith(".") and ext == ext.lower() for ext in table)
    assert not formats.RAW_EXTENSIONS & formats.IMAGE_EXTENSIONS
    # The raw formats enhance picked but data_prep sent to Pillow, now raw everywhere.
    assert {".rdc", ".cs1", ".qtk", ".pxn", ".drf"} <= formats.RAW_EXTENSIONS
    assert {".webp", ".ppm", ".pgm"} <= formats.IMAGE_EXTENSIONS
    assert formats.is_raw_path("A/B.NEF") and not formats.is_raw_path("a/b.png")
    assert formats.is_image_path("x.Tif") and formats.is_image_path("x.rdc")
    assert not formats.is_image_path("notes.txt") and not formats.is_image_path("clip.braw")
    assert [formats.format_name(p) for p in ("a.JPG", "b.tiff", "c.nef")] == ["jpeg", "tiff",
                                                                              "nef"]


def test_a_raw_extension_goes_to_libraw_not_pillow(tmp_path):
    # Garbage under a raw extension is LibRaw's to refuse ("unsupported"); Pillow would have
    # called it "not an image".
    path = tmp_path / "frame.rdc"
    path.write_bytes(b"not a raw file at all" * 10)
    with pytest.raises(decode.DecodeError) as error:
        decode.decode_any(str(path))
    assert error.value.reason == "unsupported" and "LibRaw" in str(error.value)


def test_the_8_16_bit_scale():
    assert formats.UINT16_PER_UINT8 * 255 == 65535
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    wide = formats.to_dtype(values, np.uint16)
    np.testing.assert_array_equal(wide, values.astype(np.uint16) * 257)
    np.testing.assert_array_equal(formats.to_dtype(wide, np.uint8), values)


@pytest.mark.parametrize("dtype, peak", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_round_trip_across_row_bands(tmp_path, dtype, peak):
    # 300 rows: more than one band of the band-wise encoder.
    image = np.random.default_rng(3).integers(0, peak + 1, (300, 7, 3)).astype(dtype)
    path = str(tmp_path / "x.png")
    png.write_png(path, image)
    decoded, meta = decode.decode_image(path)
    assert decoded.dtype == dtype and meta["source_format"] == "png"
    np.testing.assert_array_equal(decoded, image)
    if dtype == np.uint8:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.encode_png(image)))),
                                      image)
    with pytest.raises(ValueError, match="uint8/uint16"):
        png.encode_png(image.astype(np.float32))


def test_index_runs_group_consecutive_stems_per_folder():
    example_ids = ["low/4.png", "low/5.png", "low/29.png", "low/30.png", "low/38.png",
                   "other/5.png", "low/sky.png"]
    keys = ids.index_run_keys(example_ids)
    assert keys["low/4.png"] == keys["low/5.png"] == "run:low/4"
    assert keys["low/29.png"] == keys["low/30.png"] == "run:low/29"
    assert keys["low/38.png"] == "run:low/38"
    assert keys["other/5.png"] == "run:other/5"  # another folder never joins the run
    assert keys["low/sky.png"] == "low/sky.png"


def test_id_ranges_and_stems():
    assert ids.parse_id_range("7") == (7, 7)
    assert ids.parse_id_range("4-5") == (4, 5)
    assert ids.parse_id_range("9-3") == (9, 3)  # the caller refuses it with its own context
    assert ids.parse_id_range("sky") is None and ids.parse_id_range("4-") is None
    assert ids.id_stem("a/b/12.png") == "12" and ids.id_stem("x") == "x"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_pixels_as_viewers_show_them(tmp_path, orientation):
    # A non-square, asymmetric picture: any wrong flip or turn changes the pixels or the shape.
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    for ext in ("png", "webp", "tiff"):
        path = str(tmp_path / f"o{orientation}.{ext}")
        exif = Image.Exif()
        exif[header.ORIENTATION_TAG] = orientation
        lossless = {"lossless": True} if ext == "webp" else {}
        Image.fromarray(stored).save(path, exif=exif, **lossless)
        decoded, meta = decode.decode_image(path)
        with Image.open(path) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        assert meta["orientation"] == orientation, ext
        assert decoded.shape == expected.shape == ((10, 6, 3) if orientation >= 5 else (6, 10, 3))
        np.testing.assert_array_equal(decoded, expected, err_msg=ext)


def test_orientation_of_a_16_bit_tiff_and_of_files_without_one(tmp_path):
    stored = np.random.default_rng(0).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    path = str(tmp_path / "portrait.tif")
    tifffile.imwrite(path, stored, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    decoded, meta = decode.decode_image(path)
    assert decoded.dtype == np.uint16 and meta["orientation"] == 6
    np.testing.assert_array_equal(decoded, np.rot90(stored, -1))  # turned clockwise
    plain = str(tmp_path / "plain.png")
    png.write_png(plain, stored)
    decoded, meta = decode.decode_image(plain)
    assert meta["orientation"] == 1
    np.testing.assert_array_equal(decoded, stored)
    # An out-of-range value (a damaged EXIF block) is no orientation, not a failed decode.
    odd = str(tmp_path / "odd.png")
    exif = Image.Exif()
    exif[header.ORIENTATION_TAG] = 42
    Image.fromarray(stored[..., 0].astype(np.uint8)).save(odd, exif=exif)
    assert decode.decode_image(odd)[1]["orientation"] == 1


def _rgb_profile():
    """A real RGB ICC profile (littlecms' sRGB) standing in for a phone's Display P3."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_an_embedded_rgb_colour_profile_is_read_and_written(tmp_path):
    profile = _rgb_profile()
    stored = np.random.default_rng(2).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    for name, save in (("p.png", {}), ("p.jpg", {"quality": 95}), ("p.tiff", {})):
        Image.fromarray(stored).save(tmp_path / name, icc_profile=profile, **save)
        assert decode.decode_image(str(tmp_path / name))[1]["icc_profile"] == profile, name
    deep = str(tmp_path / "deep.png")
    png.write_png(deep, stored.astype(np.uint16) * 257, icc_profile=profile)
    decoded, meta = decode.decode_image(deep)
    assert meta["icc_profile"] == profile and decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, stored.astype(np.uint16) * 257)
    with Image.open(deep) as image:
        assert image.info["icc_profile"] == profile
    plain = str(tmp_path / "plain.png")
    png.write_png(plain, stored)
    assert decode.decode_image(plain)[1]["icc_profile"] is None
    # A profile of another colour space does not describe the RGB pixels decode returns.
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.fromarray(stored).save(tmp_path / "lab.png", icc_profile=lab)
    assert decode.decode_image(str(tmp_path / "lab.png"))[1]["icc_profile"] is None
