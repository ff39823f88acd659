"""Input pipelines of paper §3.2: random patches of (dark, bright) pairs, simulated on the fly.

The paper trains on fixed-size patches (64x64 by default), one patch per image visit. Training
data come either as real or pre-simulated pairs (stored `dark` and `bright`) or as bright images
only, whose dark patches are simulated per batch with the §3.1 model (`lowlight_tf.simulation`),
with parameters sampled per patch.

`train_dataset` chains named stages, each a small function below:

    select_fraction   a deterministic subset by a hash of `id` (e.g. the paper's 10% of pairs;
                      `lowlight_tf.subsets`)
    _prepare          keep dark/bright, stack them into one [H, W, 6] tensor, extend small images,
                      store as uint16 codes (value * 257)
    cache             in memory, on disk or not at all (`pipeline_cache`), after the deterministic
                      work, before any randomness
    shuffle, repeat   seeded; a new order every epoch (streaming, --cache=none: repeat, cut
                      the patch, then shuffle patches: memory bounded by the patch buffer)
    _random_patch     ONE stateless random draw per element: crop offsets, left-right flip and a
                      90-degree rotation, applied to the stacked pair (dark and bright aligned)
    batch             drop_remainder=True (static shapes)
    _finish_batch     uint16 codes -> float32 [0, 255]; for bright-only data simulate the dark
                      batch (vectorised, seed from the global seed and the batch counter); -> [0, 1]
    prefetch          AUTOTUNE

With `exposure_normalization` (an exposure-normalising model trained with --exposure_gain=image,
beyond the paper) every patch carries a context strip: its whole image area-resized to
[patch_size, CONTEXT_COLUMNS], cached with the image and appended to the patch's right side after
the crop. The strip is simulated with the patch (same parameters, same dim stops), so its mean
is the whole dark image's mean; the dark patch leaves the pipeline multiplied by that image's
gain (`exposure.normalization_gain`), as tiled inference multiplies each tile, and the strip is
cut off. Per-patch normalisation instead would scale every shadow and every highlight patch to
the same mean, which inference never does.

Every random draw is stateless and derived from `seed` plus an element or batch counter, so the
same seed gives the same patches (and the same simulated noise) in every run, regardless of the
parallelism of the maps.

Images smaller than `patch_size` on a side are extended by mirror reflection (repeated as often
as needed) to `patch_size` on that side before caching. Reflection keeps the pair aligned and
keeps the pixel statistics (noise, colour) of the real image, which resizing would change
(interpolation smooths the noise of real dark images).

The cache stores images as uint16 codes round(value * 257): exact for 8-bit sources (v * 257)
and for 16-bit sources (data.load maps uint16 to [0, 255] by dividing by 257), at half the
memory of float32.
"""
import numbers

from absl import logging
import tensorflow as tf

from lowlight_tf import dim_exposure
from lowlight_tf import exposure as exposure_lib
from lowlight_tf import pipeline_cache
from lowlight_tf import simulation as simulation_lib
from lowlight_tf import subsets
from lowlight_tf.media import formats

DEFAULT_SHUFFLE_BUFFER = 256
# Files read at once when streaming (--cache=none; data.load(readers=)): TFDS reads 16 by
# default and each reader holds decoded full-size images. Measured (benchmarks/scale.py setup,
# 1000 1-MP photos in 16 files): peak RSS 3,223 MiB with 16 readers, 1,348 MiB with 2, at the
# same patches/s (decoding bound).
STREAM_READERS = 2
# Columns of the whole-image context strip appended to each patch for image-level exposure
# normalisation (its mean is the image's; 16 columns cost 12.5% more simulation at 128 px).
CONTEXT_COLUMNS = 16
# data.load maps uint16 to [0, 255] by dividing by 257 (docs/interfaces.md); v * 257 is exact.
_CODE_SCALE = float(formats.UINT16_PER_UINT8)
# Stateless seed streams, one per random stage, so changing one stage never shifts another.
_STREAM_CROP = 1
_STREAM_SIMULATION = 2
_STREAM_VALIDATION_CROP = 3
_STREAM_VALIDATION_SIMULATION = 4
# 5 was the id-hash key of select_fraction (now lowlight_tf.subsets.SELECTION_KEY).
_STREAM_DIM = 6


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------
def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_exposure_normalization(target_mean):
    if not 0.0 <= target_mean < 1.0:
        raise ValueError(f"exposure_normalization must be 0 (off) or a mean level in (0, 1), "
                         f"got {target_mean}.")


