"""Tests for lowlight_tf.inference: whole/tiled/paper inference and enhancing users' files."""
import os
import stat
import struct
import types
import zlib

import keras
import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import run_tool  # pylint: disable=import-error
from data_prep import core
from lowlight_tf import chroma
from lowlight_tf import curves
from lowlight_tf import files
from lowlight_tf import brightness as brightness_lib
from lowlight_tf import enhance as enhance_lib
from lowlight_tf import inference
from lowlight_tf import layers
from lowlight_tf import metrics
from lowlight_tf import model as model_lib
from lowlight_tf import simulation
from lowlight_tf.media import decode
from lowlight_tf.media import formats
from lowlight_tf.media import header
from lowlight_tf.media import png


@pytest.fixture(scope="module")
def tiny_model():
    """Depth-1 rgb U-Net (size multiple 4, receptive radius ~16 px) with random weights."""
    keras.utils.set_random_seed(0)
    return model_lib.build_unet("rgb", base_filters=4, depth=1)


@pytest.fixture(scope="module")
def identity_model():
    """A model whose output equals its input (SpaceToDepth then DepthToSpace), multiple 2."""
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.SpaceToDepth(2, name="space_to_depth")(inputs)
    outputs = layers.DepthToSpace(2, name="head_depth_to_space")(x)
    return keras.Model(inputs, outputs)


def _random_image(height, width, seed=0, high=255.0):
    return np.random.default_rng(seed).uniform(0, high, (height, width, 3)).astype(np.float32)


def _model_on(model, image_255):
    """Independent reference: one direct model call on a [H, W, 3] [0, 255] image."""
    out = model(image_255[None] / 255.0, training=False).numpy()[0]
    return np.clip(out, 0, 1) * 255.0


