"""--simulated_data / --simulated_fraction: simulated pairs mixed into every batch of a transfer
on real pairs (issue 16, a lever beyond the paper)."""
import numpy as np
import pytest

from data_prep import prepare
from lowlight_tf import data, pipeline, simulation, train_config, train_data

BATCH, PATCH, SIMULATED = 4, 16, 1
pytestmark = pytest.mark.slow  # builds two datasets (keeps the fast subset under 2 minutes)


@pytest.fixture(scope="module")
def paired(tiny_data, tmp_path_factory):
    """A paired dataset (pairs simulated once and stored) made from the tiny images."""
    root = tmp_path_factory.mktemp("paired")
    prepare.make_tfrecords("simulated", output_dir=str(root), name="pairs",
                           source_data=f"{tiny_data}:train", splits="train:1.0",
                           simulation_params="paper", seed=5)
    return str(root / "pairs")


def config(paired, tiny_data, **overrides):
    values = dict(model_dir="unused", train_data=f"{paired}:train", val_data="none",
                  simulated_data=f"{tiny_data}:train", simulated_fraction=SIMULATED / BATCH,
                  simulation_params="paper", patch_size=PATCH, batch_size=BATCH, seed=3)
    values.update(overrides)
    return train_config.TrainConfig(**values)


def _batches(dataset, count):
    return [(dark.numpy(), bright.numpy()) for dark, bright in dataset.take(count)]


def test_each_batch_is_the_real_stream_then_its_own_simulated_patches(paired, tiny_data):
    mixed, _, description = train_data.make_datasets(config(paired, tiny_data))
    real_only, _, _ = train_data.make_datasets(
        config(paired, tiny_data, simulated_data="", simulated_fraction=0.0))
    simulated_only = pipeline.train_dataset(
        data.load(*tiny_data.rsplit("/", 1), "train"), patch_size=PATCH, batch_size=SIMULATED,
        seed=3, simulation=simulation.load_preset("paper"))
    real = [pair for batch in _batches(real_only, 3) for pair in zip(*batch)]
    simulated = _batches(simulated_only, 4)
    for index, (dark, bright) in enumerate(_batches(mixed, 4)):
        assert dark.shape == bright.shape == (BATCH, PATCH, PATCH, 3)
        real_part = real[index * (BATCH - SIMULATED):(index + 1) * (BATCH - SIMULATED)]
        np.testing.assert_array_equal(dark[:-SIMULATED], [d for d, _ in real_part])
        np.testing.assert_array_equal(bright[:-SIMULATED], [b for _, b in real_part])
        np.testing.assert_array_equal(dark[-SIMULATED:], simulated[index][0])
        np.testing.assert_array_equal(bright[-SIMULATED:], simulated[index][1])
    assert f"{SIMULATED} of {BATCH} patches per batch simulated" in description[0]


@pytest.mark.parametrize("overrides, message", [
    ({"simulated_fraction": 0.05}, "gives 0 simulated patches"),
    ({"simulated_fraction": 1.0}, "gives 4 simulated patches"),
    ({"simulated_data": ""}, "go together"),
    ({"simulated_fraction": 0.0}, "go together"),
])
def test_a_mix_that_cannot_be_built_is_a_config_error(paired, tiny_data, overrides, message):
    with pytest.raises(train_config.ConfigError, match=message):
        train_data.make_datasets(config(paired, tiny_data, **overrides))


def test_simulated_data_must_be_bright_only_and_train_data_real(paired, tiny_data):
    with pytest.raises(train_config.ConfigError, match="must be a bright-only images dataset"):
        train_data.make_datasets(config(paired, tiny_data, simulated_data=f"{paired}:train"))
    with pytest.raises(train_config.ConfigError, match="paired --train_data"):
        train_data.make_datasets(config(paired, tiny_data, train_data=f"{tiny_data}:train"))