def _check_source(source, simulation):
    """Check the element structure of a data.load dataset; return True if it holds pairs."""
    if not isinstance(source, tf.data.Dataset):
        raise ValueError(f"source must be a tf.data.Dataset from lowlight_tf.data.load, got "
                         f"{type(source).__name__}.")
    spec = source.element_spec
    if not isinstance(spec, dict) or "bright" not in spec or "id" not in spec:
        raise ValueError("source must yield dicts with at least `bright` and `id` (as "
                         f"lowlight_tf.data.load does); got elements {spec}.")
    for key in ("bright", "dark"):
        if key in spec:
            image_spec = spec[key]
            if image_spec.dtype != tf.float32 or image_spec.shape.rank != 3 \
                    or image_spec.shape[-1] not in (None, 3):
                raise ValueError(f"source `{key}` must be float32 [H, W, 3] in [0, 255] (as "
                                 f"lowlight_tf.data.load returns), got {image_spec}.")
    paired = "dark" in spec
    if paired and simulation is not None:
        raise ValueError(
            "The dataset holds stored dark images (a pairs or simulated dataset), and a "
            "simulation preset was given too. Pass simulation=None to train on the stored "
            "pairs, or use a bright-only (images) dataset to simulate dark patches on the fly.")
    if not paired and simulation is None:
        raise ValueError(
            "The dataset holds bright images only: pass a simulation preset (e.g. "
            "simulation=lowlight_tf.simulation.load_preset('paper')) to simulate the dark "
            "patches, or use a pairs dataset.")
    return paired


def _resolve_simulation(simulation):
    """Accept a SimulationPreset, a preset name (`paper`) or a calibration JSON path, or None."""
    if simulation is None:
        return None
    return simulation_lib.load_preset(simulation)


def _stream_seed(seed, stream):
    """Return the stateless base seed int64 [2] of one random stage."""
    return tf.constant([seed, stream], tf.int64)


# ---------------------------------------------------------------------------------------------
# Stages.
# ---------------------------------------------------------------------------------------------
def _extend_to(image, size, axis):
    """Mirror-extend `image` along `axis` to at least `size` (repeated reflection); else as is."""
    length = tf.shape(image)[axis]

    def extend():
        mirrored = tf.concat([image, tf.reverse(image, [axis])], axis)
        repeats = (size + 2 * length - 1) // (2 * length)
        multiples = tf.tensor_scatter_nd_update(tf.ones([3], tf.int32), [[axis]], [repeats])
        tiled = tf.tile(mirrored, multiples)
        return tiled[:size] if axis == 0 else tiled[:, :size]

    return tf.cond(length < size, extend, lambda: image)