def test_whole_image_pads_reflect_and_crops(tiny_model):
    image = _random_image(37, 45)
    multiple = model_lib.size_multiple(tiny_model)
    assert multiple == 4
    padded = np.pad(image, ((0, 3), (0, 3), (0, 0)), mode="reflect")
    expected = _model_on(tiny_model, padded)[:37, :45]
    got = inference.predict_image(tiny_model, image)
    assert got.shape == (37, 45, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_shift_ensemble_is_the_mean_of_four_shifted_predictions(tiny_model):
    # An independent computation: shift the image by hand (reflecting into the gap), pad it at
    # the bottom/right to the model's multiple, run the Keras model eagerly, crop back, average.
    x = _random_image(24, 35, seed=7, high=60.0) / 255.0
    multiple = model_lib.size_multiple(tiny_model)
    expected = np.zeros_like(x)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        bottom = -(-(24 + dy) // multiple) * multiple - 24 - dy
        right = -(-(35 + dx) // multiple) * multiple - 35 - dx
        shifted = np.pad(x, ((dy, bottom), (dx, right), (0, 0)), mode="reflect")
        expected += tiny_model(shifted[None]).numpy()[0, dy:dy + 24, dx:dx + 35] / 4.0
    ours = inference.predict_array(tiny_model, x, shift_ensemble=True)
    assert ours.shape == (24, 35, 3)
    np.testing.assert_allclose(ours, np.clip(expected, 0, 1), atol=1e-5)
    plain = inference.predict_array(tiny_model, x)
    assert np.abs(ours - plain).max() > 1e-3  # the option does something


def test_shift_ensemble_removes_the_two_pixel_texture(tiny_model):
    # A random-weight U-Net gives each 2x2 phase its own head weights: a smooth input comes out
    # with a 2-pixel checkerboard, which the ensemble cancels.
    y, x = np.mgrid[:96, :128].astype(np.float32)
    smooth = np.stack([20 + 0.2 * x, 30 + 0.1 * y, 25 + 0.1 * (x + y)], -1) / 255.0
    plain = 255.0 * inference.predict_array(tiny_model, smooth)
    ensemble = 255.0 * inference.predict_array(tiny_model, smooth, shift_ensemble=True)
    textured = metrics.periodic_texture(np.round(np.clip(plain, 0, 255)))
    cleaned = metrics.periodic_texture(np.round(np.clip(ensemble, 0, 255)))
    assert textured > 5.0 and cleaned < textured / 5.0, (textured, cleaned)


def test_shift_ensemble_tiled_and_bayer_shapes(tiny_model):
    x = _random_image(50, 70, seed=8, high=40.0) / 255.0
    whole = inference.predict_array(tiny_model, x, shift_ensemble=True)
    tiled = inference.predict_array(tiny_model, x, tile=32, overlap=16, shift_ensemble=True)
    assert whole.shape == tiled.shape == (50, 70, 3)
    # Each tile runs the ensemble on its own (shifts padded at the tile's edges); the blend
    # hides those edges, so tiled and whole-image ensembles agree away from them.
    assert np.median(np.abs(whole - tiled)) < 1e-3
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    mosaic = np.random.default_rng(9).uniform(0, 0.2, (20, 28, 4)).astype(np.float32)
    assert inference.predict_array(bayer, mosaic, shift_ensemble=True).shape == (40, 56, 3)


def test_tiled_equals_whole_when_overlap_covers_receptive_field(tiny_model):
    image = _random_image(150, 203)
    whole = inference.predict_image(tiny_model, image)
    # The zero-weight margin (overlap / 4 = 16 px) covers the depth-1 receptive radius.
    tiled = inference.predict_image(tiny_model, image, tile=128, overlap=64)
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-3)


def test_tiled_bayer_equals_whole():
    keras.utils.set_random_seed(1)
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    packed = np.random.default_rng(1).uniform(0, 1, (75, 101, 4)).astype(np.float32)
    whole = inference.predict_array(bayer, packed)
    assert whole.shape == (150, 202, 3)
    tiled = inference.predict_array(bayer, packed, tile=64, overlap=32)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_tile_blending_has_no_seams_on_identity(identity_model):
    # Any overlap, irregular last tiles: weights must renormalise to exactly the input.
    image = _random_image(97, 131, seed=2)
    for tile, overlap in ((32, 8), (40, 20), (64, 0), (16, 6)):
        out = inference.predict_image(identity_model, image, tile=tile, overlap=overlap)
        np.testing.assert_allclose(out, image, atol=2e-3, err_msg=f"tile={tile} overlap={overlap}")


def test_overlap_larger_than_half_tile_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="at most half"):
        inference.predict_image(tiny_model, _random_image(64, 64), tile=32, overlap=24)


def test_paper_stitching_predicts_each_patch_independently(tiny_model):
    image = _random_image(70, 90, seed=3)
    out = inference.predict_image(tiny_model, image, tile=32, stitch="paper")
    assert out.shape == (70, 90, 3)
    # Each 32x32 patch is the model on that patch alone (the paper's §3.2 stitching) ...
    np.testing.assert_allclose(out[:32, 32:64], _model_on(tiny_model, image[:32, 32:64]),
                               atol=1e-3)
    np.testing.assert_allclose(out[32:64, :32], _model_on(tiny_model, image[32:64, :32]),
                               atol=1e-3)
    # ... so it differs from whole-image inference near the patch borders (seams).
    whole = inference.predict_image(tiny_model, image)
    assert np.abs(out - whole)[:, 28:36].max() > 1e-2


def test_predict_image_checks_range_and_model_kind(tiny_model):
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        inference.predict_image(tiny_model, _random_image(16, 16) * 2.0)
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    with pytest.raises(ValueError, match="bayer"):
        inference.predict_image(bayer, _random_image(16, 16))


# ----------------------------------------------------------------------------------------------
# Files.

def _write_dng(path_no_ext, mosaic, cfa="RGGB", black=64, white=1023, orientation=None):
    """Writes a 16-bit Bayer DNG with pidng; returns the .dng path.

    orientation: the EXIF/TIFF Orientation tag (default 1, as the camera was held level)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (CalibrationIlluminant, CFAPattern, DNGVersion, Orientation,
                            PhotometricInterpretation, PreviewColorSpace)
    height, width = mosaic.shape
    tags = DNGTags()
    tags.set(Tag.ImageWidth, width)
    tags.set(Tag.ImageLength, height)
    tags.set(Tag.TileWidth, width)
    tags.set(Tag.TileLength, height)
    tags.set(Tag.Orientation, Orientation.Horizontal if orientation is None else orientation)
    tags.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    tags.set(Tag.SamplesPerPixel, 1)
    tags.set(Tag.BitsPerSample, 16)
    tags.set(Tag.CFARepeatPatternDim, [2, 2])
    tags.set(Tag.CFAPattern, getattr(CFAPattern, cfa))
    tags.set(Tag.BlackLevel, black)
    tags.set(Tag.WhiteLevel, white)
    tags.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1],
                                [1, 1]])
    tags.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    tags.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    tags.set(Tag.Make, "lowlight_tf")
    tags.set(Tag.Model, "test fixture")
    tags.set(Tag.DNGVersion, DNGVersion.V1_4)
    tags.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    tags.set(Tag.PreviewColorSpace, PreviewColorSpace.sRGB)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    writer.convert(mosaic.astype(np.uint16), filename=str(path_no_ext))
    return str(path_no_ext) + ".dng"


@pytest.mark.parametrize("cfa, red_offset, blue_offset", [("RGGB", (0, 0), (1, 1)),
                                                          ("BGGR", (1, 1), (0, 0))])
def test_pack_bayer_against_mosaic(tmp_path, cfa, red_offset, blue_offset):
    mosaic = np.random.default_rng(4).integers(64, 1024, (32, 48)).astype(np.uint16)
    path = _write_dng(tmp_path / "frame", mosaic, cfa=cfa)
    packed = decode.pack_bayer(path)
    assert packed.shape == (16, 24, 4)
    normalised = (mosaic.astype(np.float32) - 64) / (1023 - 64)
    ry, rx = red_offset
    by, bx = blue_offset
    np.testing.assert_allclose(packed[..., 0], normalised[ry::2, rx::2], atol=1e-6)
    np.testing.assert_allclose(packed[..., 1], normalised[ry::2, 1 - rx::2], atol=1e-6)
    np.testing.assert_allclose(packed[..., 2], normalised[by::2, bx::2], atol=1e-6)
    np.testing.assert_allclose(packed[..., 3], normalised[by::2, 1 - bx::2], atol=1e-6)


def test_amplify_in_linear_light():
    # sRGB 0.537099 is linear 0.25; doubled, linear 0.5 is sRGB 0.735357 (IEC 61966-2-1).
    pixel = np.full((1, 1, 3), round(0.537099 * 65535), np.uint16)
    np.testing.assert_allclose(inference.amplify(pixel, 2.0), 0.735357, atol=2e-4)
    # Clipped at white.
    np.testing.assert_allclose(inference.amplify(pixel, 100.0), 1.0, atol=1e-6)


def test_write_png16_round_trip(tmp_path):
    image = np.random.default_rng(5).integers(0, 65536, (13, 17, 3)).astype(np.uint16)
    path = str(tmp_path / "x.png")
    png.write_png(path, image)
    decoded, _ = decode.decode_image(path)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, image)


@pytest.fixture()
def photo_folder(tmp_path):
    """A DNG, an 8-bit PNG, a 16-bit TIFF and a corrupt JPEG."""
    import tifffile
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(6)
    _write_dng(folder / "raw_frame", rng.integers(64, 200, (40, 56)).astype(np.uint16))
    Image.fromarray(rng.integers(0, 40, (30, 45, 3)).astype(np.uint8)).save(folder / "dark.png")
    tifffile.imwrite(folder / "dark16.tif", rng.integers(0, 9000, (20, 24, 3)).astype(np.uint16))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def test_enhance_paths_on_dng_png_tiff_and_broken_file(tiny_model, photo_folder, tmp_path):
    out_dir = tmp_path / "out"
    lines = []
    summary = enhance_lib.enhance_paths(tiny_model, [str(photo_folder)], str(out_dir),
                                        enhance_lib.EnhanceOptions(tile=32, overlap=8),
                                        progress=lines.append)
    names = sorted(os.path.basename(o) for _, o in summary.written)
    assert names == ["dark16_enhanced.png", "dark_enhanced.png", "raw_frame_enhanced.png"]
    assert [os.path.basename(p) for p, _ in summary.skipped] == ["broken.jpg"]
    assert "not an image" in summary.skipped[0][1]
    assert len(lines) == 4 and "skipped" in lines[0]
    assert sorted(os.listdir(out_dir)) == names

    # The PNG's output is the model's shift-ensemble prediction of that PNG with its chroma
    # filtered (both the defaults, the filter last), up to 8-bit rounding.
    dark = np.asarray(Image.open(photo_folder / "dark.png"), np.float32)
    expected = 255.0 * chroma.filter_chroma(inference.predict_image(
        tiny_model, dark, tile=32, overlap=8, shift_ensemble=True) / 255.0)
    written = np.asarray(Image.open(out_dir / "dark_enhanced.png"), np.float32)
    assert written.shape == (30, 45, 3)
    assert np.abs(written - expected).max() <= 1.0

    # The DNG is rendered by data_prep's decoder at full size.
    with Image.open(out_dir / "raw_frame_enhanced.png") as im:
        assert im.size == (56, 40)


def test_enhance_file_ratio_and_formats(identity_model, photo_folder, tmp_path):
    # With an identity "model" the output is exactly what the model was given.
    png = str(photo_folder / "dark.png")
    dark = np.asarray(Image.open(png))
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    options = enhance_lib.EnhanceOptions
    plain = enhance_lib.enhance_file(identity_model, png, str(tmp_path / "a"),
                                     options(fmt="png16", tile=None, chroma_filter=False))
    brighter = enhance_lib.enhance_file(
        identity_model, png, str(tmp_path / "b"),
        options(ratio=8.0, fmt="png", tile=16, overlap=4, chroma_filter=False))
    as_jpeg = enhance_lib.enhance_file(identity_model, png, str(tmp_path / "c"),
                                       options(fmt="jpg", chroma_filter=False))
    assert plain.endswith("dark_enhanced.png") and as_jpeg.endswith("dark_enhanced.jpg")
    decoded16, _ = decode.decode_image(plain)
    assert decoded16.dtype == np.uint16 and decoded16.shape == (30, 45, 3)
    np.testing.assert_allclose(decoded16 / 257.0, dark, atol=0.01)
    # --ratio multiplies the linear light by 8 before the model: sRGB value 20 (linear 0.00699)
    # becomes linear 0.0560, sRGB 0.2624 -> 66.9 (IEC 61966-2-1 curve, computed by hand).
    got = np.asarray(Image.open(brighter), np.float32)
    assert got[dark == 20].size > 0
    np.testing.assert_allclose(got[dark == 20], 66.9, atol=0.6)
    jpeg = np.asarray(Image.open(as_jpeg), np.float32)
    assert jpeg.shape == dark.shape and abs(jpeg.mean() - dark.mean()) < 1.0


def test_a_phone_portrait_comes_out_upright_with_its_exif(identity_model, tmp_path):
    # Phones store a portrait photo as landscape pixels plus EXIF Orientation 6. The output's
    # pixels are turned and its EXIF keeps the date, camera and GPS without the Orientation
    # (or viewers would turn it twice), with the upright pixel dimensions.
    stored = np.random.default_rng(1).integers(0, 60, (30, 46, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[header.ORIENTATION_TAG] = 6
    exif[0x010F] = "PhoneCo"  # Make
    exif.get_ifd(0x8769).update({0x9003: "2026:01:02 03:04:05", 0xA002: 46, 0xA003: 30})
    exif.get_ifd(0x8825)[1] = "N"  # GPS latitude reference
    inputs = {"jpg": str(tmp_path / "portrait.jpg"), "png": str(tmp_path / "portrait.png")}
    Image.fromarray(stored).save(inputs["jpg"], exif=exif, quality=100, subsampling=0)
    Image.fromarray(stored).save(inputs["png"], exif=exif)
    level = str(tmp_path / "level.png")
    Image.fromarray(stored).save(level)
    for source, fmt in (("png", "png"), ("png", "png16"), ("jpg", "jpg")):
        (tmp_path / fmt).mkdir()
        written = enhance_lib.enhance_file(
            identity_model, inputs[source], str(tmp_path / fmt),
            enhance_lib.EnhanceOptions(brightness="+0ev", chroma_filter=False, fmt=fmt))
        with Image.open(written) as image:
            assert image.size == (30, 46), fmt
            tags = image.getexif()
            assert header.ORIENTATION_TAG not in tags and tags.get(0x010F) == "PhoneCo", fmt
            assert tags.get_ifd(0x8769) == {0x9003: "2026:01:02 03:04:05", 0xA002: 30,
                                            0xA003: 46}, fmt
            assert tags.get_ifd(0x8825) == {1: "N"}, fmt
            pixels = np.asarray(image)
        if fmt == "png":
            np.testing.assert_array_equal(pixels, np.rot90(stored, -1))
    # A photo without EXIF gets none.
    written = enhance_lib.enhance_file(identity_model, level, str(tmp_path / "png"),
                                       enhance_lib.EnhanceOptions(chroma_filter=False))
    with Image.open(written) as image:
        assert not image.getexif()


def test_the_output_keeps_the_inputs_colour_profile(identity_model, tmp_path):
    # A phone's Display P3 photo: the network keeps the values' encoding, so the output must
    # be tagged with the same profile or viewers show it as sRGB (duller colours).
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored = np.random.default_rng(2).integers(0, 60, (24, 32, 3), dtype=np.uint8)
    tagged, untagged = str(tmp_path / "p3.png"), str(tmp_path / "plain.png")
    Image.fromarray(stored).save(tagged, icc_profile=profile)
    Image.fromarray(stored).save(untagged)
    for fmt in ("png", "jpg", "png16"):
        (tmp_path / fmt).mkdir()
        options = enhance_lib.EnhanceOptions(fmt=fmt, chroma_filter=False)
        for path, expected in ((tagged, profile), (untagged, None)):
            written = enhance_lib.enhance_file(identity_model, path, str(tmp_path / fmt), options)
            with Image.open(written) as image:
                assert image.info.get("icc_profile") == expected, (fmt, path)


@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1), (3, 2)])
def test_a_turned_raw_comes_out_upright_from_both_model_kinds(tmp_path, orientation, turn):
    # LibRaw renders a turned raw upright; a bayer model reads the sensor's layout, so its
    # prediction must be turned the same way (np.rot90: k = -1 clockwise).
    mosaic = np.random.default_rng(5).integers(64, 1024, (32, 48)).astype(np.uint16)
    level = _write_dng(tmp_path / "level", mosaic)
    turned = _write_dng(tmp_path / "turned", mosaic, orientation=orientation)
    assert header.raw_orientation(level) == 1 and header.raw_orientation(turned) == orientation
    np.testing.assert_array_equal(decode.decode_raw(turned)[0],
                                  np.rot90(decode.decode_raw(level)[0], turn))
    keras.utils.set_random_seed(0)
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    options = enhance_lib.EnhanceOptions(brightness="+0ev", chroma_filter=False, fmt="png16")
    outputs = [decode.decode_image(enhance_lib.enhance_file(bayer, path, str(tmp_path), options))[0]
               for path in (level, turned)]
    assert outputs[0].shape == (32, 48, 3)
    np.testing.assert_array_equal(outputs[1], np.rot90(outputs[0], turn))


def test_bayer_model_enhances_raw_and_skips_ordinary_images(photo_folder, tmp_path):
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    summary = enhance_lib.enhance_paths(bayer, [str(photo_folder / "raw_frame.dng"),
                                                str(photo_folder / "dark.png")],
                                        str(tmp_path / "out"), progress=None)
    assert [os.path.basename(p) for p, _ in summary.written] == ["raw_frame.dng"]
    assert "needs camera raw" in summary.skipped[0][1]
    with Image.open(summary.written[0][1]) as im:
        assert im.size == (56, 40)


def test_expected_brightness_and_anchor_exposure():
    rng = np.random.default_rng(4)
    dark = rng.integers(0, 60, (300, 40, 3)).astype(np.float32)  # > one 256-row band
    curve = np.stack([np.linspace(0, 255, 256) ** 0.9 * k for k in (1.0, 0.8, 0.9)])
    # By hand: the per-channel lookup of every pixel, averaged.
    by_hand = np.mean([curve[c][dark[..., c].astype(int)] for c in range(3)]) / 255.0
    assert brightness_lib.expected_brightness(dark / 255.0, curve) == pytest.approx(
        by_hand, rel=1e-9)
    scaled = inference.ScaledArray(dark.astype(np.uint8), 255.0)  # integer input, as decoded
    assert brightness_lib.expected_brightness(scaled, curve) == pytest.approx(by_hand, rel=1e-6)
    prediction = rng.uniform(0.0, 0.2, dark.shape).astype(np.float32)
    anchored = brightness_lib.anchor_exposure(prediction, dark / 255.0, curve)
    assert anchored.mean() == pytest.approx(by_hand, rel=1e-4)  # no pixel clips here
    np.testing.assert_allclose(anchored / prediction, anchored.flat[0] / prediction.flat[0],
                               rtol=1e-5)  # one gain for every pixel and channel
    in_place = prediction.copy()
    assert brightness_lib.anchor_exposure(in_place, dark / 255.0, curve, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, anchored)
    black = np.zeros_like(prediction)
    np.testing.assert_array_equal(brightness_lib.anchor_exposure(black, dark / 255.0, curve), black)
    # Per channel: each channel's mean becomes the curve's expectation for that channel.
    by_channel = [np.mean(curve[c][dark[..., c].astype(int)]) / 255.0 for c in range(3)]
    np.testing.assert_allclose(curves.expected_channel_means(dark / 255.0, curve), by_channel,
                               rtol=1e-9)
    coloured = brightness_lib.anchor_exposure(prediction, dark / 255.0, curve, per_channel=True)
    np.testing.assert_allclose(coloured.mean(axis=(0, 1)), by_channel, rtol=1e-4)
    for c in range(3):  # one gain per channel
        ratio = coloured[..., c] / prediction[..., c]
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert abs(coloured[..., 1].mean() / anchored[..., 1].mean() - 1.0) > 0.01
    with pytest.raises(ValueError, match=r"\[3, 256\]"):
        brightness_lib.expected_brightness(dark / 255.0, curve[:, :100])


def test_enhance_with_a_calibrated_exposure(identity_model, tiny_model, photo_folder, tmp_path):
    curve = np.tile(np.linspace(0.0, 255.0, 256) ** 0.5 * 255.0 ** 0.5, (3, 1))
    summary = enhance_lib.enhance_paths(
        identity_model, [str(photo_folder / "dark.png"), str(photo_folder / "raw_frame.dng")],
        str(tmp_path / "out"), enhance_lib.EnhanceOptions(exposure_curve=curve, tile=None),
        progress=None)
    assert [os.path.basename(p) for p, _ in summary.written] == ["dark.png"]
    assert "not to raw files" in summary.skipped[0][1]  # the curve describes sRGB images only
    dark = np.asarray(Image.open(photo_folder / "dark.png"), np.float32)
    written = np.asarray(Image.open(summary.written[0][1]), np.float32)
    expected = 255.0 * brightness_lib.expected_brightness(dark / 255.0, curve)
    assert written.mean() == pytest.approx(expected, abs=0.6)  # 8-bit rounding
    assert written.mean() > 2 * dark.mean()  # the identity model alone would keep it dark
    with pytest.raises(ValueError, match="rgb model"):
        enhance_lib.enhance_paths(model_lib.build_unet("bayer", base_filters=4, depth=1),
                                  [str(photo_folder)], str(tmp_path / "b"),
                                  enhance_lib.EnhanceOptions(exposure_curve=curve))
    with pytest.raises(ValueError, match=r"\[3, 256\]"):
        enhance_lib.enhance_file(tiny_model, str(photo_folder / "dark.png"), str(tmp_path),
                                 enhance_lib.EnhanceOptions(exposure_curve=curve[:2]))


def test_unwritable_output_dir_fails_before_any_work(tiny_model, photo_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    lines = []
    with pytest.raises(enhance_lib.OutputDirError, match="a_file"):
        enhance_lib.enhance_paths(tiny_model, [str(photo_folder)], str(blocker / "out"),
                                  progress=lines.append)
    assert lines == []


@pytest.mark.slow
def test_enhance_cli(tiny_model, photo_folder, tmp_path):
    model_path = str(tmp_path / "tiny.keras")
    tiny_model.save(model_path)
    ok = run_tool("enhance", str(photo_folder), f"--model={model_path}",
                  f"--output_dir={tmp_path / 'out'}", "--format=jpg", cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "Enhanced 3 file(s)" in ok.stdout and "broken.jpg" in ok.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [
        "dark16_enhanced.jpg", "dark_enhanced.jpg", "raw_frame_enhanced.jpg"]

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    unwritable = run_tool("enhance", str(photo_folder), f"--model={model_path}",
                          f"--output_dir={blocker / 'out'}", cwd=str(tmp_path))
    assert unwritable.returncode == 2 and "a_file" in unwritable.stderr

    # One launch wires --exposure_preset, --exposure_colour, --nochroma_filter and
    # --noshift_ensemble through to the library: its output is enhance_file's with the same
    # options. (Their refusals are library tests:
    # test_enhance_exposure_colour_sets_each_channels_mean,
    # test_load_exposure_curve_names_a_preset_without_one; a missing model: test_model.)
    preset = simulation.load_preset("paper")
    preset.exposure_curve = np.tile(np.linspace(0.0, 255.0, 256), (3, 1))
    preset.exposure_curve[0] *= 0.5  # red expected darker: --exposure_colour changes the balance
    simulation.save_preset(preset, str(tmp_path / "camera.json"))
    wired = run_tool("enhance", str(photo_folder / "dark.png"), f"--model={model_path}",
                     f"--exposure_preset={tmp_path / 'camera.json'}", "--exposure_colour",
                     "--nochroma_filter", "--noshift_ensemble", f"--output_dir={tmp_path / 'out4'}",
                     cwd=str(tmp_path))
    assert wired.returncode == 0, wired.stderr
    assert os.listdir(tmp_path / "out4") == ["dark_enhanced.png"]
    written = np.asarray(Image.open(tmp_path / "out4" / "dark_enhanced.png"), np.float32)
    in_process = enhance_lib.enhance_file(
        tiny_model, str(photo_folder / "dark.png"), str(tmp_path),
        enhance_lib.EnhanceOptions(exposure_curve=preset.exposure_curve, exposure_colour=True,
                                   chroma_filter=False, shift_ensemble=False))
    assert np.abs(written - np.asarray(Image.open(in_process), np.float32)).max() <= 1.0
    assert written[..., 0].mean() < 0.75 * written[..., 1].mean()  # the calibrated balance
    # The default runs the shift ensemble and filters its chroma; the flags above do not.
    default = run_tool("enhance", str(photo_folder / "dark.png"), f"--model={model_path}",
                       f"--output_dir={tmp_path / 'out8'}", cwd=str(tmp_path))
    assert default.returncode == 0, default.stderr
    dark = np.asarray(Image.open(photo_folder / "dark.png"), np.float32)
    network = inference.predict_image(tiny_model, dark, tile=inference.DEFAULT_TILE,
                                      shift_ensemble=True)
    filtered = np.asarray(Image.open(tmp_path / "out8" / "dark_enhanced.png"), np.float32)
    assert np.abs(filtered - 255.0 * chroma.filter_chroma(network / 255.0)).max() <= 1.0
    assert np.abs(filtered - network).max() > 1.0


def test_load_exposure_curve_names_a_preset_without_one(tmp_path):
    with pytest.raises(simulation.PresetError, match="paper holds no exposure curve"):
        simulation.load_exposure_curve("paper")
    preset = simulation.load_preset("paper")
    preset.exposure_curve = np.tile(np.linspace(0.0, 255.0, 256), (3, 1))
    simulation.save_preset(preset, str(tmp_path / "camera.json"))
    np.testing.assert_allclose(simulation.load_exposure_curve(str(tmp_path / "camera.json")),
                               preset.exposure_curve)


def test_enhance_exposure_colour_sets_each_channels_mean(identity_model, tmp_path):
    dark = np.full((32, 48, 3), 20, np.uint8)
    dark[..., 0] = 40  # a cast: red twice as bright as green and blue in the dark photo
    path = tmp_path / "cast.png"
    Image.fromarray(dark).save(path)
    # The calibrated camera: bright = 2.5x dark in red, 5x in green and blue (the cast removed).
    curve = np.stack([np.minimum(np.arange(256.0) * k, 255.0) for k in (2.5, 5.0, 5.0)])
    written = enhance_lib.enhance_file(
        identity_model, str(path), str(tmp_path),
        enhance_lib.EnhanceOptions(tile=None, exposure_curve=curve, exposure_colour=True))
    with Image.open(written) as image:
        means = np.asarray(image, np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(means, [100.0, 100.0, 100.0], atol=1.0)
    one_gain = enhance_lib.enhance_file(
        identity_model, str(path), str(tmp_path),
        enhance_lib.EnhanceOptions(tile=None, exposure_curve=curve),
        output_path=str(tmp_path / "b.png"))
    with Image.open(one_gain) as image:
        means = np.asarray(image, np.float64).mean(axis=(0, 1))
    assert means[0] == pytest.approx(2 * means[1], rel=0.02)  # one gain keeps the cast
    with pytest.raises(ValueError, match="--exposure_preset"):
        enhance_lib.enhance_file(identity_model, str(path), str(tmp_path),
                                 enhance_lib.EnhanceOptions(exposure_colour=True))


# ----------------------------------------------------------------------------------------------
# Reliability: outputs never replace a user's file, damaged files never stop a batch.

def _png_claiming(width, height):
    """A ~100-byte PNG (valid CRCs) whose header claims width x height 8-bit RGB pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _save_png(path, seed=0, high=40, shape=(30, 45)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, high, shape + (3,)).astype(np.uint8)).save(path)
    return str(path)


