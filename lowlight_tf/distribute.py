"""tf.distribute for training (paper §3.3 on any hardware): strategy choice and the chief.

MirroredStrategy uses every GPU of the machine (the CPU when there is none); MultiWorker-
MirroredStrategy is configured by TF_CONFIG; `patch_keras_for_multi_worker` works around a
Keras 3 bug in Model.fit across workers.
"""
import os
import types

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

from lowlight_tf.train_config import STRATEGIES, ConfigError


def make_strategy(name, devices=None):
    """Returns the tf.distribute strategy for --strategy (call before any other TF work).

    Args:
      name: "mirrored" (all visible GPUs, or the CPU when there is none, unless `devices`),
        "multi_worker" (MultiWorkerMirroredStrategy configured by the TF_CONFIG environment
        variable) or "default" (no distribution).
      devices: optional device list for "mirrored", e.g. ["/cpu:0", "/cpu:1"].
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task of this worker); see the tf.distribute guide.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ConfigError(f"--strategy={name} is not one of {', '.join(STRATEGIES)}.")


def is_chief(strategy):
    """True on the one worker that writes checkpoints and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def patch_keras_for_multi_worker(model):
    """Works around Keras 3's broken Model.fit under MultiWorkerMirroredStrategy.

    keras-team/keras#20585 (open for Keras 3.x, still in 3.15): fit() (1) reduces the whole
    per-replica input batch with strategy.reduce to build the model symbolically, and (2)
    reduces the scalar metric results with strategy.reduce("MEAN", v, axis=0), both of which
    fail across workers. The symbolic build only needs shapes, so it takes the first local
    replica's batch; scalar results are averaged over all replicas with axis=None, which is
    what the single-machine path computes.
    """
    if not getattr(tf_trainer.reduce_per_replica, "_lowlight_patched", False):
        original = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and is_multi_worker(strategy):
                return tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return original(values, strategy, reduction)

        reduce_per_replica._lowlight_patched = True
        tf_trainer.reduce_per_replica = reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(batches))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)


def num_workers(strategy):
    """Machines taking part in `strategy` (1 without a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def worker_index(strategy):
    """This machine's index among `num_workers(strategy)` (the chief first, then the workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if has_chief else 0)


def worker(strategy):
    """(this machine's index, number of machines) of `strategy`."""
    return worker_index(strategy), num_workers(strategy)


def shard_policy(files, workers):
    """How a multi-worker input pipeline is split: "FILE" (each worker reads its own TFRecord
    files) when there is at least one file per worker, else "DATA" (every worker reads every file
    and keeps its share of the elements)."""
    return "FILE" if files >= workers else "DATA"


def shard_input(dataset, policy):
    """`dataset` with tf.distribute's auto-sharding set for `policy`.

    "DATA": tf.distribute keeps every worker's share of the elements. "FILE": the dataset was
    read from this worker's own files already (`data.load(..., file_shard=...)`; tf.data's own
    FILE auto-shard cannot see through TFDS readers and enumerate()), so auto-sharding is off.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if policy == "DATA"
        else tf.data.experimental.AutoShardPolicy.OFF)
    return dataset.with_options(options)
