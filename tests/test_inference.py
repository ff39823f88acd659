"""Tests for lowlight_tf.inference: whole/tiled/paper inference and enhancing users' files."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from lowlight_tf import inference
from lowlight_tf import model as model_lib
from lowlight_tf import simulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_model():
    """Depth-1 rgb U-Net (size multiple 4, receptive radius ~16 px) with random weights."""
    keras.utils.set_random_seed(0)
    return model_lib.build_unet("rgb", base_filters=4, depth=1)


@pytest.fixture(scope="module")
def identity_model():
    """A model whose output equals its input (SpaceToDepth then DepthToSpace), multiple 2."""
    inputs = keras.Input(shape=(None, None, 3))
    x = model_lib.SpaceToDepth(2, name="space_to_depth")(inputs)
    outputs = model_lib.DepthToSpace(2, name="head_depth_to_space")(x)
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

def _write_dng(path_no_ext, mosaic, cfa="RGGB", black=64, white=1023):
    """Writes a 16-bit Bayer DNG with pidng; returns the .dng path."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (CalibrationIlluminant, CFAPattern, DNGVersion, Orientation,
                            PhotometricInterpretation, PreviewColorSpace)
    height, width = mosaic.shape
    tags = DNGTags()
    tags.set(Tag.ImageWidth, width)
    tags.set(Tag.ImageLength, height)
    tags.set(Tag.TileWidth, width)
    tags.set(Tag.TileLength, height)
    tags.set(Tag.Orientation, Orientation.Horizontal)
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
    packed = inference.pack_bayer(path)
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
    from data_prep import decoding
    image = np.random.default_rng(5).integers(0, 65536, (13, 17, 3)).astype(np.uint16)
    path = str(tmp_path / "x.png")
    inference.write_png16(path, image)
    decoded, _ = decoding.decode_image(path)
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
    summary = inference.enhance_paths(tiny_model, [str(photo_folder)], str(out_dir),
                                      tile=32, overlap=8, progress=lines.append)
    names = sorted(os.path.basename(o) for _, o in summary.written)
    assert names == ["dark16_enhanced.png", "dark_enhanced.png", "raw_frame_enhanced.png"]
    assert [os.path.basename(p) for p, _ in summary.skipped] == ["broken.jpg"]
    assert "not an image" in summary.skipped[0][1]
    assert len(lines) == 4 and "skipped" in lines[0]
    assert sorted(os.listdir(out_dir)) == names

    # The PNG's output is the model's prediction of that PNG, up to 8-bit rounding.
    dark = np.asarray(Image.open(photo_folder / "dark.png"), np.float32)
    expected = inference.predict_image(tiny_model, dark, tile=32, overlap=8)
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
    plain = inference.enhance_file(identity_model, png, str(tmp_path / "a"), fmt="png16",
                                   tile=None)
    brighter = inference.enhance_file(identity_model, png, str(tmp_path / "b"), ratio=8.0,
                                      fmt="png", tile=16, overlap=4)
    as_jpeg = inference.enhance_file(identity_model, png, str(tmp_path / "c"), fmt="jpg")
    assert plain.endswith("dark_enhanced.png") and as_jpeg.endswith("dark_enhanced.jpg")
    from data_prep import decoding
    decoded16, _ = decoding.decode_image(plain)
    assert decoded16.dtype == np.uint16 and decoded16.shape == (30, 45, 3)
    np.testing.assert_allclose(decoded16 / 257.0, dark, atol=0.01)
    # --ratio multiplies the linear light by 8 before the model: sRGB value 20 (linear 0.00699)
    # becomes linear 0.0560, sRGB 0.2624 -> 66.9 (IEC 61966-2-1 curve, computed by hand).
    got = np.asarray(Image.open(brighter), np.float32)
    assert got[dark == 20].size > 0
    np.testing.assert_allclose(got[dark == 20], 66.9, atol=0.6)
    jpeg = np.asarray(Image.open(as_jpeg), np.float32)
    assert jpeg.shape == dark.shape and abs(jpeg.mean() - dark.mean()) < 1.0


