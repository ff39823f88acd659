"""The shared TFDS builder machinery of the offline data job (raw/images/pairs -> TFRecords).

Raw decoding happens once, here, never in the training loop (the original See-in-the-Dark code
decoded raw files every step and needed 64 GB of RAM; the paper's §3.2 training reads patches).

A builder is a `tfds.core.GeneratorBasedBuilder` whose class is created per dataset by
`make_builder_class`, so that the builder's name equals the dataset NAME the user chose (TFDS
writes `DATA_DIR/NAME/VERSION/`). The classes skip the TFDS registry (a user's NAME may clash
with a catalogue dataset) and build their `DatasetInfo` directly (no package folder with
metadata files). Work is planned before the builder exists (a `Plan`: one `Item` per input, its
split, and a picklable task); the builder only runs the plan, optionally decoding in worker
processes, and records every skipped input with its reason.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import itertools
import multiprocessing
import os
import types

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

import data_prep
from data_prep import summary as summary_lib
from data_prep import workers
from lowlight_tf import progress
from lowlight_tf.media import formats

VERSION = "1.0.0"
KINDS = data_prep.KINDS

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Bring your own files; nothing is downloaded.
- images: a folder tree of camera raw files (.dng .nef .arw .cr2 .cr3 .raf .orf .rw2 .pef .srw and
  every other LibRaw format) and/or ordinary images (.png .jpg .jpeg .tif .tiff .bmp, 8 or 16 bit).
- pairs: DIR/low/NAME and DIR/high/NAME with matching names (LOL/ELIEI layout), or a SID-style list
  file with lines `short_path long_path ISOxxx Fy` (paths relative to DIR).
- simulated: an `images` dataset written earlier (OUTPUT_DIR/NAME[:split]).
Pass the folder as --input_dir (manual_dir)."""


class InputError(ValueError):
    """A user error (missing folder, nothing usable, bad name...): exit status 2 in the tools."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One planned example: its id, the split it goes to, and the picklable task that makes it."""
    id: str
    split: str
    task: tuple


@dataclasses.dataclass
class Plan:
    """Everything a builder needs to run: inputs, dtypes, options and where to report.

    Attributes:
        kind: "images", "pairs" or "simulated".
        items: list of Item, in a deterministic order.
        dtype: numpy dtype of the stored `bright` (and real `dark`) images: uint8 or uint16.
        worker_fn: module-level function task -> ("ok", example dict) or ("skip", reason text,
            named reason); for "simulated" the builder generates examples itself and this is
            None.
        skips: SkipLog shared over retries.
        num_workers: decoding worker processes (at least one: a decoder crash skips its file).
        report: callable(str) for progress lines, or None.
        description: text stored in dataset_info.json.
        empty_splits: splits whose every input was skipped during generation (filled by the
            builder; the caller retries without them because TFDS cannot write an empty split).
        beam_skips_dir: None for the local pool; with a Beam runner, the folder where each
            split's skipped inputs are written (data_prep.beam.read_skips reads them back).
    """
    kind: str
    items: list
    dtype: np.dtype
    worker_fn: object = None
    skips: summary_lib.SkipLog = dataclasses.field(default_factory=summary_lib.SkipLog)
    num_workers: int = 1
    report: object = None
    description: str = ""
    source: object = None
    empty_splits: set = dataclasses.field(default_factory=set)
    beam_skips_dir: str = None

    def split_names(self):
        """Return the splits that have at least one planned item, in first-seen order."""
        return list(collections.OrderedDict((item.split, None) for item in self.items))


def image_feature(dtype):
    """Return a lossless (PNG-encoded) HxWx3 tfds Image feature of dtype uint8 or uint16."""
    return tfds.features.Image(shape=(None, None, 3), dtype=np.dtype(dtype),
                               encoding_format="png")


