"""What a model's training run says about it, for the Table 1 columns (paper §4).

Reads the model_dir's flags.txt (written by tools/train) to fill "No. training images from
dataset" and "No. epochs initial / transfer" for a model being evaluated.
"""
import dataclasses
import os
import re

from lowlight_tf import config as config_lib
from lowlight_tf import data
from lowlight_tf import subsets

FLAGS_NAME = "flags.txt"
NOT_AVAILABLE = "n/a"


@dataclasses.dataclass
class TrainingFacts:
    """What Table 1 says about how a model was trained.

    `training_images` maps a dataset key `OUTPUT_DIR/NAME` (absolute) to the number of its images
    used in training, each image once however many runs of the --init_from chain trained on it
    (a transfer, then every block from it, on one draw: the draw's size); datasets not in the
    map get 0 when `known` is True and "n/a" otherwise. A simulated test set counts the images
    its source dataset gave to training (the paper's "RAISE 6k, 6000" row: pretrained on
    simulated RAISE, tested on simulated RAISE).
    `epochs` is the Table 1 text "initial / transfer", e.g. "100 / 250" or "100 / -".
    """
    known: bool = False
    training_images: dict = dataclasses.field(default_factory=dict)
    epochs: str = NOT_AVAILABLE

    def images_for(self, dataset_keys):
        """Training images taken from any of `dataset_keys` (a dataset and its source)."""
        if not self.known:
            return NOT_AVAILABLE
        return sum(self.training_images.get(key, 0) for key in set(dataset_keys))


# ----------------------------------------------------------------------------------------------
# Training facts from model_dir/flags.txt.

def _read_flags(path):
    """Reads `--name=value` lines (tools/train's flags.txt) into a dict of strings."""
    with open(path, encoding="utf-8") as f:
        return config_lib.parse_flag_lines(f)


def model_dir_of(model_path):
    """The tools/train model_dir a model path belongs to (or None).

    Accepts a model_dir, its final.keras, or one of its checkpoints/epoch_NNN.weights.h5.
    """
    if not model_path:
        return None
    path = os.path.abspath(model_path)
    candidates = [path] if os.path.isdir(path) else []
    candidates += [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, FLAGS_NAME)):
            return candidate
    return None


def _dataset_key(spec_text, sample_root=None):
    """`OUTPUT_DIR/NAME` (absolute) and split of a train_data flag value."""
    if spec_text in ("", "sample"):
        if not sample_root:
            return None, None
        spec_text = os.path.join(sample_root, "tfrecords", "sample") + ":train"
    parsed = data.parse_dataset_spec(spec_text, default_split="train")
    return os.path.abspath(os.path.join(parsed.output_dir, parsed.name)), parsed.split


def _training_subset(flags):
    """(dataset key, split, fraction, seed) a tools/train run drew its images from, or None."""
    try:
        key, split = _dataset_key(flags.get("train_data", ""), flags.get("sample_root"))
        if key is None:
            return None
        fraction = min(float(flags.get("train_fraction", 1.0)), 1.0)
        return key, split, fraction, int(flags.get("seed", 0))
    except ValueError:
        return None


def _subset_ids(key, split, fraction, seed):
    """The ids (bytes) of the examples `subsets.select_fraction` keeps."""
    output_dir, name = os.path.split(key)
    subset = subsets.select_fraction(data.load(output_dir, name, split), fraction, seed=seed)
    return {bytes(i) for i in subset.map(lambda example: example["id"]).as_numpy_iterator()}


def _count_distinct_images(key, split, draws):
    """How many distinct images of `key`'s `split` the (fraction, seed) draws used together."""
    output_dir, name = os.path.split(key)
    if any(fraction >= 1.0 for fraction, _ in draws):
        return data.num_examples(output_dir, name, split)
    ids = set()
    for fraction, seed in draws:  # the same subset twice (a chain on one draw) counts once
        ids |= _subset_ids(key, split, fraction, seed)
    return len(ids)


def training_facts(model_path):
    """Reads Table 1's training facts from the model_dir's flags.txt (and its --init_from chain).

    Returns:
      TrainingFacts; `known` False (every entry "n/a") when no flags.txt is found.
    """
    model_dir = model_dir_of(model_path)
    if model_dir is None:
        return TrainingFacts()
    chain = []
    seen = set()
    while model_dir is not None and model_dir not in seen and len(chain) < 10:
        seen.add(model_dir)
        flags = _read_flags(os.path.join(model_dir, FLAGS_NAME))
        chain.append(flags)
        model_dir = model_dir_of(flags.get("init_from")) if flags.get("init_from") else None
    facts = TrainingFacts(known=True)
    draws = {}  # (key, split) -> {(fraction, seed)}: each image counts once per dataset
    for flags in chain:
        subset = _training_subset(flags)
        if subset is not None:
            draws.setdefault(subset[:2], set()).add(subset[2:])
    for (key, split), key_draws in draws.items():
        try:
            count = _count_distinct_images(key, split, key_draws)
        except (ValueError, OSError):
            continue
        facts.training_images[key] = facts.training_images.get(key, 0) + count
    own = chain[0]
    epochs = own.get("epochs", NOT_AVAILABLE)
    checkpoint = re.match(r"^epoch_(\d+)\.weights\.h5$", os.path.basename(str(model_path)))
    if checkpoint:  # a per-epoch checkpoint: the epochs it has seen, not the run's target
        epochs = str(int(checkpoint.group(1)))
    if own.get("init_from"):
        # An --init_from without flags.txt (e.g. the shipped .keras) has no epochs on record.
        initial = chain[1].get("epochs", NOT_AVAILABLE) if len(chain) > 1 else NOT_AVAILABLE
        facts.epochs = f"{initial} / {epochs}"
    else:
        facts.epochs = f"{epochs} / -"
    return facts