def _to_codes(images):
    """float32 in [0, 255] -> uint16 codes round(v * 257)."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0) * _CODE_SCALE), tf.uint16)


def _prepare(example, paired, patch_size, context=False):
    """Decode stage: stack dark and bright, extend small images, encode as uint16 codes.

    Args:
        example: dict from data.load: `bright` (and `dark`) float32 [H, W, 3] in [0, 255].
        context: also return the whole image's context strip (see the module docstring).
    Returns:
        uint16 [H', W', 6] (dark then bright channels) or [H', W', 3] (bright only),
        H' = max(H, patch_size), W' = max(W, patch_size), values round(v * 257); with
        `context`, a tuple of it and the strip, uint16 [patch_size, CONTEXT_COLUMNS, 6 or 3].
    """
    bright = example["bright"]
    if paired:
        dark = example["dark"]
        tf.debugging.assert_equal(
            tf.shape(dark), tf.shape(bright),
            message="dark and bright of a pair differ in size; rebuild the dataset with "
                    "data_prep, which aligns pairs")
        images = tf.concat([dark, bright], axis=-1)
    else:
        images = bright
    codes = _to_codes(_extend_to(_extend_to(images, patch_size, 0), patch_size, 1))
    if not context:
        return codes
    strip = tf.image.resize(images, [patch_size, CONTEXT_COLUMNS], method="area")
    return codes, _to_codes(strip)


def _with_strip(patch, element, context):
    """The patch with the context strip of `element` appended on its right (if `context`)."""
    return tf.concat([patch, element[1]], axis=1) if context else patch


def _images(element, context):
    """The uint16 images of a prepared element (without its context strip)."""
    return element[0] if context else element


def _random_patch(images, patch_size, seed):
    """Take one random patch with a random flip and 90-degree rotation, from ONE random draw.

    The crop, flip and rotation act on the stacked [H, W, C] tensor (dark and bright channels
    together), so both images of a pair get exactly the same transform.

    Args:
        images: [H, W, C] (any dtype), H, W >= patch_size.
        patch_size: int.
        seed: int64 [2] stateless seed of this element.
    Returns:
        [patch_size, patch_size, C], same dtype.
    """
    shape = tf.shape(images)
    draw = tf.random.stateless_uniform([4], seed)  # top, left, flip, rotation
    top = tf.cast(draw[0] * tf.cast(shape[0] - patch_size + 1, tf.float32), tf.int32)
    left = tf.cast(draw[1] * tf.cast(shape[1] - patch_size + 1, tf.float32), tf.int32)
    # Guard against draw * n rounding up to n in float32.
    top = tf.minimum(top, shape[0] - patch_size)
    left = tf.minimum(left, shape[1] - patch_size)
    patch = tf.slice(images, [top, left, 0], [patch_size, patch_size, -1])
    patch = tf.cond(draw[2] < 0.5, lambda: tf.reverse(patch, [1]), lambda: patch)
    patch = tf.image.rot90(patch, tf.cast(draw[3] * 4.0, tf.int32) % 4)
    return tf.ensure_shape(patch, [patch_size, patch_size, images.shape[-1]])


def _fixed_patch(images, patch_size, seed):
    """Take one patch at a seeded position, without flip or rotation (validation)."""
    shape = tf.shape(images)
    draw = tf.random.stateless_uniform([2], seed)
    top = tf.minimum(tf.cast(draw[0] * tf.cast(shape[0] - patch_size + 1, tf.float32), tf.int32),
                     shape[0] - patch_size)
    left = tf.minimum(tf.cast(draw[1] * tf.cast(shape[1] - patch_size + 1, tf.float32),
                              tf.int32), shape[1] - patch_size)
    patch = tf.slice(images, [top, left, 0], [patch_size, patch_size, -1])
    return tf.ensure_shape(patch, [patch_size, patch_size, images.shape[-1]])


def _decode_codes(codes):
    """uint16 codes -> float32 in [0, 255]."""
    return tf.cast(codes, tf.float32) / _CODE_SCALE


def _to_pair(patches, paired, preset, steps, seed, dim_fraction=0.0, dim_seed=None,
             exposure_normalization=0.0):
    """Split or simulate, then scale: returns (dark, bright) float32 [B, P, P, 3] in [0, 1].

    Args:
        patches: float32 [B, P, W, 6] (pairs: dark, bright) or [B, P, W, 3] (bright) in
            [0, 255]; W = P, or P + CONTEXT_COLUMNS with `exposure_normalization`.
        seed: int64 [2] stateless seed of this batch (simulation only): parameters are sampled
            per patch and the Poisson noise drawn from it.
        dim_fraction, dim_seed: simulation only; `dim_exposure.mix_dim` replaces this fraction
            of the simulated patches by dim ones, drawn from `dim_seed`.
        exposure_normalization: 0, or the model's target mean in (0, 1): the last
            CONTEXT_COLUMNS columns are the context strip; each dark patch is multiplied by the
            gain of its strip's mean (then above 1 where it is brighter than the target).
    """
    if paired:
        dark, bright = patches[..., :3], patches[..., 3:]
    else:
        bright = patches
        dark, _ = preset.simulate(bright, seed=seed, steps=steps)  # per-patch parameters
        dark = dim_exposure.mix_dim(dark, bright, dim_fraction, seed=dim_seed)
        dark = tf.ensure_shape(dark, bright.shape)
    if exposure_normalization:
        size = patches.shape[-2] - CONTEXT_COLUMNS
        image_mean = tf.reduce_mean(dark[..., size:, :], axis=[-3, -2, -1], keepdims=True)
        gain = exposure_lib.normalization_gain(image_mean / 255.0, exposure_normalization)
        dark, bright = dark[..., :size, :] * gain, bright[..., :size, :]
    return dark / 255.0, bright / 255.0


# ---------------------------------------------------------------------------------------------
# Factories.
# ---------------------------------------------------------------------------------------------
def _check_not_empty(dataset, what):
    for _ in dataset.take(1):
        return
    raise ValueError(f"The {what} dataset is empty; check the dataset path and split (see "
                     "dataset_info.json / summary.json in its directory).")


def train_dataset(source, *, patch_size=64, batch_size=16, seed=0, simulation=None,
                  simulation_steps=simulation_lib.STEPS, train_fraction=1.0, cache=True,
                  shuffle_buffer=DEFAULT_SHUFFLE_BUFFER, dim_fraction=0.0,
                  exposure_normalization=0.0):
    """Build the infinite training pipeline of random aligned patches (paper §3.2).

    Args:
        source: tf.data.Dataset from `lowlight_tf.data.load`: dicts with `bright` (and `dark`
            for pairs / simulated datasets) float32 [H, W, 3] in [0, 255] and `id` tf.string.
        patch_size: side of the square patches, pixels (the paper: 64).
        batch_size: patches per batch (global batch size).
        seed: non-negative int; the same seed gives the same batches in every run.
        simulation: for bright-only data, a `SimulationPreset` (or a preset name / calibration
            JSON path for `simulation.load_preset`); must be None for pairs, which use their
            stored dark images.
        simulation_steps: sub-task steps of the §3.1 simulation, see `simulation.simulate`.
        train_fraction: fraction in (0, 1] of the examples to use, chosen by
            `subsets.select_fraction` with the same seed.
        cache: where the decoded images are cached (uint16, 2 bytes per value): True or
            "memory" (RAM), "disk:PATH" (TensorFlow's file cache at PATH, whose folder must
            exist; one pipeline per PATH at a time), False or "none" (streaming: decode every
            epoch, cut each image to its patch at once and shuffle patches, not images: bounded
            memory for datasets larger than RAM; other batches than the cached modes, which
            give identical ones). See `pipeline_cache.cache_mode` for "auto".
        shuffle_buffer: images (cached modes) or patches (streaming) in the shuffle buffer.
        dim_fraction: in [0, 1], bright-only data only: the fraction of simulated dark patches
            replaced by clean dim ones (`dim_exposure.mix_dim`, beyond the paper).
        exposure_normalization: 0, or the target mean in (0, 1) of the model's
            ExposureNormalization: each dark patch is multiplied by its whole image's gain
            (module docstring), and the model is fitted inside `exposure.exposure_applied_outside`.

    Returns:
        Infinite tf.data.Dataset of (dark, bright), both float32
        [batch_size, patch_size, patch_size, 3] in [0, 1] (dark above 1 where an
        exposure-normalised patch is brighter than the target).

    Raises:
        ValueError: bad arguments, a source without the expected structure, a missing or
            superfluous simulation preset, or an empty dataset.
    """
    _check_positive_int("patch_size", patch_size)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("shuffle_buffer", shuffle_buffer)
    subsets.check_seed(seed)
    subsets.check_fraction(train_fraction)
    seed, train_fraction = int(seed), float(train_fraction)
    preset = _resolve_simulation(simulation)
    paired = _check_source(source, preset)
    what = "pairs" if paired else "images"
    if not 0.0 <= dim_fraction <= 1.0 or (dim_fraction and paired):
        raise ValueError(f"dim_fraction must be in [0, 1] and needs simulated (bright-only) "
                         f"data; got {dim_fraction} for {what}.")

    _check_exposure_normalization(exposure_normalization)
    context = bool(exposure_normalization)

    dataset = subsets.select_fraction(source, train_fraction, seed=seed, what=what)
    if train_fraction == 1.0:
        _check_not_empty(dataset, "training")
    dataset = dataset.map(lambda example: _prepare(example, paired, patch_size, context),
                          num_parallel_calls=tf.data.AUTOTUNE)
    crop_seed = _stream_seed(seed, _STREAM_CROP)

    def crop(index, element):
        return _with_strip(_random_patch(
            _images(element, context), patch_size,
            tf.random.experimental.stateless_fold_in(crop_seed, index)), element, context)

    if cache is False or cache == "none":
        # Streaming: each decoded image is cut to its patch at once and the shuffle buffer holds
        # patches, so memory does not grow with the images' size or number. Images come in file
        # order every epoch; only patches within the buffer are shuffled.
        dataset = dataset.repeat().enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        dataset = pipeline_cache.apply_cache(dataset, cache)  # deterministic work above
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat().enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    simulation_seed = _stream_seed(seed, _STREAM_SIMULATION)
    dim_seed = _stream_seed(seed, _STREAM_DIM)
    dataset = dataset.enumerate().map(
        lambda index, codes: _to_pair(
            _decode_codes(codes), paired, preset, simulation_steps,
            tf.random.experimental.stateless_fold_in(simulation_seed, index), float(dim_fraction),
            tf.random.experimental.stateless_fold_in(dim_seed, index),
            float(exposure_normalization)),
        num_parallel_calls=tf.data.AUTOTUNE)
    logging.info("training pipeline: %s, %dx%d patches, batch %d, seed %d, %s", what,
                 patch_size, patch_size, batch_size, seed,
                 f"simulation {preset.name} steps {'+'.join(simulation_steps)}"
                 f"{f', dim fraction {dim_fraction:g}' if dim_fraction else ''}" if preset
                 else "stored dark images")
    if context:
        logging.info("dark patches multiplied by their whole image's exposure gain (target "
                     "mean %g)", exposure_normalization)
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_dataset(source, *, patch_size, batch_size, seed=0, simulation=None,
                       simulation_steps=simulation_lib.STEPS, max_patches=None,
                       exposure_normalization=0.0):
    """Build the finite validation pipeline: one fixed patch per image, identical every epoch.

    Each image gives one patch at a position drawn from (seed, image index), without flip or
    rotation; bright-only data are simulated per patch with a seed from (seed, image index), so
    the patches do not depend on `batch_size`. The patches are cached after the first pass.

    Args:
        source: tf.data.Dataset from `lowlight_tf.data.load` (see `train_dataset`).
        patch_size: side of the square patches, pixels.
        batch_size: patches per batch; the last batch may be smaller.
        seed: non-negative int.
        simulation: as in `train_dataset`.
        simulation_steps: as in `train_dataset`.
        max_patches: optional positive int, use only the first max_patches images.
        exposure_normalization: as in `train_dataset`.

    Returns:
        Finite tf.data.Dataset of (dark, bright), float32 [b, patch_size, patch_size, 3] in
        [0, 1] with b <= batch_size.

    Raises:
        ValueError: as `train_dataset`.
    """
    _check_positive_int("patch_size", patch_size)
    _check_positive_int("batch_size", batch_size)
    subsets.check_seed(seed)
    seed = int(seed)
    if max_patches is not None:
        _check_positive_int("max_patches", max_patches)
    _check_exposure_normalization(exposure_normalization)
    context = bool(exposure_normalization)
    preset = _resolve_simulation(simulation)
    paired = _check_source(source, preset)
    _check_not_empty(source, "validation")

    dataset = source.take(max_patches) if max_patches is not None else source
    dataset = dataset.map(lambda example: _prepare(example, paired, patch_size, context),
                          num_parallel_calls=tf.data.AUTOTUNE)
    crop_seed = _stream_seed(seed, _STREAM_VALIDATION_CROP)
    simulation_seed = _stream_seed(seed, _STREAM_VALIDATION_SIMULATION)

    def fixed_pair(index, element):
        patch = _with_strip(_fixed_patch(
            _images(element, context), patch_size,
            tf.random.experimental.stateless_fold_in(crop_seed, index)), element, context)
        dark, bright = _to_pair(
            _decode_codes(patch)[None], paired, preset, simulation_steps,
            tf.random.experimental.stateless_fold_in(simulation_seed, index),
            exposure_normalization=float(exposure_normalization))
        return (tf.ensure_shape(dark[0], [patch_size, patch_size, 3]),
                tf.ensure_shape(bright[0], [patch_size, patch_size, 3]))

    dataset = dataset.enumerate().map(fixed_pair, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.cache()  # small: the patches only; identical every epoch by construction
    dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)
