"""The offline data job behind `tools/make_tfrecords`: inputs -> sharded TFRecords + summary.json.

Prepares the three kinds of data the paper uses: bright images for the §3.1 simulation and §3.3
pretraining (`images`), real dark/bright pairs for §3.4 transfer and evaluation (`pairs`), and the
fixed simulated test set of §4 (`simulated`).

The job is safe to interrupt: TFDS writes into a hidden staging folder
`OUTPUT_DIR/.NAME.incomplete-*` and the finished `VERSION/` folder (with summary.json) is renamed
into `OUTPUT_DIR/NAME/` in one step, so readers never see a half-written dataset. Staging
folders of runs that died (SIGKILL, power loss) are removed by the next run in that OUTPUT_DIR.

An existing dataset is reused only when its stored fingerprint (data_prep.fingerprint: inputs
with sizes and modification times, kind, splits, split rules, sizes, bit depth, pixel limit,
simulation preset and seed) equals the requested build's; otherwise the run refuses and names the
differences, unless `overwrite=True`. Shards are byte-identical for identical inputs and options.

Decoding runs in a local process pool (`num_workers`) or, with `beam_runner`, on Apache Beam
through TFDS's Beam support (data_prep.beam): the same examples, ids, splits and skipped inputs.
"""
import contextlib
import dataclasses
import datetime
import io
import math
import os
import shutil
import sys
import time

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

import data_prep
from data_prep import core
from data_prep import fingerprint as fingerprint_lib
from data_prep import request as request_lib
from data_prep import simulated
from data_prep import staging as staging_lib
from data_prep import summary as summary_lib
from lowlight_tf import files

DEFAULT_SPLITS = data_prep.DEFAULT_SPLITS
InputError = core.InputError


@dataclasses.dataclass(frozen=True)
class _MaxSizeShardConfig(shard_utils.ShardConfig):
    """Shards of at most max_shard_size bytes (TFDS 4.9.10's ShardConfig ignores its own sizes).

    `ShardConfig.calculate_number_shards` is a classmethod reading the class defaults, so
    `DownloadConfig(max_shard_size=...)` has no effect; and a fixed `num_shards` fails on splits
    with fewer examples than shards. This picks ceil(size / max_shard_size), at most one shard per
    example.
    """

    def get_number_shards(self, total_size, num_examples, uses_precise_sharding=True):
        del uses_precise_sharding
        total = total_size + num_examples * self.overhead
        return max(1, min(num_examples, int(math.ceil(total / float(self.max_shard_size)))))


class _DownloadConfig(tfds.download.DownloadConfig):
    """DownloadConfig whose explicit max_shard_size is honoured (see _MaxSizeShardConfig)."""

    def get_shard_config(self):
        if self.max_shard_size == shard_utils.DEFAULT_MAX_SHARD_SIZE:
            return super().get_shard_config()  # TFDS defaults: 64 MB .. 1 GiB shards.
        return _MaxSizeShardConfig(max_shard_size=self.max_shard_size,
                                   min_shard_size=min(self.min_shard_size, self.max_shard_size))


def version_dir_of(output_dir, name):
    """Return OUTPUT_DIR/NAME/VERSION (the folder a finished dataset lives in)."""
    return os.path.join(output_dir, name, core.VERSION)


def _check_existing_kind(output_dir, name, kind):
    """Raise InputError when OUTPUT_DIR/NAME holds a dataset of another kind."""
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    existing_kind = data.dataset_kind(output_dir, name)
    if existing_kind != kind:
        raise InputError(f"{version_dir_of(output_dir, name)} already holds a {existing_kind!r} "
                         f"dataset, not {kind!r}; pick another --name or pass --overwrite to "
                         "replace it.")