def test_enhance_never_writes_over_a_users_file_or_an_input(identity_model, tmp_path):
    # The reported case: the input folder is the output folder and holds the user's own
    # a_enhanced.png (read-only): it is an input of the run, so it is never written.
    folder = tmp_path / "x"
    folder.mkdir()
    _save_png(folder / "a.png")
    users = folder / "a_enhanced.png"
    users.write_bytes(b"the user's only copy")
    os.chmod(users, stat.S_IRUSR)
    for overwrite in (False, True):
        with pytest.raises(files.OutputIsInputError, match="a_enhanced.png"):
            enhance_lib.enhance_paths(identity_model, [str(folder)], str(folder),
                                      overwrite=overwrite, progress=None)
    assert users.read_bytes() == b"the user's only copy"
    assert sorted(os.listdir(folder)) == ["a.png", "a_enhanced.png"]

    # A file in the output folder that this run did not create: refused before any work,
    # replaced only with overwrite=True.
    source = tmp_path / "in"
    source.mkdir()
    _save_png(source / "a.png")
    _save_png(source / "b.png", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_enhanced.png").write_bytes(b"user data")
    lines = []
    with pytest.raises(files.OutputExistsError, match=r"b_enhanced\.png.*--overwrite"):
        enhance_lib.enhance_paths(identity_model, [str(source)], str(out), progress=lines.append)
    assert lines == [] and sorted(os.listdir(out)) == ["b_enhanced.png"]  # nothing written
    assert (out / "b_enhanced.png").read_bytes() == b"user data"
    summary = enhance_lib.enhance_paths(identity_model, [str(source)], str(out), overwrite=True,
                                        progress=None)
    assert len(summary.written) == 2
    with Image.open(out / "b_enhanced.png") as im:
        assert im.size == (45, 30)
    # enhance_file follows the same policy.
    with pytest.raises(files.OutputExistsError):
        enhance_lib.enhance_file(identity_model, str(source / "a.png"), str(out))
    with pytest.raises(files.OutputIsInputError):
        enhance_lib.enhance_file(identity_model, str(source / "a.png"), str(out),
                                 output_path=str(source / "a.png"), overwrite=True)


def test_two_inputs_with_one_name_get_distinct_outputs(identity_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _save_png(folder / "a.png")
    Image.open(folder / "a.png").save(folder / "a.bmp")
    summary = enhance_lib.enhance_paths(identity_model, [str(folder)], str(tmp_path / "out"),
                                        progress=None)
    assert sorted(os.path.basename(o) for _, o in summary.written) == [
        "a_enhanced.png", "a_png_enhanced.png"]


def test_output_images_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "a_enhanced.png"
    target.write_bytes(b"previous complete file")
    image = np.full((8, 8, 3), 0.5, np.float32)

    def half_written_then_fail(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_written_then_fail)
    for fmt in ("png", "jpg"):
        with pytest.raises(OSError, match="No space"):
            enhance_lib.write_image(str(target), image, fmt)
        assert target.read_bytes() == b"previous complete file"
        assert os.listdir(tmp_path) == ["a_enhanced.png"]  # no temporary left behind
    monkeypatch.undo()
    enhance_lib.write_image(str(target), image, "png16")
    assert os.listdir(tmp_path) == ["a_enhanced.png"]
    assert decode.decode_image(str(target))[0].dtype == np.uint16


def test_a_decompression_bomb_is_skipped_and_the_batch_goes_on(identity_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bomb.png").write_bytes(_png_claiming(20000, 20000))
    _save_png(folder / "b.png")
    for max_pixels in (files.DEFAULT_MAX_PIXELS, 10 ** 6):
        lines = []
        summary = enhance_lib.enhance_paths(identity_model, [str(folder)],
                                            str(tmp_path / f"out{max_pixels}"),
                                            enhance_lib.EnhanceOptions(max_pixels=max_pixels),
                                            progress=lines.append)
        assert [os.path.basename(p) for p, _ in summary.written] == ["b.png"]
        assert [os.path.basename(p) for p, _ in summary.skipped] == ["a_bomb.png"]
        assert "skipped" in lines[0] and "a_bomb.png" in lines[0]
        text = enhance_lib.format_summary(summary, "out")
        assert "Skipped 1 file(s)" in text and "a_bomb.png" in text
    reason = summary.skipped[0][1]
    assert "pixel limit" in reason and ("20000x20000" in reason or "400000000" in reason)


def test_pixel_limit_is_checked_on_the_header_before_decoding(identity_model, photo_folder,
                                                              tmp_path):
    # 3000x3000 claimed, nothing behind it: the limit, not the truncation, is the reason.
    claimed = tmp_path / "claimed.png"
    claimed.write_bytes(_png_claiming(3000, 3000))
    for limit in (1_000_000, 5_000_000):  # beyond twice the limit Pillow's own check speaks
        with pytest.raises(inference.UnreadableImageError,
                           match=r"(3000x3000|9000000 pixels).*pixel limit|pixel limit.*--max_"):
            inference.decode_input(str(claimed), max_pixels=limit)
    with pytest.raises(inference.UnreadableImageError, match="truncated|corrupt"):
        inference.decode_input(str(claimed), max_pixels=10_000_000)
    summary = enhance_lib.enhance_paths(
        identity_model, [str(photo_folder / n) for n in ("raw_frame.dng", "dark16.tif",
                                                         "dark.png")],
        str(tmp_path / "out"), enhance_lib.EnhanceOptions(max_pixels=1000), progress=None)
    assert [os.path.basename(p) for p, _ in summary.written] == ["dark16.tif"]  # 480 pixels
    reasons = dict((os.path.basename(p), r) for p, r in summary.skipped)
    assert "56x40" in reasons["raw_frame.dng"] and "pixel limit" in reasons["raw_frame.dng"]
    assert "45x30" in reasons["dark.png"]


def test_bad_inputs_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no image or raw file"):
        enhance_lib.check_inputs([str(empty)])
    with pytest.raises(ValueError, match="not found: .*nope.png"):
        enhance_lib.check_inputs([str(tmp_path / "nope.png")])
    with pytest.raises(ValueError, match="No input"):
        enhance_lib.check_inputs([])
    directory_named_png = tmp_path / "dir.png"
    directory_named_png.mkdir()
    with pytest.raises(inference.UnreadableImageError, match="no such file"):
        inference.decode_input(str(directory_named_png / "x.png"))


# ----------------------------------------------------------------------------------------------
# The brightness control and the no-reference checks.

def test_parse_brightness():
    assert brightness_lib.parse_brightness("auto") == brightness_lib.Brightness("auto", 0.0)
    assert brightness_lib.parse_brightness(" 0.4 ") == brightness_lib.Brightness("mean", 0.4)
    assert brightness_lib.parse_brightness("+1ev") == brightness_lib.Brightness("ev", 1.0)
    assert brightness_lib.parse_brightness("-0.5EV") == brightness_lib.Brightness("ev", -0.5)
    assert str(brightness_lib.parse_brightness("-0.5ev")) == "-0.5ev"
    for bad in ("1.5", "0", "bright", "ev", "+100ev", "nanev"):
        with pytest.raises(ValueError, match="auto.*mean level.*EV"):
            brightness_lib.parse_brightness(bad)


def test_apply_brightness_auto_caps_well_exposed_inputs():
    rng = np.random.default_rng(8)
    bright_input = rng.uniform(0.2, 0.4, (300, 20, 3)).astype(np.float32)  # mean 0.3 >= 0.25
    doubled = np.clip(bright_input * 2.0, 0, 1)  # a network that brightens by 2x
    capped = brightness_lib.apply_brightness(doubled, bright_input, "auto")
    assert capped.mean() == pytest.approx(1.15 * bright_input.mean(), rel=1e-4)
    np.testing.assert_allclose(capped / doubled, capped.flat[0] / doubled.flat[0], rtol=1e-5)
    # A dark input keeps the network's brightness; so does a well-exposed one not brightened.
    dark = bright_input / 10.0
    np.testing.assert_array_equal(brightness_lib.apply_brightness(doubled, dark, "auto"), doubled)
    np.testing.assert_array_equal(brightness_lib.apply_brightness(bright_input, bright_input),
                                  bright_input)
    # Integer input, as decoded (uint8 / 255), and in place.
    scaled = inference.ScaledArray(np.round(bright_input * 255).astype(np.uint8), 255.0)
    in_place = doubled.copy()
    out = brightness_lib.apply_brightness(in_place, scaled, "auto", out=in_place)
    assert out is in_place and out.mean() == pytest.approx(capped.mean(), rel=1e-3)


def test_apply_brightness_mean_target_and_ev():
    rng = np.random.default_rng(9)
    prediction = rng.uniform(0.0, 0.6, (50, 40, 3)).astype(np.float32)
    dark = prediction / 8.0
    prediction[:10] = 0.0  # exact zeros stay zero whatever the gain
    for target in (0.1, 0.4, 0.7):  # 0.7 needs clipping: the clipped mean still reaches it
        out = brightness_lib.apply_brightness(prediction, dark, str(target))
        assert out.mean() == pytest.approx(target, abs=1e-4)
        assert out.min() >= 0.0 and out.max() <= 1.0
    faint = prediction * 0.01  # a large gain must not magnify histogram binning
    assert brightness_lib.apply_brightness(faint, dark, "0.5").mean() == pytest.approx(
        0.5, abs=5e-4)
    # +1 EV doubles linear light: sRGB 0.537099 (linear 0.25) -> 0.735357 (linear 0.5); -1 EV
    # halves it: 0.537099 -> sRGB of linear 0.125 = 1.055 * 0.125 ** (1 / 2.4) - 0.055
    # = 0.388573 (IEC 61966-2-1, by hand).
    pixel = np.full((1, 1, 3), 0.537099, np.float32)
    np.testing.assert_allclose(brightness_lib.apply_brightness(pixel, pixel, "+1ev"), 0.735357,
                               atol=2e-5)
    np.testing.assert_allclose(brightness_lib.apply_brightness(pixel, pixel, "-1ev"), 0.388573,
                               atol=2e-5)
    np.testing.assert_allclose(brightness_lib.apply_brightness(pixel, pixel, "+3ev"), 1.0)
    with pytest.raises(ValueError, match="brightness"):
        brightness_lib.apply_brightness(pixel, pixel, "loud")


def test_enhance_brightness_and_stats_lines(tmp_path):
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.SpaceToDepth(2, name="space_to_depth")(inputs)
    x = layers.DepthToSpace(2, name="head_depth_to_space")(x)
    tripling = keras.Model(inputs, keras.layers.Rescaling(3.0, name="head_gain")(x))
    folder = tmp_path / "in"
    folder.mkdir()
    well_exposed = _save_png(folder / "day.png", seed=3, high=180)  # mean ~90/255 = 0.35
    dark = _save_png(folder / "night.png", seed=4, high=20)
    lines = []
    summary = enhance_lib.enhance_paths(tripling, [str(folder)], str(tmp_path / "auto"),
                                        progress=lines.append)
    outputs = {os.path.basename(p): np.asarray(Image.open(o), np.float32) / 255.0
               for p, o in summary.written}
    day_in = np.asarray(Image.open(well_exposed), np.float32) / 255.0
    night_in = np.asarray(Image.open(dark), np.float32) / 255.0
    assert outputs["day.png"].mean() <= 1.15 * day_in.mean() + 1e-3  # capped, not 3x
    assert outputs["night.png"].mean() == pytest.approx(3 * night_in.mean(), abs=2e-3)
    assert [s.mean_brightness for s in summary.stats] == pytest.approx(
        [outputs["day.png"].mean(), outputs["night.png"].mean()], abs=2e-3)
    assert "mean 0." in lines[0] and "clipped " in lines[0]
    assert "Output mean brightness" in enhance_lib.format_summary(summary, "auto")
    target = enhance_lib.enhance_paths(tripling, [str(folder)], str(tmp_path / "target"),
                                       enhance_lib.EnhanceOptions(brightness="0.5"),
                                       progress=None)
    for _, output in target.written:
        assert np.asarray(Image.open(output), np.float32).mean() / 255.0 == pytest.approx(
            0.5, abs=3e-3)
    with pytest.raises(ValueError, match="only one"):
        enhance_lib.enhance_paths(
            tripling, [str(folder)], str(tmp_path / "c"),
            enhance_lib.EnhanceOptions(brightness="+1ev",
                                       exposure_curve=np.tile(np.arange(256.0), (3, 1))))


@pytest.mark.slow
def test_enhance_cli_overwrite_brightness_and_bad_inputs(photo_folder, tmp_path):
    keras.utils.set_random_seed(2)
    model_path = str(tmp_path / "unet.keras")
    model_lib.build_unet("rgb", base_filters=4, depth=2).save(model_path)
    out = tmp_path / "out"
    args = [str(photo_folder / "dark.png"), f"--model={model_path}", f"--output_dir={out}"]
    first = run_tool("enhance", *args, "--brightness=0.4", cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "mean 0.4" in first.stdout and "clipped" in first.stdout
    written = (out / "dark_enhanced.png").read_bytes()
    again = run_tool("enhance", *args, cwd=str(tmp_path))
    assert again.returncode == 2
    assert "dark_enhanced.png" in again.stderr and "--overwrite" in again.stderr
    assert (out / "dark_enhanced.png").read_bytes() == written
    replaced = run_tool("enhance", *args, "--overwrite", "--brightness=+1ev", cwd=str(tmp_path))
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "dark_enhanced.png").read_bytes() != written
    bad = run_tool("enhance", *args, "--brightness=2", cwd=str(tmp_path))
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


def test_enhance_and_data_prep_pick_files_by_the_one_extension_table(tmp_path):
    names = [f"a{ext}" for ext in sorted(formats.RAW_EXTENSIONS | formats.IMAGE_EXTENSIONS)]
    names += ["UPPER.NEF", "Photo.JPG", "notes.txt", "clip.braw", "archive.eip"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    picked = {os.path.basename(p) for p in enhance_lib.expand_inputs([str(tmp_path)])}
    skips = types.SimpleNamespace(ignored_files=0)
    prepared = {i for _, i in core.iter_input_files(str(tmp_path), skips)}
    assert picked == prepared == set(names) - {"notes.txt", "clip.braw", "archive.eip"}
    assert skips.ignored_files == 3
