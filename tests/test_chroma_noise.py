"""Tests for lowlight_tf.chroma (chroma noise in flat dark regions) and its evaluation columns."""
import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from data_prep import prepare
from lowlight_tf import chroma
from lowlight_tf import enhance as enhance_lib
from lowlight_tf import evaluation
from lowlight_tf import layers
from lowlight_tf import model as model_lib

SIGMA = 4.0


def _from_ycbcr(ycbcr):
    """float [H, W, 3] Y, Cb, Cr -> RGB by the inverse of chroma.YCBCR."""
    return ycbcr @ np.linalg.inv(chroma.YCBCR).T


def _flat(value, height=64, width=96):
    return np.broadcast_to(np.asarray(value, np.float64), (height, width, 3)).copy()


def test_chroma_noise_of_known_std_in_cb_and_cr():
    reference = _flat([60.0, 50.0, 40.0])
    rng = np.random.default_rng(0)
    ycbcr = reference @ chroma.YCBCR.T
    ycbcr[..., 1:] += rng.normal(0.0, SIGMA, ycbcr[..., 1:].shape)
    noisy = _from_ycbcr(ycbcr)
    assert 5.0 < noisy.min() and noisy.max() < 250.0  # no clipping
    assert chroma.chroma_noise(noisy, reference) == pytest.approx(SIGMA, rel=0.05)
    assert chroma.chroma_noise(reference, reference) == pytest.approx(0.0, abs=1e-9)


def test_opposite_noise_on_red_and_green():
    # R + n, G - n: Cb = (-0.168736 + 0.331264) n = 0.162528 n, Cr = (0.5 + 0.418688) n
    # = 0.918688 n; pooled over both channels sqrt((0.162528^2 + 0.918688^2) / 2) = 0.65970.
    reference = _flat([50.0, 50.0, 50.0])
    noise = np.random.default_rng(1).normal(0.0, SIGMA, reference.shape[:2])
    noisy = reference + np.stack([noise, -noise, np.zeros_like(noise)], axis=-1)
    assert chroma.chroma_noise(noisy, reference) == pytest.approx(0.65970 * SIGMA, rel=0.05)


def test_luma_noise_a_colour_cast_and_a_gradient_are_not_chroma_noise():
    rows, columns = np.mgrid[0:64, 0:96].astype(np.float64)
    # A dark reference whose colour drifts slowly across the frame (a vignette's tint).
    reference = np.stack([40.0 + 0.2 * columns, 40.0 + 0.1 * rows, 45.0 - 0.15 * columns], -1)
    noise = np.random.default_rng(2).normal(0.0, 2 * SIGMA, reference.shape[:2])
    luma_only = reference + noise[..., None]  # the same noise on R, G and B: grey grain
    cast = reference + np.array([6.0, -3.0, 9.0])
    assert chroma.chroma_noise(reference, reference) < 1e-6
    assert chroma.chroma_noise(luma_only, reference) < 1e-3
    assert chroma.chroma_noise(cast, reference) < 1e-6
    # The same chroma noise on top still measures its std.
    ycbcr = cast @ chroma.YCBCR.T
    ycbcr[..., 1:] += np.random.default_rng(3).normal(0.0, SIGMA, ycbcr[..., 1:].shape)
    assert chroma.chroma_noise(_from_ycbcr(ycbcr), reference) == pytest.approx(SIGMA, rel=0.05)


def test_blocks_are_chosen_on_the_reference_dark_and_flat():
    # Reference of 4 x 16 blocks: a flat dark quarter (columns 0-31), a textured dark band as
    # dark on average (32-63), the rest bright. The dark quarter of the blocks is columns 0-63;
    # its flatter half is columns 0-31.
    reference = _flat([30.0, 28.0, 26.0], 64, 256)
    texture = np.random.default_rng(4).uniform(-20.0, 20.0, (64, 32))
    reference[:, 32:64] += texture[..., None]
    reference[:, 64:] = 200.0
    selected = chroma.flat_dark_blocks(reference).reshape(4, 16)
    assert selected[:, :2].all() and not selected[:, 2:].any()

    rng = np.random.default_rng(5)

    def with_chroma_noise(columns):
        ycbcr = reference @ chroma.YCBCR.T
        ycbcr[:, columns, 1:] += rng.normal(0.0, SIGMA, ycbcr[:, columns, 1:].shape)
        return np.clip(_from_ycbcr(ycbcr), 0.0, 255.0)

    assert chroma.chroma_noise(with_chroma_noise(slice(64, None)), reference) < 1e-6
    assert chroma.chroma_noise(with_chroma_noise(slice(32, 64)), reference) < 1e-6
    noisy = with_chroma_noise(slice(0, 32))
    assert chroma.chroma_noise(noisy, reference) == pytest.approx(SIGMA, rel=0.15)
    # The blocks chosen once and passed in give the same figure; other blocks another.
    blocks = chroma.flat_dark_blocks(reference)
    assert chroma.chroma_noise(noisy, reference, blocks) == chroma.chroma_noise(noisy, reference)
    assert chroma.chroma_noise(noisy, reference, ~blocks) < 0.5 * SIGMA


