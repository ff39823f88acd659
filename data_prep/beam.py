"""The data job on Apache Beam: the same examples as the local pool, decoded on a Beam runner.

`tools/make_tfrecords --beam_runner=DirectRunner` (or DataflowRunner, FlinkRunner, SparkRunner
with `--beam_options`) hands each split to TFDS's Beam support (`_split_generators` returns one
`beam.PTransform` per split; TFDS writes and shards the examples). Bright images for the §3.1
simulation and §3.3 pretraining, real pairs for §3.4 and the §4 simulated test set are decoded by
the same task functions as the local path (`data_prep.workers`, `data_prep.simulated`), so the
decoded examples, ids and splits are the same; only the shard boundaries may differ.

Bad inputs: every skipped input is written as one small JSON file under the build's staging
folder (`skips_dir`) by the worker that skipped it; `read_skips` turns them back into the
summary's `skipped` list, in the plan's order (also after a failed pipeline, so that a split
whose every input failed can be dropped and the build retried, as on the local path). A decoder
that crashes (LibRaw segfaults on some corrupt files) takes down only the one decoding process
each Beam worker keeps (`_DecodeFn`): the file is retried alone and then skipped as
`decoder_crash`, as in the local pool.

apache-beam is an optional dependency (`pip install -e '.[beam]'`); this module imports it at
the top, so import it only when a Beam runner is requested (`prepare` does).
"""
import concurrent.futures
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shlex


class _NoGcpClientWarning(logging.Filter):
    """Drops Beam's root-logger warning that the Google Cloud clients are missing: they are not
    needed to read and write files, and the line would only confuse a user."""

    def filter(self, record):
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_NoGcpClientWarning())
import apache_beam as beam  # pylint: disable=wrong-import-position
from apache_beam.options import pipeline_options  # pylint: disable=wrong-import-position

from data_prep import core  # pylint: disable=wrong-import-position
from lowlight_tf import files  # pylint: disable=wrong-import-position


