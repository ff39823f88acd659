"""Tests for lowlight_tf.export and tools/export: SavedModel and TFLite against Keras inference.

Tolerances (against `inference.predict_array` of the same .keras model (one pass, the exports'
default) followed by `chroma.filter_chroma`, what tools/enhance writes with --noshift_ensemble,
on a 41 x 70 image, no multiple of the models' size multiple 8, so padding, cropping and the
whole-image exposure gain are exercised; the image is lit from below, so a gain taken after
padding or edge instead of reflect padding is off by > 0.03):
- SavedModel and float32 TFLite, float signature: max abs difference <= 1e-4 (measured 0 and
  5e-7); uint8 signature: within 1 level (measured 0).
- float16 TFLite: PSNR against Keras >= 60 dB; dynamic_int8: >= 45 dB (measured 97 / 87 dB on
  the tiny plain model here; 74 / 46 dB on a 16-filter depth-4 model trained for 300 steps).
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_tool  # pylint: disable=import-error
from lowlight_tf import chroma
from lowlight_tf import export
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import files
from lowlight_tf import inference
from lowlight_tf import model as model_lib

FLOAT_TOLERANCE = 1e-4
UINT8_TOLERANCE = 1
MIN_PSNR = {"float16": 60.0, "dynamic_int8": 45.0}
KINDS = ("plain", "exposure")


def _smooth_image(height, width, peak, seed=0):
    """A smooth synthetic colour image, float32 [height, width, 3] in [0, peak]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scales, phases = rng.uniform(5.0, 12.0, 6), rng.uniform(0.0, 6.0, 6)
    channels = [0.5 + 0.5 * np.sin(x / scales[c] + phases[c]) * np.cos(y / scales[c + 3])
                for c in range(3)]
    return (np.stack(channels, axis=-1) * peak).astype(np.float32)


def _input_for(kind, height=41, width=70, seed=0):
    """The test image: smooth, lit from below (the bottom rows, which padding reflects, are
    the brightest); dark for the exposure-normalising model, full range for the plain one."""
    image = _smooth_image(height, width, 0.12 if kind == "exposure" else 1.0, seed)
    light = 0.3 + 2.0 * (np.arange(height, dtype=np.float32) / max(height - 1, 1)) ** 4
    return np.clip(image * light[:, None, None], 0.0, 1.0)


