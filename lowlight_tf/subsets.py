"""The paper's "10% of the device's pairs" (§3.4): deterministic subsets of a dataset by id.

`select_fraction` ranks examples by a keyed hash of their `id` and keeps the first
round(fraction * N): the subset depends only on the ids, the fraction and the seed (not on
order or parallelism), and it is nested across fractions. Training (`pipeline.train_dataset`),
the device calibration (`calibration.load_pairs`) and Table 1's image counts
(`training_facts`) all draw their subsets here, so they agree on which pairs a draw holds.
"""
import numbers

from absl import logging
import numpy as np
import tensorflow as tf

# Hash range of select_fraction; 2^62 makes ties between different ids practically impossible.
_HASH_BUCKETS = 1 << 62
# Key of the id hash (with the seed); kept at 5 so every draw keeps the pairs it had.
SELECTION_KEY = 5


def check_seed(seed):
    """Raises ValueError unless `seed` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def check_fraction(fraction):
    """Raises ValueError unless `fraction` is a number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
            or not 0.0 < fraction <= 1.0:
        raise ValueError(f"The training fraction must be in (0, 1], got {fraction!r} "
                         "(e.g. 0.1 for the paper's 10% of the real pairs).")


def _id_hash(example_id, seed):
    """Keyed (SipHash) hash of an id, int64 in [0, 2^62): a seeded, platform-stable ranking."""
    return tf.strings.to_hash_bucket_strong(example_id, _HASH_BUCKETS,
                                            key=[int(seed), SELECTION_KEY])


def select_fraction(dataset, fraction, *, seed=0, what=None):
    """Keep a deterministic subset of round(fraction * N) examples, chosen by a hash of `id`.

    The ids are ranked by a keyed hash (seeded by `seed`) and the first round(fraction * N),
    at least 1, are kept. The subset depends only on the set of ids, the fraction and the seed
    (not on the order), and it is nested: for the same seed, the ids kept at a smaller fraction
    are kept at every larger one. For fraction < 1 the dataset is read once to rank the ids,
    and the counts are logged, e.g. "using 24 of 236 pairs (10%)".

    Args:
        dataset: finite tf.data.Dataset of dicts with a scalar tf.string `id` (from data.load).
        fraction: float in (0, 1]; 1 returns the dataset unchanged.
        seed: non-negative int; another seed picks another subset.
        what: noun for the log line; defaults to "pairs" when elements have `dark`, else
            "images".

    Returns:
        The filtered tf.data.Dataset, same element structure and order.

    Raises:
        ValueError: bad fraction or seed, or an empty dataset.
    """
    check_fraction(fraction)
    check_seed(seed)
    fraction, seed = float(fraction), int(seed)
    if what is None:
        what = "pairs" if "dark" in dataset.element_spec else "images"
    if fraction == 1.0:
        return dataset
    hashes = np.sort(np.fromiter(
        dataset.map(lambda example: _id_hash(example["id"], seed)).as_numpy_iterator(),
        np.int64))
    if hashes.size == 0:
        raise ValueError(f"The dataset is empty: no {what} to select a fraction of.")
    count = max(1, int(np.floor(fraction * hashes.size + 0.5)))
    threshold = int(hashes[count - 1])
    logging.info("using %d of %d %s (%g%%)", count, hashes.size, what, 100 * fraction)
    return dataset.filter(lambda example: _id_hash(example["id"], seed) <= threshold)