def _reuse(output_dir, name, kind, fingerprint, report):
    """Return the summary of an existing dataset whose fingerprint equals `fingerprint`.

    Raises:
        InputError: the stored fingerprint differs (the message lists the differences).
    """
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    path = version_dir_of(output_dir, name)
    stored = fingerprint_lib.read(path)
    if stored is not None:
        differences = fingerprint_lib.differences(stored, fingerprint)
        if differences:
            raise InputError(
                f"{path} was built from other inputs or options than this run's:\n"
                + "\n".join(f"  {line}" for line in differences)
                + "\nPass --overwrite to rebuild it from this run's inputs, or choose another "
                "--name.")
    summary = summary_lib.read_summary(path) or {
        "kind": kind, "name": name, "path": os.path.abspath(path),
        "splits": {split: {"examples": n, "shards": 0, "bytes": 0}
                   for split, n in data.splits(output_dir, name).items()}}
    summary["reused"] = True
    if report:
        if stored is None:
            report(f"{path} exists but has no {fingerprint_lib.FINGERPRINT_FILE} (written by an "
                   "older version): reusing it unchecked (pass --overwrite to rebuild).")
        else:
            report(f"{path} exists with the same inputs and options: reusing it (pass "
                   "--overwrite to rebuild).")
    return summary


def _run_builder(name, plan, staging, download_config, base, attributes):
    """Build once into `staging`; with a Beam runner, read the skipped inputs back into the plan.

    Returns the builder's DatasetInfo; raises what TFDS raises (after the skips were read).
    """
    builder = core.make_builder_class(name, plan, base, **attributes)(data_dir=staging)
    try:
        # TFDS prints "downloading ... to <staging dir>" lines that would only confuse: hide its
        # stdout, keep ours.
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(download_config=download_config)
        return builder.info
    finally:
        if plan.beam_skips_dir:
            from data_prep import beam  # pylint: disable=import-outside-toplevel
            beam.read_skips(plan.beam_skips_dir, plan)
            planned = {item.split for item in plan.items}
            kept = {item.split for item in plan.items if not plan.skips.is_skipped(item.id)}
            plan.empty_splits = planned - kept


def _build(name, plan, staging, download_config, base, attributes, report):
    """Run the builder; retry without splits whose every input was skipped. Return info or None.

    TFDS refuses to finalise a split with no examples; when all inputs of a split turn out to be
    unusable, the split is dropped and the dataset rebuilt from the remaining inputs (the bad
    inputs are already known and not decoded again).
    """
    dropped = []
    while plan.items:
        try:
            info = _run_builder(name, plan, staging, download_config, base, attributes)
            if not plan.empty_splits:
                return info, dropped
        except Exception:  # pylint: disable=broad-except
            if not plan.empty_splits:
                raise
        dropped.extend(sorted(plan.empty_splits))
        if report:
            report(f"every input of split(s) {', '.join(sorted(plan.empty_splits))} was skipped; "
                   "rebuilding without them")
        plan.items = [item for item in plan.items
                      if item.split not in plan.empty_splits and not plan.skips.is_skipped(item.id)]
        plan.empty_splits = set()
        shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
    return None, dropped