def test_no_dark_flat_region_is_nan():
    bright = _flat([180.0, 170.0, 160.0])
    assert np.isnan(chroma.chroma_noise(bright, bright))
    tiny = _flat([10.0, 10.0, 10.0], 12, 40)  # smaller than a block
    assert np.isnan(chroma.chroma_noise(tiny, tiny))


def test_bad_inputs_raise():
    reference = _flat([20.0, 20.0, 20.0])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        chroma.chroma_noise(reference + 300.0, reference)
    with pytest.raises(ValueError, match="same shape"):
        chroma.chroma_noise(reference[:32], reference)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        chroma.chroma_noise(reference[..., 0], reference[..., 0])


def test_evaluation_reports_chroma_noise_of_outputs_and_references(tmp_path):
    """The per-image CSV and summary carry the model's and the baselines' chroma noise next to
    the reference's, measured on the same blocks; the old columns keep their order."""
    rng = np.random.default_rng(6)
    for folder in ("low", "high"):
        (tmp_path / "input" / folder).mkdir(parents=True)
    for i in range(3):
        # Dark flat left part with a little chroma noise of its own, a bright textured right.
        bright = np.full((32, 64, 3), 40.0)
        bright[:, :32] += rng.normal(0.0, 1.0, (32, 32, 3))
        bright[:, 32:] = rng.uniform(100.0, 250.0, (32, 32, 3))
        bright = np.clip(np.round(bright), 0, 255).astype(np.uint8)
        dark = np.clip(bright * 0.1 + rng.normal(0.0, 1.5, bright.shape), 0, 255)
        Image.fromarray(np.round(dark).astype(np.uint8)).save(
            tmp_path / "input" / "low" / f"{i}.png")
        Image.fromarray(bright).save(tmp_path / "input" / "high" / f"{i}.png")
    prepare.make_tfrecords("pairs", output_dir=str(tmp_path / "tfr"), name="toy",
                           input_dir=str(tmp_path / "input"), splits="test:1.0")
    keras.utils.set_random_seed(0)
    model = model_lib.build_unet("rgb", base_filters=4, depth=2)
    rows = evaluation.evaluate(model, [str(tmp_path / "tfr" / "toy")], str(tmp_path / "eval"),
                               save_images=0, baselines=("input", "he"), model_label="tiny",
                               progress=None)

    with open(tmp_path / "eval" / "per_image.csv", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        per_image = list(reader)
    assert reader.fieldnames == ["dataset", "id", "method", "gain", "psnr", "psnr_gt_mean",
                                 "ssim", "brightness_ratio", "chroma_noise",
                                 "chroma_noise_reference"]
    brights = {f"{i}.png": np.asarray(Image.open(tmp_path / "input" / "high" / f"{i}.png"),
                                      np.float64) for i in range(3)}
    darks = {f"{i}.png": np.asarray(Image.open(tmp_path / "input" / "low" / f"{i}.png"),
                                    np.float64) for i in range(3)}
    assert len(per_image) == 3 * 3
    for line in per_image:
        bright = brights[line["id"]]
        real = chroma.chroma_noise(bright, bright)
        assert 0.3 < real < 2.0  # the references' own noise, about 0.7 (std 1 per channel)
        assert float(line["chroma_noise_reference"]) == pytest.approx(real, abs=1e-4)
        if line["method"] == "input":
            assert float(line["chroma_noise"]) == pytest.approx(
                chroma.chroma_noise(darks[line["id"]], bright), abs=1e-4)
        assert np.isfinite(float(line["chroma_noise"]))

    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "flat dark" in summary["metrics"]["chroma_noise"]
    for row in rows:
        lines = [r for r in per_image if r["method"] == row["method"]]
        assert row["chroma_noise"] == pytest.approx(
            np.mean([float(r["chroma_noise"]) for r in lines]), abs=1e-3)
        assert row["chroma_noise_reference"] == pytest.approx(
            np.mean([chroma.chroma_noise(b, b) for b in brights.values()]), abs=1e-6)
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| Chroma noise in flat dark regions: output / reference |" in table
    real = rows[0]["chroma_noise_reference"]
    assert f"| {rows[0]['chroma_noise']:.2f} / {real:.2f} |" in table


def test_filter_removes_chroma_noise_where_the_luma_is_flat_and_keeps_the_luma():
    reference = _flat([60.0, 50.0, 40.0])
    ycbcr = reference @ chroma.YCBCR.T
    ycbcr[..., 1:] += np.random.default_rng(7).normal(0.0, SIGMA, ycbcr[..., 1:].shape)
    noisy = _from_ycbcr(ycbcr)
    filtered = 255.0 * chroma.filter_chroma(noisy / 255.0).astype(np.float64)
    assert filtered.dtype == np.float64 and filtered.shape == noisy.shape
    # Luma untouched (no clipping here); chroma averaged over 17 x 17 windows: std / 17 or so.
    np.testing.assert_allclose((filtered @ chroma.YCBCR.T)[..., 0], ycbcr[..., 0], atol=1e-3)
    assert chroma.chroma_noise(noisy, reference) == pytest.approx(SIGMA, rel=0.05)
    assert chroma.chroma_noise(filtered, reference) < SIGMA / 8
    # The mean colour stays.
    np.testing.assert_allclose(filtered.mean(axis=(0, 1)), noisy.mean(axis=(0, 1)), atol=0.2)


def test_filter_keeps_a_colour_edge_that_has_a_luma_edge():
    image = np.zeros((40, 60, 3), np.float32)
    image[:, :30] = [0.05, 0.02, 0.02]  # dark red
    image[:, 30:] = [0.3, 0.8, 0.3]  # bright green
    filtered = chroma.filter_chroma(image)
    # Beyond two windows' reach (16 px) nothing changes; nearer the edge the colour moves far
    # less than under a plain 17 x 17 blur of the chroma, which mixes the two sides.
    np.testing.assert_allclose(filtered[:, :14], image[:, :14], atol=1e-4)
    np.testing.assert_allclose(filtered[:, 46:], image[:, 46:], atol=1e-4)
    ycbcr = image @ chroma.YCBCR.T.astype(np.float32)
    ycbcr[..., 1:] = ndimage.uniform_filter(ycbcr[..., 1:], size=(17, 17, 1), mode="reflect")
    blurred = np.clip(ycbcr @ np.linalg.inv(chroma.YCBCR).T, 0, 1)
    assert np.abs(filtered - image).max() < np.abs(blurred - image).max() / 4


def _guided_filter_scipy(image, radius, eps):
    """The guided filter of Cb and Cr by the luma (He et al. 2010, algorithm 1), written with
    scipy's box filter in float64: an independent reference for chroma.filter_chroma."""
    ycc = image.astype(np.float64) @ chroma.YCBCR.T

    def mean(plane):
        return ndimage.uniform_filter(plane, size=2 * radius + 1, mode="reflect")
    luma = ycc[..., 0]
    luma_var = mean(luma * luma) - mean(luma) ** 2
    for channel in (1, 2):
        plane = ycc[..., channel]
        slope = (mean(luma * plane) - mean(luma) * mean(plane)) / (luma_var + eps)
        ycc[..., channel] = mean(slope) * luma + mean(mean(plane) - slope * mean(luma))
    return np.clip(ycc @ np.linalg.inv(chroma.YCBCR).T, 0.0, 1.0)


@pytest.mark.parametrize("height, width, radius, eps", [
    (37, 53, 8, 1e-2), (5, 3, 8, 1e-2), (1, 9, 2, 1e-3), (24, 24, 4, 1e-4)])
def test_filter_equals_the_guided_filter_at_any_size(height, width, radius, eps, monkeypatch):
    """The TensorFlow filter (what enhance and the exports run) matches the textbook guided
    filter, also on images smaller than its window (mirrored more than once)."""
    image = np.random.default_rng(height * width).random((height, width, 3)).astype(np.float32)
    expected = _guided_filter_scipy(image, radius, eps)
    got = chroma.filter_chroma(image, radius=radius, eps=eps)
    assert got.dtype == np.float32 and got.shape == image.shape
    assert np.abs(expected - image).max() > 0.05  # the filter does change this image
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # In strips (what filter_chroma does on large images) the result is the same.
    monkeypatch.setattr(chroma, "FILTER_STRIP_ROWS", 7)
    np.testing.assert_allclose(chroma.filter_chroma(image, radius=radius, eps=eps), got,
                               atol=1e-6)
    batch = np.stack([image, image[::-1]])
    np.testing.assert_allclose(chroma.filter_chroma_tensor(batch, radius, eps).numpy()[1],
                               _guided_filter_scipy(image[::-1], radius, eps), atol=2e-5)


def test_filter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="RGB"):
        chroma.filter_chroma(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="radius"):
        chroma.filter_chroma(np.zeros((8, 8, 3)), radius=0)
    with pytest.raises(ValueError, match="eps"):
        chroma.filter_chroma(np.zeros((8, 8, 3)), eps=0.0)