def features_for(kind, dtype):
    """Return the tfds FeaturesDict of a kind (docs/interfaces.md "Stored features").

    Args:
        kind: "images", "pairs" or "simulated".
        dtype: stored dtype of `bright` (and of the real `dark` of pairs), uint8 or uint16.
    """
    if kind == "images":
        return tfds.features.FeaturesDict({
            "bright": image_feature(dtype),
            "id": tfds.features.Text(),
            "source_format": tfds.features.Text(),
            "is_raw": tfds.features.Scalar(dtype=np.bool_),
            "black_level": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "white_level": tfds.features.Scalar(dtype=np.float32),
            "cfa_pattern": tfds.features.Text(),
            "camera_white_balance": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        })
    if kind == "pairs":
        return tfds.features.FeaturesDict({
            "dark": image_feature(dtype),
            "bright": image_feature(dtype),
            "id": tfds.features.Text(),
            "source_format": tfds.features.Text(),
            "exposure_ratio": tfds.features.Scalar(dtype=np.float32),
        })
    if kind == "simulated":
        return tfds.features.FeaturesDict({
            "dark": image_feature(np.uint8),
            "bright": image_feature(dtype),
            "id": tfds.features.Text(),
            "params": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "noise_peak": tfds.features.Scalar(dtype=np.float32),
        })
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")


def iter_input_files(input_dir, skips):
    """Yield (absolute path, id) of every raw/image file under input_dir, sorted, recursively.

    The id is the path relative to input_dir with `/` separators. Hidden files and folders are
    left out; other files without an image or raw extension are counted in skips.ignored_files.
    """
    input_dir = os.path.abspath(input_dir)
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file_name in sorted(files):
            if file_name.startswith("."):
                continue
            path = os.path.join(root, file_name)
            if not formats.is_image_path(path):
                skips.ignored_files += 1
                continue
            yield path, os.path.relpath(path, input_dir).replace(os.sep, "/")


def require_dir(path, what):
    """Raise InputError unless `path` is an existing directory."""
    if not path:
        raise InputError(f"No {what} given: pass --input_dir=DIR.")
    if not os.path.isdir(path):
        raise InputError(f"The {what} {path!r} does not exist or is not a directory; check the "
                         "path (relative paths are taken from the current directory).")


# What a task yields when its worker process dies (LibRaw and other C decoders can segfault).
CRASH_REASON = ("the decoder crashed its worker process (a corrupt or unsupported file); "
                "skipped, the other files were kept")
CRASH_RESULT = ("skip", CRASH_REASON, "decoder_crash")


def decoding_pool(num_workers, context):
    """A process pool whose workers exit when this process dies (workers.exit_with_parent)."""
    return concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=workers.exit_with_parent,
        initargs=(os.getpid(),))


def run_isolated(fn, task, context):
    """fn(task) in a fresh one-off process; its crash becomes CRASH_RESULT."""
    with decoding_pool(1, context) as pool:
        try:
            return pool.submit(fn, task).result()
        except concurrent.futures.process.BrokenProcessPool:
            return CRASH_RESULT


def parallel_map(fn, tasks, num_workers):
    """Yield (task, fn(task)) in order, in `num_workers` (>= 1) worker processes.

    `fn` returns ("ok", ...) or ("skip", reason, ...). At most 2 * num_workers results are in
    flight, so large inputs stream instead of piling up decoded images in memory. Worker
    processes are spawned (not forked: the parent has TensorFlow's threads running) and only
    import the decoding modules. A worker that dies (a decoder segfault) breaks the pool: the
    tasks in flight are then re-run one by one in fresh processes, the one that crashes again
    yields CRASH_RESULT, and a new pool takes the remaining tasks. Workers exit on their own
    when this process is killed (workers.exit_with_parent), so no orphan outlives the job.
    """
    context = multiprocessing.get_context("spawn")
    task_iter = iter(tasks)
    num_workers = max(1, num_workers)
    while True:
        in_flight = []
        with decoding_pool(num_workers, context) as pool:
            pending = collections.deque()
            for task in itertools.islice(task_iter, 2 * num_workers):
                pending.append((task, pool.submit(fn, task)))
            while pending:
                task, future = pending.popleft()
                try:
                    result = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    in_flight = [task] + [queued for queued, _ in pending]
                    break
                next_task = next(task_iter, None)
                if next_task is not None:
                    try:
                        pending.append((next_task, pool.submit(fn, next_task)))
                    except concurrent.futures.process.BrokenProcessPool:
                        in_flight = [queued for queued, _ in pending] + [next_task]
                        yield task, result
                        break
                yield task, result
        if not in_flight:
            return
        for task in in_flight:
            yield task, run_isolated(fn, task, context)


class LowlightBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Runs a Plan; subclasses are created per dataset by `make_builder_class`."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First format: docs/interfaces.md 'Stored features'."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    plan = None  # set on each generated subclass
    # No checksums file next to the code (nothing is downloaded). Also avoids TFDS 4.9.10's
    # `code_path`, which needs the `importlib_resources` backport for builders in packages.
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.plan.description or f"lowlight_tf {self.plan.kind} dataset",
            features=features_for(self.plan.kind, self.plan.dtype),
            metadata=tfds.core.MetadataDict(kind=self.plan.kind),
            # tfds.load(..., as_supervised=True) yields (dark, bright) for the paired kinds.
            supervised_keys=("dark", "bright") if self.plan.kind in ("pairs", "simulated")
            else None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Inputs are planned up front from the manual directory.
        if self.plan.beam_skips_dir:
            return {split: self._beam_transform(split) for split in self.plan.split_names()}
        return {split: self._generate_examples(split=split) for split in self.plan.split_names()}

    def _beam_transform(self, split):
        """Return the beam.PTransform that decodes one split on a Beam runner."""
        from data_prep import beam  # pylint: disable=import-outside-toplevel
        return beam.DecodeSplit(self.plan, split, self.plan.beam_skips_dir)

    def _generate_examples(self, split):
        plan = self.plan
        items = [item for item in plan.items if item.split == split]
        label = f"[{plan.kind}] {split}"
        bar = progress.bar(total=len(items), desc=label, unit="inputs",
                           enabled=plan.report is not None)
        written = skipped = 0
        try:
            for item, result in self._results(items):
                if result[0] == "ok":
                    written += 1
                    yield item.id, as_feature_input(result[1])
                else:
                    skipped += 1
                    plan.skips.skip(item.id, *result[1:])
                bar.update(1)
                if skipped:
                    bar.set_postfix_str(f"{skipped} skipped")
        finally:
            bar.close()
        if plan.report:
            plan.report(f"{label}: {written + skipped}/{len(items)} inputs, {written} written, "
                        f"{skipped} skipped")
        if written == 0:
            plan.empty_splits.add(split)

    def _results(self, items):
        """Yield (item, ("ok", example) | ("skip", reason, category)) for the split's items."""
        plan = self.plan
        tasks = ((item, item.task) for item in items)
        fn = plan.worker_fn
        item_by_task = collections.deque()

        def task_stream():
            for item, task in tasks:
                item_by_task.append(item)
                yield task

        for _, result in parallel_map(fn, task_stream(), plan.num_workers):
            yield item_by_task.popleft(), result


def as_feature_input(example):
    """Wrap encoded PNG bytes in file objects, which tfds Image stores without re-encoding."""
    return {key: io.BytesIO(value) if key in ("bright", "dark") and isinstance(value, bytes)
            else value for key, value in example.items()}


class _DeterministicExampleSerializer(example_serializer.ExampleSerializer):
    """TFDS's serializer with a stable byte order of the tf.train.Example feature map.

    A proto map's wire order follows the hash table of the protobuf runtime (upb seeds it per
    process), so the same example serialised in two processes gives different bytes even with
    PYTHONHASHSEED fixed. `deterministic=True` sorts the map keys.
    """

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def deterministic_serialization():
    """Within the block, TFDS writers serialise examples byte-reproducibly (same input, same
    shard bytes in every process). TFDS 4.9.10 builds its serializer by the module attribute
    `example_serializer.ExampleSerializer` inside `split_builder`, which is swapped here."""
    saved = example_serializer.ExampleSerializer
    example_serializer.ExampleSerializer = _DeterministicExampleSerializer
    try:
        yield
    finally:
        example_serializer.ExampleSerializer = saved


def make_builder_class(name, plan, base=LowlightBuilder, **attributes):
    """Return a builder class named `name` (the dataset NAME) that runs `plan`.

    Args:
        name: dataset name, lowercase snake_case (becomes the directory OUTPUT_DIR/NAME).
        plan: Plan to run.
        base: LowlightBuilder or a subclass (the simulated kind overrides generation).
        **attributes: extra class attributes (e.g. the simulation preset and seed).
    """
    def fill(namespace):
        namespace.update(attributes)
        namespace["name"] = name
        namespace["plan"] = plan
        namespace["__module__"] = __name__

    return types.new_class(name, (base,), {"skip_registration": True}, fill)