def make_tfrecords(kind, *, output_dir, name, input_dir=None, pair_list=None,
                   splits=DEFAULT_SPLITS, max_side=None, overwrite=False, bit_depth="auto",
                   raw_half_size=False, raw_no_auto_bright=False, max_shard_mb=None,
                   num_workers=1, source_data=None, simulation_params="paper", seed=0,
                   split_overrides=None, split_by="id", split_ids=None, flags_text=None,
                   max_pixels=files.DEFAULT_MAX_PIXELS, beam_runner=None, beam_options=None,
                   report=None):
    """Build (or reuse) the dataset OUTPUT_DIR/NAME/VERSION and return its summary dict.

    Args:
        kind: "images", "pairs" or "simulated".
        output_dir: parent folder of the dataset.
        name: dataset name, lowercase snake_case.
        input_dir: input folder (images, pairs; for a pair list the root of its paths).
        pair_list: SID-style list file (pairs only).
        splits: "name:fraction,..." or an ordered mapping; assigned by a hash of the id.
        max_side: downscale so the longer side is at most this (None/0: keep the size).
        overwrite: rebuild even if the dataset exists. Without it an existing dataset is
            reused only when its fingerprint (inputs, options) equals this build's.
        bit_depth: "auto", "8" or "16" (stored dtype; see data_prep.images).
        raw_half_size, raw_no_auto_bright: rawpy rendering options (images kind; pairs always
            render raw without auto-brightening).
        max_shard_mb: maximum shard size in MB (None: TFDS defaults).
        num_workers: decoding processes of the local pool (images, pairs).
        source_data: `OUTPUT_DIR/NAME[:split]` of the source images dataset (simulated).
        simulation_params: `paper` or a preset JSON path (simulated).
        seed: simulation seed (simulated).
        split_overrides: optional {id: split} taking precedence over the hash.
        split_by: "id" (hash each id; pairs sharing a bright image stay together) or
            "index_run" (hash scenes: runs of consecutive integer file names).
        split_ids: explicit assignments such as ["calib:4-5,29,38"] (file stems, integer
            ranges), taking precedence over the hash (images and pairs).
        flags_text: the run's flags as a flagfile, written as flags.txt next to summary.json.
        max_pixels: pictures with more pixels (width x height, raw or ordinary) are skipped as
            `too_large` before decoding; None or 0 for no limit.
        beam_runner: None for the local process pool, or an Apache Beam runner name
            (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner; data_prep.beam): the
            same examples, ids and splits, decoded on that runner.
        beam_options: pipeline arguments for the runner as one string (e.g.
            "--direct_num_workers=2 --direct_running_mode=multi_processing").
        report: callable(str) for progress lines (and a progress bar on stderr while
            decoding), or None for silence.

    Returns:
        The summary dict (also written as summary.json): kind, name, path, dtype, splits
        ({split: {examples, shards, bytes}}), examples, skipped ([{path, reason, category}]),
        skipped_by_reason ({named reason: count}), fingerprint (digest), ...

    Raises:
        InputError: missing input, nothing usable, bad name/splits, --split_ids that match no
            input, an existing dataset of another kind or built from other inputs/options,
            a Beam runner without apache-beam installed. The message says what to do.
    """
    request = request_lib.Request(**locals())  # every argument, by name
    start = time.monotonic()
    split_fractions, split_rules = request_lib.check(request)
    tfds.disable_progress_bar()
    staging_lib.clean_stale(output_dir)
    version_dir = version_dir_of(output_dir, name)
    existing = os.path.isfile(os.path.join(version_dir, "dataset_info.json")) and not overwrite
    if existing:
        _check_existing_kind(output_dir, name, kind)

    skips = summary_lib.SkipLog()
    if report:
        report(f"[{kind}] scanning {input_dir or source_data} ...")
    scan = request_lib.scan(request, split_fractions, split_rules, skips)
    fingerprint = request_lib.fingerprint(request, split_fractions, scan)
    if existing:
        return _reuse(output_dir, name, kind, fingerprint, report)
    if report:
        counts = {s: sum(1 for i in scan.items if i.split == s) for s in split_fractions}
        report(f"[{kind}] {len(scan.items)} inputs -> "
               + ", ".join(f"{s} {n}" for s, n in counts.items())
               + f"; stored dtype {scan.dtype.name}"
               + (f"; on Beam ({beam_runner})" if beam_runner else ""))

    staging = staging_lib.create(output_dir, name)
    plan = core.Plan(kind=kind, items=scan.items, dtype=scan.dtype, worker_fn=scan.worker_fn,
                     skips=skips, num_workers=max(1, int(num_workers)),
                     report=_to_real_stdout(report), source=scan.source_spec,
                     description=f"lowlight_tf {kind} dataset from {scan.what}",
                     beam_skips_dir=os.path.join(staging, "beam_skips") if beam_runner else None)
    if plan.beam_skips_dir:
        os.makedirs(plan.beam_skips_dir)
    try:
        with core.deterministic_serialization():
            info, dropped = _build(name, plan, staging, _download_config(request, staging),
                                   scan.base, scan.attributes, report)
        skips.sort_by([item.id for item in scan.items])
        if info is None:
            raise request_lib.nothing_usable(scan.what, skips)
        staged_dir = os.path.join(staging, name, core.VERSION)
        summary = _summary(request, split_fractions, scan, plan, info, dropped, staged_dir)
        summary.update(candidates=len(scan.items), fingerprint=fingerprint["digest"],
                       seconds=round(time.monotonic() - start, 2))
        summary_lib.write_summary(staged_dir, summary)
        fingerprint_lib.write(staged_dir, fingerprint)
        if flags_text:
            files.write_text(os.path.join(staged_dir, "flags.txt"), flags_text)
        staging_lib.install(staged_dir, version_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _download_config(request, staging):
    """Return the TFDS DownloadConfig of a build (shard size; Beam runner and options)."""
    beam_args = {}
    if request.beam_runner:
        from data_prep import beam  # pylint: disable=import-outside-toplevel
        options = beam.make_options(request.beam_runner, request.beam_options)
        beam_args = dict(beam_runner=beam.make_runner(request.beam_runner, options),
                         beam_options=options)
    return _DownloadConfig(
        manual_dir=os.path.abspath(request.input_dir) if request.input_dir else staging,
        try_download_gcs=False,
        max_shard_size=(int(request.max_shard_mb * 1e6) if request.max_shard_mb
                        else shard_utils.DEFAULT_MAX_SHARD_SIZE),
        **beam_args)


def _summary(request, split_fractions, scan, plan, info, dropped, staged_dir):
    """Return the summary dict of a finished build (summary.json; docs/interfaces.md)."""
    sizes = summary_lib.split_sizes(staged_dir, info)
    order = list(split_fractions) + sorted(set(sizes) - set(split_fractions))
    sizes = {s: sizes[s] for s in order if s in sizes}
    notes = [f"split {s!r} received no inputs and was not written"
             for s in split_fractions if s not in sizes and s not in dropped]
    notes += [f"split {s!r} was dropped: every input of it was skipped" for s in dropped]
    skips = plan.skips
    simulated_options = ({"simulation_params": request.simulation_params,
                          "seed": int(request.seed),
                          "noise_peak": simulated.stored_noise_peak(
                              scan.attributes["preset"])}
                         if request.kind == "simulated" else {})
    return {
        "kind": request.kind,
        "name": request.name,
        "version": core.VERSION,
        "path": os.path.abspath(version_dir_of(request.output_dir, request.name)),
        "spec": f"{request.output_dir.rstrip('/')}/{request.name}",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "reused": False,
        "input_dir": request.input_dir,
        "pair_list": request.pair_list,
        "source_data": request.source_data,
        "dtype": scan.dtype.name,
        "dtype_rule": scan.rule,
        "splits": sizes,
        "examples": sum(s["examples"] for s in sizes.values()),
        "skipped_count": len(skips.skipped),
        "skipped_by_reason": skips.by_reason(),
        "skip_reasons": skips.glossary(),
        "skipped": skips.skipped,
        "ignored_files": skips.ignored_files,
        "notes": notes,
        "options": {
            "splits": dict(split_fractions), "max_side": request.max_side,
            "bit_depth": str(request.bit_depth), "raw_half_size": bool(request.raw_half_size),
            "raw_no_auto_bright": bool(request.raw_no_auto_bright),
            "max_shard_mb": request.max_shard_mb, "num_workers": plan.num_workers,
            "max_pixels": request.max_pixels, "split_by": request.split_by,
            "split_ids": list(request.split_ids or ()),
            "beam_runner": request.beam_runner, "beam_options": request.beam_options,
            **simulated_options,
        },
    }


def _to_real_stdout(report):
    """Wrap `report` so that it still prints while TFDS's own stdout is hidden."""
    if report is None:
        return None
    real_stdout = sys.stdout

    def wrapped(message):
        with contextlib.redirect_stdout(real_stdout):
            report(message)
    return wrapped