def test_evaluation_chroma_filter_row_and_enhance_default(tmp_path):
    """evaluate --chroma_filter adds the model's filtered row (lower chroma noise); enhance
    applies the filter by default and writes the model's output as it is without it."""
    rng = np.random.default_rng(8)
    for folder in ("low", "high"):
        (tmp_path / "input" / folder).mkdir(parents=True)
    bright = np.full((48, 64, 3), 40, np.uint8)
    for i in range(2):
        ycbcr = (bright.astype(np.float64) * 0.5) @ chroma.YCBCR.T
        ycbcr[..., 1:] += rng.normal(0.0, 3.0, ycbcr[..., 1:].shape)  # chroma-noisy dark frame
        dark = np.clip(np.round(_from_ycbcr(ycbcr)), 0, 255).astype(np.uint8)
        Image.fromarray(dark).save(tmp_path / "input" / "low" / f"{i}.png")
        Image.fromarray(bright).save(tmp_path / "input" / "high" / f"{i}.png")
    prepare.make_tfrecords("pairs", output_dir=str(tmp_path / "tfr"), name="toy",
                           input_dir=str(tmp_path / "input"), splits="test:1.0")
    inputs = keras.Input(shape=(None, None, 3))  # identity: its output is the noisy input
    identity = keras.Model(inputs, layers.DepthToSpace(2, name="head_depth_to_space")(
        layers.SpaceToDepth(2, name="space_to_depth")(inputs)))
    rows = evaluation.evaluate(identity, [str(tmp_path / "tfr" / "toy")], str(tmp_path / "eval"),
                               save_images=0, baselines=(), model_label="identity",
                               chroma_filter=True, progress=None)
    assert [(r["method"], r["kind"]) for r in rows] == [
        ("identity", "model"), ("identity + chroma filter", "model")]
    assert rows[0]["chroma_noise"] > 2.0 and rows[1]["chroma_noise"] < rows[0]["chroma_noise"] / 4
    assert rows[1]["psnr"] > rows[0]["psnr"]

    dark_path = str(tmp_path / "input" / "low" / "0.png")
    dark = np.asarray(Image.open(dark_path), np.float64)
    (tmp_path / "plain").mkdir()
    plain = enhance_lib.enhance_file(identity, dark_path, str(tmp_path / "plain"),
                                     enhance_lib.EnhanceOptions(tile=None, chroma_filter=False))
    np.testing.assert_array_equal(np.asarray(Image.open(plain), np.float64), dark)
    (tmp_path / "default").mkdir()
    default = enhance_lib.enhance_file(identity, dark_path, str(tmp_path / "default"),
                                       enhance_lib.EnhanceOptions(tile=None))
    written = np.asarray(Image.open(default), np.float64)
    expected = np.round(255.0 * chroma.filter_chroma(dark / 255.0))
    assert np.abs(written - expected).max() <= 1.0
    assert chroma.chroma_noise(written, dark) < chroma.chroma_noise(dark, dark) / 4