def test_bayer_model_enhances_raw_and_skips_ordinary_images(photo_folder, tmp_path):
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    summary = inference.enhance_paths(bayer, [str(photo_folder / "raw_frame.dng"),
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
    assert inference.expected_brightness(dark / 255.0, curve) == pytest.approx(by_hand, rel=1e-9)
    scaled = inference._ScaledArray(dark.astype(np.uint8), 255.0)  # integer input, as decoded
    assert inference.expected_brightness(scaled, curve) == pytest.approx(by_hand, rel=1e-6)
    prediction = rng.uniform(0.0, 0.2, dark.shape).astype(np.float32)
    anchored = inference.anchor_exposure(prediction, dark / 255.0, curve)
    assert anchored.mean() == pytest.approx(by_hand, rel=1e-4)  # no pixel clips here
    np.testing.assert_allclose(anchored / prediction, anchored.flat[0] / prediction.flat[0],
                               rtol=1e-5)  # one gain for every pixel and channel
    in_place = prediction.copy()
    assert inference.anchor_exposure(in_place, dark / 255.0, curve, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, anchored)
    black = np.zeros_like(prediction)
    np.testing.assert_array_equal(inference.anchor_exposure(black, dark / 255.0, curve), black)
    with pytest.raises(ValueError, match=r"\[3, 256\]"):
        inference.expected_brightness(dark / 255.0, curve[:, :100])


def test_enhance_with_a_calibrated_exposure(identity_model, tiny_model, photo_folder, tmp_path):
    curve = np.tile(np.linspace(0.0, 255.0, 256) ** 0.5 * 255.0 ** 0.5, (3, 1))
    summary = inference.enhance_paths(
        identity_model, [str(photo_folder / "dark.png"), str(photo_folder / "raw_frame.dng")],
        str(tmp_path / "out"), exposure_curve=curve, tile=None, progress=None)
    assert [os.path.basename(p) for p, _ in summary.written] == ["dark.png"]
    assert "not to raw files" in summary.skipped[0][1]  # the curve describes sRGB images only
    dark = np.asarray(Image.open(photo_folder / "dark.png"), np.float32)
    written = np.asarray(Image.open(summary.written[0][1]), np.float32)
    expected = 255.0 * inference.expected_brightness(dark / 255.0, curve)
    assert written.mean() == pytest.approx(expected, abs=0.6)  # 8-bit rounding
    assert written.mean() > 2 * dark.mean()  # the identity model alone would keep it dark
    with pytest.raises(ValueError, match="rgb model"):
        inference.enhance_paths(model_lib.build_unet("bayer", base_filters=4, depth=1),
                                [str(photo_folder)], str(tmp_path / "b"), exposure_curve=curve)
    with pytest.raises(ValueError, match=r"\[3, 256\]"):
        inference.enhance_file(tiny_model, str(photo_folder / "dark.png"), str(tmp_path),
                               exposure_curve=curve[:2])


def test_unwritable_output_dir_fails_before_any_work(tiny_model, photo_folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    lines = []
    with pytest.raises(inference.OutputDirError, match="a_file"):
        inference.enhance_paths(tiny_model, [str(photo_folder)], str(blocker / "out"),
                                progress=lines.append)
    assert lines == []


def _run_tool(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "enhance")] + args,
                          capture_output=True, text=True, cwd=cwd, env=env, check=False)


def test_enhance_cli(tiny_model, photo_folder, tmp_path):
    model_path = str(tmp_path / "tiny.keras")
    tiny_model.save(model_path)
    ok = _run_tool([str(photo_folder), f"--model={model_path}",
                    f"--output_dir={tmp_path / 'out'}", "--format=jpg"], cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "Enhanced 3 file(s)" in ok.stdout and "broken.jpg" in ok.stdout
    assert sorted(os.listdir(tmp_path / "out")) == [
        "dark16_enhanced.jpg", "dark_enhanced.jpg", "raw_frame_enhanced.jpg"]

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    unwritable = _run_tool([str(photo_folder), f"--model={model_path}",
                            f"--output_dir={blocker / 'out'}"], cwd=str(tmp_path))
    assert unwritable.returncode == 2 and "a_file" in unwritable.stderr

    missing = _run_tool([str(photo_folder), f"--model={tmp_path / 'nope.keras'}",
                         f"--output_dir={tmp_path / 'out2'}"], cwd=str(tmp_path))
    assert missing.returncode == 2 and "nope.keras" in missing.stderr

    no_curve = _run_tool([str(photo_folder), f"--model={model_path}", "--exposure_preset=paper",
                          f"--output_dir={tmp_path / 'out3'}"], cwd=str(tmp_path))
    assert no_curve.returncode == 2 and "holds no exposure curve" in no_curve.stderr
    preset = simulation.load_preset("paper")
    preset.exposure_curve = np.tile(np.linspace(0.0, 255.0, 256), (3, 1))
    simulation.save_preset(preset, str(tmp_path / "camera.json"))
    anchored = _run_tool([str(photo_folder / "dark.png"), f"--model={model_path}",
                          f"--exposure_preset={tmp_path / 'camera.json'}",
                          f"--output_dir={tmp_path / 'out4'}"], cwd=str(tmp_path))
    assert anchored.returncode == 0, anchored.stderr
    assert os.listdir(tmp_path / "out4") == ["dark_enhanced.png"]
