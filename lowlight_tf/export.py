"""Exporting a trained U-Net for serving and phones: a SavedModel and a TFLite file.

Both hold the whole inference path of `lowlight_tf.inference.predict_array` for one image at
once (no tiling), so a server or a phone app needs no code of this project:
1. the exposure gain of each whole image, for models with `ExposureNormalization` (its mean,
   taken before padding, as `predict_array` takes it);
2. reflect padding at the bottom/right to the model's size multiple (`model.size_multiple`);
3. the network after its exposure normalisation;
4. the crop back to the input's size; exported with `shift_ensemble=True`, steps 2-4 for the
   image shifted by each of the four 1-pixel shifts (`inference.ENSEMBLE_SHIFTS`, reflected
   into the gap) and the mean of the four, as tools/enhance runs by default (removes the
   U-Net's 2-pixel periodic texture; 4x the time and, measured in TFLite, 2.5x the peak memory:
   `benchmarks/export.py --modes=tflite,tflite_ensemble`, so exports default to one pass);
5. the clip to [0, 1] and the chroma filter tools/enhance applies by default
   (`chroma.filter_chroma_tensor`: the output's Cb/Cr guided-filtered by its luma, removing the
   coloured blotches of dark shadows), unless exported with `chroma_filter=False`;
6. for uint8, x 255 rounded.

Signatures (the same in the SavedModel and the TFLite file):
- `serving_default`: input `image` uint8 [B, H, W, 3] (an ordinary 8-bit photo), output
  `enhanced` uint8 [B, H, W, 3].
- `enhance_float`: input `image` float32 [B, H, W, 3] in [0, 1], output `enhanced` float32
  [B, H, W, 3] in [0, 1].
Any H and W >= 1; each image of a batch gets its own exposure gain.

Layouts: the SavedModel is written as `OUTPUT_DIR/NAME/VERSION/` (saved_model.pb, variables/),
the layout TensorFlow Serving watches; the TFLite file as `OUTPUT_DIR/NAME.tflite`. Both are
written under a hidden temporary name and renamed when complete, and never replace an existing
export unless `overwrite` is set. The TFLite file takes any H x W by default (call the signature
runner, or `interpreter.resize_tensor_input` then `allocate_tensors`, for each new size); with
`input_size=(H, W)` its input is fixed to [1, H, W, 3], which delegates that need static shapes
(phone GPUs, NNAPI) require.

The models are traced through `keras.export.ExportArchive`, not a bare `tf.Module` holding the
Keras model: the TFLite converter does not freeze Keras 3 variables reached through a plain
`tf.Module` and writes a file whose weights are uninitialised variables (all-NaN output).
"""
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from lowlight_tf import chroma
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import files
from lowlight_tf import inference
from lowlight_tf import model as model_lib

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic_int8")
DEFAULT_NAME = "lowlight"
DEFAULT_VERSION = 1
SIGNATURE_UINT8 = "serving_default"
SIGNATURE_FLOAT = "enhance_float"
INPUT_KEY = "image"
OUTPUT_KEY = "enhanced"
# The shipped pretrained model, when this install has one (the module is optional).
PRETRAINED_MODULE = "lowlight_tf.pretrained"


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says what to do."""


def default_model_path():
    """The shipped pretrained model's path (`lowlight_tf.pretrained.model_path()`).

    Raises:
      ExportError: this install has no shipped model.
    """
    # The pretrained module is package data that an install may lack; only its absence is
    # expected, so an error inside an existing module still surfaces.
    if importlib.util.find_spec(PRETRAINED_MODULE) is None:
        raise ExportError("No shipped model in this install; pass --model (a .keras file or a "
                          "tools/train model_dir).")
    try:
        path = importlib.import_module(PRETRAINED_MODULE).model_path()
    except FileNotFoundError as e:  # the module is there, its model file is not
        raise ExportError(str(e)) from e
    if not os.path.exists(path):
        raise ExportError(f"The shipped model {path} is missing from this install; reinstall "
                          "lowlight_tf or pass --model.")
    return os.fspath(path)


def parse_input_size(text):
    """"HxW" (e.g. "3000x4000") -> (H, W), positive ints; None or "" -> None (any size)."""
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        height = width = 0
    if len(parts) != 2 or height < 1 or width < 1:
        raise ExportError(f"Input size {text!r} is not HEIGHTxWIDTH with positive integers "
                          "(e.g. 3000x4000).")
    return height, width


def _padding_indices(length, padded, reflect, offset=0):
    """Source index of each of `padded` positions along an axis of `length` (int32 tensors).

    The side starts at position `offset` (the positions before it and after its end are
    padding). Reflection without repeating the edge (numpy's "reflect"), continued as a triangle
    wave for pads longer than the side; `reflect` False repeats the edge (numpy's "edge").
    """
    positions = tf.range(padded) - offset
    period = tf.maximum(2 * (length - 1), 1)
    folded = positions % period  # floor modulo: non-negative for positions before the side
    reflected = tf.where(folded < length, folded, period - folded)
    return tf.where(reflect, reflected, tf.clip_by_value(positions, 0, length - 1))


def enhance_tensor(model, images, chroma_filter=True, shift_ensemble=False):
    """The model's whole-image enhancement as TensorFlow ops (traceable, exportable).

    Equals `chroma.filter_chroma(inference.predict_array(model, image, shift_ensemble=...))`
    for each image of the batch (without the filter when `chroma_filter` is False).

    Args:
      model: an rgb U-Net from `lowlight_tf.model`.
      images: float32 [B, H, W, 3] in [0, 1], any H, W >= 1.
      chroma_filter: apply the chroma filter last, as tools/enhance does by default.
      shift_ensemble: average the four 1-pixel shifts, as tools/enhance does by default (4x
        the compute).

    Returns:
      float32 [B, H, W, 3] in [0, 1].
    """
    core = exposure_lib.after_exposure_normalization(model)
    return _enhance_with(model, core, images, chroma_filter, shift_ensemble)


def _enhance_with(model, core, images, chroma_filter, shift_ensemble):
    """`enhance_tensor` with the network after the exposure normalisation built once."""
    multiple = model_lib.size_multiple(model)
    layer = exposure_lib.exposure_layer(model)
    if layer is not None:
        # The gain of each whole, unpadded image, as ExposureNormalization computes it.
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = images * exposure_lib.normalization_gain(mean, layer.target_mean)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    # Reflection needs 2 pixels per side; a 1-pixel side is repeated (as predict_array does).
    reflect = tf.minimum(height, width) > 1
    shifts = inference.ENSEMBLE_SHIFTS if shift_ensemble else ((0, 0),)
    total = 0.0
    for dy, dx in shifts:  # as inference.predict_array: shifted down/right, padded as one pass
        padded_h = (height + dy + multiple - 1) // multiple * multiple
        padded_w = (width + dx + multiple - 1) // multiple * multiple
        padded = tf.gather(images, _padding_indices(height, padded_h, reflect, dy), axis=1)
        padded = tf.gather(padded, _padding_indices(width, padded_w, reflect, dx), axis=2)
        total += core(padded, training=False)[:, dy:dy + height, dx:dx + width, :]
    out = tf.clip_by_value(total / float(len(shifts)), 0.0, 1.0)
    return chroma.filter_chroma_tensor(out) if chroma_filter else out


def build_archive(model, input_size=None, chroma_filter=True, shift_ensemble=False):
    """A keras.export.ExportArchive with the `serving_default` and `enhance_float` signatures.

    Args:
      model: an rgb U-Net from `lowlight_tf.model`.
      input_size: None for any [B, H, W, 3]; (H, W) fixes the input to [1, H, W, 3].
      chroma_filter: the signatures apply the chroma filter last (`enhance_tensor`).
      shift_ensemble: the signatures average the four 1-pixel shifts (`enhance_tensor`).
    """
    if int(model.input_shape[-1]) != 3:
        raise ExportError("Only rgb models can be exported: a bayer model's input is a packed "
                          "camera raw mosaic that needs rawpy decoding first (tools/enhance).")
    core = exposure_lib.after_exposure_normalization(model)
    shape = [None, None, None, 3] if input_size is None else [1, *input_size, 3]

    def enhance_uint8(image):
        images = tf.cast(image, tf.float32) / 255.0
        out = _enhance_with(model, core, images, chroma_filter, shift_ensemble)
        return {OUTPUT_KEY: tf.cast(tf.round(out * 255.0), tf.uint8)}

    def enhance_float(image):
        return {OUTPUT_KEY: _enhance_with(model, core, image, chroma_filter, shift_ensemble)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_UINT8, enhance_uint8,
                         input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_KEY)])
    archive.add_endpoint(SIGNATURE_FLOAT, enhance_float,
                         input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_KEY)])
    return archive


def saved_model_path(output_dir, name=DEFAULT_NAME, version=DEFAULT_VERSION):
    """`output_dir/name/version`, the folder TensorFlow Serving loads."""
    return os.path.join(output_dir, name, str(int(version)))


def tflite_path(output_dir, name=DEFAULT_NAME):
    """`output_dir/name.tflite`."""
    return os.path.join(output_dir, f"{name}.tflite")


def _check_name(name, version=DEFAULT_VERSION):
    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        raise ExportError(f"Export name {name!r} must be a plain, non-hidden file name (no "
                          "folders); pass e.g. --name=lowlight.")
    if int(version) < 1:
        raise ExportError(f"Version {version} must be a positive integer (TensorFlow Serving "
                          "serves the highest one).")


def _guard(path, overwrite, inputs):
    """Claims `path` with files.OutputGuard: refuses inputs and, without overwrite, any file."""
    guard = files.OutputGuard(inputs=inputs, overwrite=overwrite)
    guard.claim(path)


def _write_archive(archive, directory):
    """Writes the SavedModel quietly (ExportArchive prints every endpoint otherwise)."""
    archive.write_out(directory, verbose=False)


def export_saved_model(model, output_dir, *, name=DEFAULT_NAME, version=DEFAULT_VERSION,
                       overwrite=False, inputs=(), chroma_filter=True, shift_ensemble=False):
    """Writes the model as a SavedModel for TensorFlow Serving at `output_dir/name/version/`.

    The folder is written as a hidden sibling (`.VERSION.*.partial`, which Serving ignores) and
    renamed into place when complete; with `overwrite` an existing version is replaced only then.

    Args:
      model: an rgb U-Net from `lowlight_tf.model`.
      output_dir: folder for the export (created if missing).
      name: the model name Serving uses (the folder under output_dir).
      version: positive integer, the version folder.
      overwrite: replace an existing `name/version`.
      inputs: paths that must never be written (the source model).
      chroma_filter: the signatures apply the chroma filter last (`enhance_tensor`).
      shift_ensemble: the signatures average the four 1-pixel shifts (`enhance_tensor`).

    Returns:
      The version folder's path.

    Raises:
      ExportError, files.OutputExistsError, files.OutputIsInputError.
    """
    _check_name(name, version)
    final = saved_model_path(output_dir, name, version)
    _guard(final, overwrite, inputs)
    archive = build_archive(model, chroma_filter=chroma_filter, shift_ensemble=shift_ensemble)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{int(version)}.", suffix=".partial", dir=parent)
    try:
        _write_archive(archive, temporary)
        _replace_directory(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def _replace_directory(source, target):
    """Renames folder `source` to `target`, moving an existing `target` aside first."""
    if not os.path.lexists(target):
        os.replace(source, target)
        return
    parent, base = os.path.split(target)
    old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(old, target)  # put the previous export back
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


def _set_quantization(converter, quantize):
    """Post-training quantisation of the weights: float16 halves them, dynamic_int8 quarters
    them (activations stay float; int8 kernels where the runtime has them)."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got "
                          f"{quantize!r}.")
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]