def make_options(runner, options_text):
    """Return beam PipelineOptions for `runner` from a command-line style `options_text`.

    Args:
        runner: a Beam runner name (DirectRunner, DataflowRunner, FlinkRunner, ...).
        options_text: pipeline arguments as one string, e.g. "--direct_num_workers=2
            --direct_running_mode=multi_processing" (shell quoting allowed); may be empty.

    Raises:
        core.InputError: the text cannot be split into arguments.
    """
    try:
        args = shlex.split(options_text or "")
    except ValueError as error:
        raise core.InputError(f"--beam_options={options_text!r} cannot be parsed ({error}); "
                              "pass them as one string of --name=value arguments.") from None
    if not any(arg.startswith("--default_sdk_harness_log_level") for arg in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # workers' INFO lines hide ours
    return pipeline_options.PipelineOptions(args, runner=runner)


def make_runner(runner, options):
    """Return what TFDS passes to beam.Pipeline as the runner: the name, or for DirectRunner the
    FnApiRunner that DirectRunner itself falls back to.

    Beam 2.77's DirectRunner first tries to download the Prism runner binary from GitHub (a
    network fetch a data job should not make; offline it fails and falls back). Building the
    FnApiRunner here, as DirectRunner does after that attempt, runs the same way without it
    (including --direct_num_workers and --direct_running_mode=multi_processing).
    """
    if runner != "DirectRunner":
        return runner
    # pylint: disable=import-outside-toplevel
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability import portable_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    encoded = portable_runner.JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


class _DecodeFn(beam.DoFn):
    """Runs a `data_prep.workers` task per item in one decoding process kept per Beam worker.

    Yields (id, feature input) for a decoded example; a skipped one is written to skips_dir.
    """

    def __init__(self, worker_fn, skips_dir):
        super().__init__()
        self._worker_fn = worker_fn
        self._skips_dir = skips_dir
        self._context = None
        self._pool = None

    def setup(self):
        self._context = multiprocessing.get_context("spawn")
        self._pool = core.decoding_pool(1, self._context)

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def process(self, item):
        try:
            result = self._pool.submit(self._worker_fn, item.task).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._pool.shutdown(wait=False)  # its process is gone; start a new one
            self._pool = core.decoding_pool(1, self._context)
            result = core.run_isolated(self._worker_fn, item.task, self._context)
        yield from _emit(item, result, self._skips_dir)


def _emit(item, result, skips_dir):
    """Yield (id, feature input) for ("ok", example); record ("skip", reason, category) as the
    file SKIPS_DIR/<sha1 of id>.json (idempotent, so a retried bundle writes the same file; and
    written as soon as the input fails, so it survives a pipeline that fails later)."""
    if result[0] == "ok":
        yield item.id, core.as_feature_input(result[1])
        return
    name = hashlib.sha1(item.id.encode("utf-8")).hexdigest() + ".json"
    files.write_json(os.path.join(skips_dir, name),
                     {"path": item.id, "reason": result[1], "category": result[2]})


class _SimulateFn(beam.DoFn):
    """Simulates the dark version of each wanted source example (paper §3.1; TF per worker)."""

    def __init__(self, wanted_ids, preset, seed, bright_feature, skips_dir):
        super().__init__()
        self._skips_dir = skips_dir
        self._wanted = frozenset(wanted_ids)
        self._preset = preset
        self._seed = seed
        self._bright_feature = bright_feature

    def process(self, example):
        from data_prep import simulated  # pylint: disable=import-outside-toplevel
        example_id = example["id"].decode("utf-8")
        if example_id not in self._wanted:
            return
        item = core.Item(example_id, "", ())
        yield from _emit(item, simulated.simulate_encoded(
            example["bright"], example_id, self._preset, self._seed, self._bright_feature),
            self._skips_dir)


class DecodeSplit(beam.PTransform):
    """PTransform of one split of an images or pairs Plan: root -> (id, feature input)."""

    def __init__(self, plan, split, skips_dir):
        super().__init__()
        self._items = [item for item in plan.items if item.split == split]
        self._worker_fn = plan.worker_fn
        self._skips_dir = skips_dir

    def expand(self, root):
        return (root
                | "Plan" >> beam.Create(self._items)
                | "Spread" >> beam.Reshuffle()
                | "Decode" >> beam.ParDo(_DecodeFn(self._worker_fn, self._skips_dir)))


class SimulateSplit(beam.PTransform):
    """PTransform of one split of a simulated Plan: the source dataset read with
    `tfds.beam.ReadFromTFDS` (bright images stay PNG-encoded), simulated on the workers."""

    def __init__(self, plan, split, skips_dir, source_builder, preset, seed):
        super().__init__()
        items = [item for item in plan.items if item.split == split]
        self._wanted = [item.id for item in items]
        self._source_splits = sorted({item.task[0] for item in items})
        self._source_builder = source_builder
        self._preset = preset
        self._seed = seed
        self._skips_dir = skips_dir

    def expand(self, root):
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        from data_prep import simulated  # pylint: disable=import-outside-toplevel
        bright_feature = self._source_builder.info.features["bright"]
        reads = [root | f"Read_{source_split}" >> tfds.beam.ReadFromTFDS(
            self._source_builder, split=source_split,
            decoders=simulated.skip_images(self._source_builder))
            for source_split in self._source_splits]
        return (reads
                | "Flatten" >> beam.Flatten()
                | "ToNumpy" >> beam.Map(tfds.as_numpy)
                | "Simulate" >> beam.ParDo(_SimulateFn(
                    self._wanted, self._preset, self._seed, bright_feature, self._skips_dir)))


def read_skips(skips_dir, plan):
    """Record the skipped inputs a Beam build wrote into SKIPS_DIR in plan.skips (plan order)."""
    order = {item.id: index for index, item in enumerate(plan.items)}
    entries = []
    for path in glob.glob(os.path.join(skips_dir, "*.json")):
        with open(path, encoding="utf-8") as f:
            entries.append(json.load(f))
    entries.sort(key=lambda entry: order.get(entry["path"], len(order)))
    for entry in entries:
        plan.skips.skip(entry["path"], entry["reason"], entry["category"])
