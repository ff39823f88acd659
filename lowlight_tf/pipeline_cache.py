"""Where the training pipeline keeps its decoded images (--cache) and where it runs.

`cache_mode` resolves --cache (auto: memory when the decoded set fits the budget, else
streaming), `apply_cache` applies it inside `pipeline.train_dataset`, and
`through_data_service` sends the whole pipeline to tf.data service workers (--data_service).
"""
import os

import tensorflow as tf


def cache_mode(mode, source, *, count, budget_mb, patch_size=0):
    """Resolve a --cache value: "auto" becomes "memory" or "none"; others are checked and kept.

    "auto" estimates the decoded cache as `count` times the first example's size (uint16 codes,
    dark and bright for pairs; images smaller than `patch_size` extended to it) and caches in
    memory only when that fits `budget_mb`.

    Args:
      mode: "auto", "memory", "none" or "disk:PATH".
      source: the dataset `train_dataset` will read (dicts from `data.load`).
      count: number of examples it holds.
      budget_mb: the largest decoded size (MiB) "auto" caches in memory.
    Returns:
      (mode, estimated_megabytes or None).
    Raises:
      ValueError: an unknown mode, or a disk cache whose folder does not exist.
    """
    if mode in ("memory", "none"):
        return mode, None
    if mode.startswith("disk:"):
        folder = os.path.dirname(os.path.abspath(mode[len("disk:"):]))
        if not mode[len("disk:"):] or not os.path.isdir(folder):
            raise ValueError(f"--cache={mode}: the cache's folder {folder} does not exist; "
                             "create it, or use memory, none or auto.")
        return mode, None
    if mode != "auto":
        raise ValueError(f"--cache={mode} is not one of auto, memory, none, disk:PATH.")
    for example in source.take(1):
        height, width = (max(int(d), patch_size) for d in example["bright"].shape[:2])
        channels = 6 if "dark" in example else 3
        megabytes = count * height * width * channels * 2 / 2**20
        return ("memory" if megabytes <= budget_mb else "none"), megabytes
    return "memory", 0.0


def through_data_service(dataset, address):
    """Run `dataset`'s work on tf.data service workers (the batches arrive in the same order).

    The whole pipeline (decode, cache, patches, simulation) is sent to the dispatcher at
    `address` (grpc://HOST:PORT or HOST:PORT) and processed by its workers, so the trainer's
    CPUs only feed the model; with one service worker the elements are exactly the local ones.
    """
    target = address if "://" in address else f"grpc://{address}"
    dataset = dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.OFF, service=target))
    return dataset.prefetch(tf.data.AUTOTUNE)


def apply_cache(dataset, cache):
    """Apply a --cache choice (see `pipeline.train_dataset`) to `dataset`."""
    if cache is True or cache == "memory":
        return dataset.cache()
    if cache is False or cache == "none":
        return dataset
    if isinstance(cache, str) and cache.startswith("disk:"):
        return dataset.cache(cache[len("disk:"):])
    raise ValueError(f"cache={cache!r}: use memory, none or disk:PATH (resolve auto with "
                     "cache_mode).")