def tflite_bytes(model, *, quantize="none", input_size=None, chroma_filter=True,
                 shift_ensemble=False):
    """Converts the model to a TFLite flatbuffer with both signatures.

    Args:
      model: an rgb U-Net from `lowlight_tf.model`.
      quantize: "none" (float32), "float16" or "dynamic_int8" (post-training, no calibration
        data needed).
      input_size: None for any size (the default); (H, W) fixes the input to [1, H, W, 3].
      chroma_filter: the signatures apply the chroma filter last (`enhance_tensor`).
      shift_ensemble: the signatures average the four 1-pixel shifts (`enhance_tensor`).

    Returns:
      bytes, the .tflite file.
    """
    archive = build_archive(model, input_size, chroma_filter, shift_ensemble)
    with tempfile.TemporaryDirectory(prefix="lowlight_export.") as directory:
        _write_archive(archive, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=[SIGNATURE_UINT8, SIGNATURE_FLOAT])
        # Builtin ops only: a phone runtime without the Flex delegate must run the file.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        _set_quantization(converter, quantize)
        return converter.convert()


def export_tflite(model, output_dir, *, name=DEFAULT_NAME, quantize="none", input_size=None,
                  overwrite=False, inputs=(), chroma_filter=True, shift_ensemble=False):
    """Writes `output_dir/name.tflite` atomically (see `tflite_bytes` for the arguments).

    Returns:
      The file's path.

    Raises:
      ExportError, files.OutputExistsError, files.OutputIsInputError.
    """
    _check_name(name)
    path = tflite_path(output_dir, name)
    _guard(path, overwrite, inputs)
    data = tflite_bytes(model, quantize=quantize, input_size=input_size,
                        chroma_filter=chroma_filter, shift_ensemble=shift_ensemble)
    os.makedirs(output_dir, exist_ok=True)
    files.write_bytes(path, data)
    return path