def _psnr(a, b):
    """PSNR in dB of two float images in [0, 1]."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _keras(model, image, chroma_filter=True, shift_ensemble=False):
    """What the exports must reproduce: Keras inference (one pass by default, or the shift
    ensemble), then (default) the chroma filter."""
    out = inference.predict_array(model, image, shift_ensemble=shift_ensemble)
    return chroma.filter_chroma(out) if chroma_filter else out


def _uint8_reference(model, image_uint8):
    return np.round(_keras(model, image_uint8.astype(np.float32) / 255.0) * 255.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def models(workdir):
    """{kind: (model, .keras path)}: tiny rgb U-Nets (multiple 8), random weights, saved."""
    out = {}
    for index, kind in enumerate(KINDS):
        keras.utils.set_random_seed(index)
        mean = exposure_lib.CANONICAL_DARK_MEAN if kind == "exposure" else 0.0
        model = model_lib.build_unet("rgb", base_filters=4, depth=2, exposure_normalization=mean)
        # Centre the outputs at mid-grey so the [0, 1] clip does not hide differences; the
        # normalised dark input gives tiny activations, so its output contrast is raised.
        head = model.get_layer("head_conv")
        head.bias.assign(np.full(12, 0.5, np.float32))
        if kind == "exposure":
            head.kernel.assign(head.kernel * 20.0)
        path = str(workdir / f"{kind}.keras")
        files.save_model(model, path)
        out[kind] = (model_lib.load_model(path), path)
    return out


@pytest.fixture(scope="module")
def tflite_files(models, workdir):
    """{(kind, quantize): path} of the TFLite exports used by several tests."""
    wanted = [(kind, "none") for kind in KINDS] + [("plain", "float16"),
                                                   ("plain", "dynamic_int8")]
    out = {}
    for kind, quantize in wanted:
        result = export.export(models[kind][1], str(workdir / "tflite"), fmt="tflite",
                               name=f"{kind}_{quantize}", quantize=quantize)
        out[kind, quantize] = result.path
    return out


def test_reference_is_not_trivial(models):
    """The comparisons below would pass vacuously on a clipped or constant output."""
    for kind in KINDS:
        ref = inference.predict_array(models[kind][0], _input_for(kind))
        assert np.mean((ref > 0.0) & (ref < 1.0)) > 0.9
        assert ref.std() > 0.02


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_reproduces_keras(models, workdir, kind):
    model, path = models[kind]
    result = export.export(path, str(workdir / "serving"), fmt="saved_model", name=kind)
    assert result.path == os.path.join(str(workdir / "serving"), kind, "1")
    assert os.path.isfile(os.path.join(result.path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(result.path, "variables"))
    assert sorted(os.listdir(os.path.dirname(result.path))) == ["1"]  # no temporary left

    loaded = tf.saved_model.load(result.path)
    assert set(loaded.signatures) == {export.SIGNATURE_UINT8, export.SIGNATURE_FLOAT}
    image = _input_for(kind)
    enhance = export.saved_model_enhancer(result.path)
    got = enhance(image)
    assert got.shape == (41, 70, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _keras(model, image),
                               rtol=0, atol=FLOAT_TOLERANCE)

    image_uint8 = np.round(image * 255.0).astype(np.uint8)
    got_uint8 = export.saved_model_enhancer(result.path, export.SIGNATURE_UINT8)(image_uint8)
    assert got_uint8.dtype == np.uint8 and got_uint8.shape == (41, 70, 3)
    diff = np.abs(got_uint8.astype(np.int32) - _uint8_reference(model, image_uint8))
    assert diff.max() <= UINT8_TOLERANCE

    # A batch: each image keeps its own exposure gain (one image 3x brighter than the other).
    batch = np.stack([image, np.clip(image * 3.0, 0, 1)])
    got_batch = enhance(batch)
    for item, out in zip(batch, got_batch):
        np.testing.assert_allclose(out, _keras(model, item), rtol=0,
                                   atol=FLOAT_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_float_tflite_reproduces_keras_at_any_size(models, tflite_files, kind):
    model = models[kind][0]
    path = tflite_files[kind, "none"]
    enhance = export.TFLiteEnhancer(path)
    assert set(enhance.interpreter.get_signature_list()) == {export.SIGNATURE_UINT8,
                                                             export.SIGNATURE_FLOAT}
    # One interpreter, three sizes: a non-multiple, an exact multiple, one below the multiple.
    for height, width in ((41, 70), (48, 72), (5, 3)):
        image = _input_for(kind, height, width, seed=height)
        got = enhance(image)
        assert got.shape == (height, width, 3)
        np.testing.assert_allclose(got, _keras(model, image), rtol=0,
                                   atol=FLOAT_TOLERANCE)
    image_uint8 = np.round(_input_for(kind) * 255.0).astype(np.uint8)
    got_uint8 = export.TFLiteEnhancer(path, export.SIGNATURE_UINT8)(image_uint8)
    assert got_uint8.dtype == np.uint8
    diff = np.abs(got_uint8.astype(np.int32) - _uint8_reference(model, image_uint8))
    assert diff.max() <= UINT8_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "dynamic_int8"])
def test_quantized_tflite_psnr_against_keras(models, tflite_files, quantize):
    model = models["plain"][0]
    image = _input_for("plain")
    got = export.TFLiteEnhancer(tflite_files["plain", quantize])(image)
    assert _psnr(got, _keras(model, image)) >= MIN_PSNR[quantize]
    # The quantised weights are really smaller (the graph itself is a fixed ~30 KB here).
    assert (os.path.getsize(tflite_files["plain", quantize])
            < os.path.getsize(tflite_files["plain", "none"]))


@pytest.mark.slow
def test_fixed_input_size_tflite(models, workdir):
    model = models["exposure"][0]
    path = export.export_tflite(model, str(workdir / "fixed"), name="fixed",
                                input_size=(41, 70))
    enhance = export.TFLiteEnhancer(path)
    details = enhance.interpreter.get_signature_runner(export.SIGNATURE_FLOAT).get_input_details()
    assert list(details[export.INPUT_KEY]["shape_signature"]) == [1, 41, 70, 3]
    image = _input_for("exposure")
    np.testing.assert_allclose(enhance(image), _keras(model, image), rtol=0,
                               atol=FLOAT_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("step, value", [("chroma_filter", False), ("shift_ensemble", True)])
def test_exports_with_a_step_switched_follow_keras(models, workdir, step, value):
    """chroma_filter=False exports the network's output as it is; shift_ensemble=True averages
    the four 1-pixel shifts as tools/enhance does by default (Keras's predict_array with it).
    Each step changes the output, so the comparisons with the defaults are not vacuous."""
    model, path = models["exposure"]
    image = _input_for("exposure")
    switched = _keras(model, image, **{step: value})
    assert np.abs(_keras(model, image) - switched).max() > 0.01
    result = export.export(path, str(workdir / f"{step}_{value}"), fmt="saved_model",
                           **{step: value})
    assert getattr(result, step) is value
    np.testing.assert_allclose(export.saved_model_enhancer(result.path)(image), switched,
                               rtol=0, atol=FLOAT_TOLERANCE)
    tflite = export.export_tflite(model, str(workdir / f"{step}_{value}"), **{step: value})
    np.testing.assert_allclose(export.TFLiteEnhancer(tflite)(image), switched, rtol=0,
                               atol=FLOAT_TOLERANCE)
    # Any size, including one below the model's multiple (the shifts' padding and crops).
    small = _input_for("exposure", 5, 3, seed=5)
    np.testing.assert_allclose(export.TFLiteEnhancer(tflite)(small),
                               _keras(model, small, **{step: value}), rtol=0,
                               atol=FLOAT_TOLERANCE)


@pytest.mark.slow
def test_saved_model_refuses_existing_version_and_overwrite_replaces(models, workdir):
    model = models["plain"][0]
    output_dir = str(workdir / "again")
    first = export.export_saved_model(model, output_dir, name="m")
    marker = os.path.join(first, "marker.txt")
    files.write_text(marker, "from the first export")
    with pytest.raises(files.OutputExistsError, match="--overwrite"):
        export.export_saved_model(model, output_dir, name="m")
    assert os.path.isfile(marker)  # the refused export left the first one alone
    export.export_saved_model(model, output_dir, name="m", version=2)  # a new version is fine
    export.export_saved_model(model, output_dir, name="m", overwrite=True)
    assert not os.path.exists(marker)
    assert sorted(os.listdir(os.path.join(output_dir, "m"))) == ["1", "2"]


@pytest.mark.slow
def test_tool_end_to_end_and_refuses_to_overwrite(models, workdir):
    model, path = models["exposure"]
    output_dir = str(workdir / "tool")
    args = [f"--model={path}", f"--output_dir={output_dir}", "--format=tflite"]
    run = run_tool("export", *args, "--quantize=float16", "--name=phone")
    assert run.returncode == 0, run.stderr
    written = os.path.join(output_dir, "phone.tflite")
    assert written in run.stdout
    image = _input_for("exposure")
    got = export.TFLiteEnhancer(written)(image)
    assert _psnr(got, _keras(model, image)) >= MIN_PSNR["float16"]
    before = open(written, "rb").read()

    again = run_tool("export", *args, "--quantize=none", "--name=phone")
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and written in again.stderr
    assert open(written, "rb").read() == before
    assert sorted(os.listdir(output_dir)) == ["phone.tflite"]  # no temporary left

    # --nochroma_filter and --shift_ensemble reach the export: the four shifts averaged, the
    # output as it is (each step changes the output: test_exports_with_a_step_switched_...).
    raw = run_tool("export", *args, "--nochroma_filter", "--shift_ensemble", "--name=raw")
    assert raw.returncode == 0, raw.stderr
    assert "chroma filter off, shift ensemble on" in raw.stdout
    np.testing.assert_allclose(
        export.TFLiteEnhancer(os.path.join(output_dir, "raw.tflite"))(image),
        _keras(model, image, chroma_filter=False, shift_ensemble=True), rtol=0,
        atol=FLOAT_TOLERANCE)


def test_refusals_say_what_to_do(models, workdir, monkeypatch):
    model, path = models["plain"]
    with pytest.raises(export.ExportError, match="tflite only"):
        export.export(path, str(workdir / "x"), fmt="saved_model", quantize="float16")
    with pytest.raises(files.OutputIsInputError):
        export.export_tflite(model, str(workdir), name="victim",
                             inputs=[str(workdir / "victim.tflite")])
    bayer = model_lib.build_unet("bayer", base_filters=4, depth=1)
    with pytest.raises(export.ExportError, match="rgb"):
        export.build_archive(bayer)
    with pytest.raises(export.ExportError, match="HEIGHTxWIDTH"):
        export.parse_input_size("45by70")
    assert export.parse_input_size("3000x4000") == (3000, 4000)
    assert export.parse_input_size("") is None
    with pytest.raises(export.ExportError, match="plain"):
        export.export_tflite(model, str(workdir), name="../escape")
    monkeypatch.setattr(export, "PRETRAINED_MODULE", "lowlight_tf.no_such_module")
    with pytest.raises(export.ExportError, match="pass --model"):
        export.export(None, str(workdir / "y"), fmt="tflite")
