"""The `simulated` builder: a fixed, reproducible simulated test set (paper §3.1, §4 RAISE).

The paper evaluates pretrained models on bright RAISE images darkened by its §3.1 simulation. This
builder takes the bright images of an existing `images` dataset, samples one parameter row per
image from a simulation preset (the composite's 5-vector (black_level, w_r, w_g, w_b,
gamma_exponent), or the ISP model's (exposure_r, exposure_g, exposure_b, shot_scale)) and stores
the quantised 8-bit simulated dark image next to the bright one, the parameters and the noise
peak.

Reproducibility: each image's randomness depends only on (seed, id) - a stateless seed built from
the seed flag and a hash of the id - so the same image gets the same dark version whatever else is
in the dataset and in whatever order it is processed.
"""
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_prep import core
from data_prep import splitting
from lowlight_tf import simulation_isp
from lowlight_tf.media import formats
from lowlight_tf.media import png


def example_seed(seed, example_id):
    """Return the int64 [2] stateless seed of one example: (seed, 31-bit hash of its id)."""
    return tf.constant([int(seed), splitting.hash_int31(example_id)], tf.int64)


def simulate_example(bright, example_id, preset, seed):
    """Simulate the dark version of one bright image.

    Args:
        bright: uint8 or uint16 [H, W, 3] array (uint16 maps to [0, 255] by / 257).
        example_id: the image id (its hash seeds this image's randomness).
        preset: lowlight_tf.simulation.SimulationPreset, either model (the paper's composite or
            "isp"); the dark image is always quantised to 8 bits.
        seed: int, the dataset seed.

    Returns:
        (dark uint8 [H, W, 3] in [0, 255], params float32 [5] (composite, PARAMETER_NAMES) or
        [4] ("isp", ISP_PARAMETER_NAMES), noise_peak float32: the composite's Poisson peak, 0
        for "isp", whose noise is described by the preset's shot gain and read noise).
    """
    bright = np.asarray(bright)
    scale = float(formats.UINT16_PER_UINT8) if bright.dtype == np.uint16 else 1.0
    bright_float = tf.convert_to_tensor(bright.astype(np.float32) / scale)[None]
    dark, params = dataclasses.replace(preset, quantize=True).simulate(
        bright_float, seed=example_seed(seed, example_id))
    dark = np.clip(np.round(dark.numpy()[0]), 0, 255).astype(np.uint8)
    return dark, np.asarray(params.numpy()[0], np.float32), np.float32(stored_noise_peak(preset))


def stored_noise_peak(preset):
    """The `noise_peak` a simulated dataset stores: the composite's Poisson peak, 0 for "isp"."""
    return 0.0 if preset.model == simulation_isp.ISP_MODEL else float(preset.noise_peak)


def _source_builder(source):
    """Return the TFDS read-only builder of the source dataset (an InputError when missing)."""
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    try:
        return tfds.builder_from_directory(data.dataset_dir(source.output_dir, source.name))
    except data.DatasetError as error:
        raise core.InputError(f"Source dataset for --kind=simulated: {error}") from None


def skip_images(builder):
    """Return tfds decoders that leave the image features encoded (for cheap id scans)."""
    return {key: tfds.decode.SkipDecoding()
            for key in ("bright", "dark") if key in builder.info.features}


def scan(source, splits, *, split_overrides=None):
    """Plan the simulated dataset: one Item per bright image of the source dataset.

    Args:
        source: lowlight_tf.data.DatasetSpec of the source images dataset; split None = all.
        splits: ordered mapping output split name -> fraction (hash of id).
        split_overrides: optional {id: split}.

    Returns:
        (items, dtype of the source's bright images, dtype rule text).
    """
    builder = _source_builder(source)
    source_splits = [source.split] if source.split else list(builder.info.splits)
    for split in source_splits:
        if split not in builder.info.splits:
            raise core.InputError(
                f"Source dataset {source.output_dir}/{source.name} has no split {split!r}; "
                f"available: {', '.join(builder.info.splits)}.")
    overrides = split_overrides or {}
    items = []
    for source_split in source_splits:
        dataset = builder.as_dataset(split=source_split, shuffle_files=False,
                                     decoders=skip_images(builder))
        for example in dataset.map(lambda ex: ex["id"]).as_numpy_iterator():
            example_id = example.decode("utf-8")
            split = overrides.get(example_id) or splitting.assign_split(example_id, splits)
            items.append(core.Item(example_id, split, (source_split,)))
    dtype = np.dtype(builder.info.features["bright"].np_dtype)
    return items, dtype, "bright as stored in the source dataset; dark always uint8"


class SimulatedBuilder(core.LowlightBuilder, skip_registration=True):
    """Reads bright images from the source dataset and simulates their dark versions."""

    preset = None
    seed = 0

    def _results(self, items):
        plan = self.plan
        builder = _source_builder(plan.source)
        wanted = {item.id: item for item in items}
        bright_feature = builder.info.features["bright"]
        for source_split in sorted({item.task[0] for item in items}):
            dataset = builder.as_dataset(split=source_split, shuffle_files=False,
                                         decoders=skip_images(builder))
            for example in dataset:
                example_id = example["id"].numpy().decode("utf-8")
                item = wanted.get(example_id)
                if item is None:
                    continue
                yield item, simulate_encoded(example["bright"].numpy(), example_id,
                                             self.preset, self.seed, bright_feature)

    def _beam_transform(self, split):
        from data_prep import beam  # pylint: disable=import-outside-toplevel
        return beam.SimulateSplit(self.plan, split, self.plan.beam_skips_dir,
                                  _source_builder(self.plan.source), self.preset, self.seed)


def simulate_encoded(encoded_bright, example_id, preset, seed, bright_feature):
    """Simulate one stored bright image; return ("ok", example) or ("skip", reason, category).

    Args:
        encoded_bright: the source dataset's PNG bytes of the bright image (stored unchanged).
        example_id, preset, seed: as `simulate_example`.
        bright_feature: the source's tfds Image feature (decodes the PNG, uint8 or uint16).

    Returns:
        ("ok", {dark PNG bytes, bright PNG bytes, id, params, noise_peak}) or
        ("skip", reason text, "simulation_failed").
    """
    try:
        bright = bright_feature.decode_example(tf.constant(encoded_bright)).numpy()
        dark, params, noise_peak = simulate_example(bright, example_id, preset, seed)
    except Exception as error:  # pylint: disable=broad-except
        return ("skip", f"simulation failed ({type(error).__name__}: {error})",
                "simulation_failed")
    return ("ok", {"dark": png.encode_png(dark), "bright": bytes(encoded_bright),
                   "id": example_id, "params": params, "noise_peak": noise_peak})


def load_preset(simulation_params):
    """Return the SimulationPreset for `paper` or a JSON path; InputError when unusable."""
    from lowlight_tf import simulation  # pylint: disable=import-outside-toplevel
    try:
        return simulation.load_preset(simulation_params)
    except (ValueError, OSError) as error:
        raise core.InputError(f"--simulation_params={simulation_params!r} cannot be used: "
                              f"{error}") from None