@dataclasses.dataclass
class ExportResult:
    """What `export` wrote: `path` (folder or file), `format`, `quantize`, `input_size`,
    `model_path` (the source), `chroma_filter` (whether the signatures filter chroma) and
    `shift_ensemble` (whether they average the four 1-pixel shifts)."""
    path: str
    format: str
    quantize: str
    input_size: tuple = None
    model_path: str = ""
    chroma_filter: bool = True
    shift_ensemble: bool = False


def export(model_path, output_dir, *, fmt, name=DEFAULT_NAME, version=DEFAULT_VERSION,
           quantize="none", input_size=None, overwrite=False, chroma_filter=True,
           shift_ensemble=False):
    """Loads a model and exports it; the library side of tools/export.

    Args:
      model_path: a .keras file, a tools/train model_dir or checkpoint; None for the shipped
        pretrained model (`default_model_path`).
      output_dir: folder for the export.
      fmt: "saved_model" or "tflite".
      name, version: the export's name; version applies to saved_model only.
      quantize: TFLite weight quantisation (`QUANTIZATIONS`); saved_model takes only "none".
      input_size: TFLite only: None for any size, else (H, W).
      overwrite: replace an existing export of the same name (and version).
      chroma_filter: the signatures apply the chroma filter last, as tools/enhance does.
      shift_ensemble: the signatures average the four 1-pixel shifts, as tools/enhance does
        by default (4x the time, 2.5x the peak memory in TFLite; off by default).

    Returns:
      ExportResult.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if fmt == "saved_model" and quantize != "none":
        raise ExportError("--quantize applies to --format=tflite only; a SavedModel keeps the "
                          "trained float32 weights.")
    if fmt == "saved_model" and input_size is not None:
        raise ExportError("--input_size applies to --format=tflite only; the SavedModel takes "
                          "any height and width.")
    _check_name(name, version)
    model_path = default_model_path() if model_path is None else os.fspath(model_path)
    # Refuse an existing output before the (slow) model load and conversion.
    target = (saved_model_path(output_dir, name, version) if fmt == "saved_model"
              else tflite_path(output_dir, name))
    _guard(target, overwrite, [model_path])
    model = model_lib.load_model(model_path)
    if fmt == "saved_model":
        path = export_saved_model(model, output_dir, name=name, version=version,
                                  overwrite=overwrite, inputs=[model_path],
                                  chroma_filter=chroma_filter, shift_ensemble=shift_ensemble)
    else:
        path = export_tflite(model, output_dir, name=name, quantize=quantize,
                             input_size=input_size, overwrite=overwrite, inputs=[model_path],
                             chroma_filter=chroma_filter, shift_ensemble=shift_ensemble)
    return ExportResult(path=path, format=fmt, quantize=quantize, input_size=input_size,
                        model_path=model_path, chroma_filter=chroma_filter,
                        shift_ensemble=shift_ensemble)


# ----------------------------------------------------------------------------------------------
# Running the exports from Python (tests, benchmarks, a user checking a file).

@contextlib.contextmanager
def _quiet_interpreter_warning():
    # tf.lite.Interpreter warns on every construction that it moves to the ai_edge_litert
    # package; it still works in TF 2.21 and is the interpreter this environment has.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        yield


class TFLiteEnhancer:
    """Runs one signature of an exported .tflite file on images of any allowed size.

    `TFLiteEnhancer(path)(image)`: image uint8 [H, W, 3] or [B, H, W, 3] (signature
    serving_default) or float32 in [0, 1] (enhance_float); returns the same shape and dtype.
    The signature runner resizes the input tensors for each new size.
    """

    def __init__(self, path, signature=SIGNATURE_FLOAT, num_threads=None):
        with _quiet_interpreter_warning():
            self.interpreter = tf.lite.Interpreter(model_path=os.fspath(path),
                                                   num_threads=num_threads)
        available = self.interpreter.get_signature_list()
        if signature not in available:
            raise ExportError(f"{path} has no signature {signature!r}; it has "
                              f"{', '.join(sorted(available))}.")
        self.signature = signature
        self._runner = self.interpreter.get_signature_runner(signature)
        self.dtype = np.uint8 if signature == SIGNATURE_UINT8 else np.float32

    def __call__(self, image):
        image = np.asarray(image)
        single = image.ndim == 3
        batch = np.ascontiguousarray(image[None] if single else image, self.dtype)
        out = self._runner(**{INPUT_KEY: batch})[OUTPUT_KEY]
        return out[0] if single else out


def saved_model_enhancer(path, signature=SIGNATURE_FLOAT):
    """Loads an exported SavedModel folder; returns image -> enhanced, as TFLiteEnhancer."""
    loaded = tf.saved_model.load(os.fspath(path))
    function = loaded.signatures[signature]
    dtype = tf.uint8 if signature == SIGNATURE_UINT8 else tf.float32

    def enhance(image):
        image = np.asarray(image)
        single = image.ndim == 3
        batch = tf.constant(image[None] if single else image, dtype)
        out = function(**{INPUT_KEY: batch})[OUTPUT_KEY].numpy()
        return out[0] if single else out

    enhance.loaded = loaded  # keeps the restored variables alive
    return enhance
