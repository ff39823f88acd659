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
"""
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

import data_prep
from data_prep import core
from data_prep import fingerprint as fingerprint_lib
from data_prep import images
from data_prep import pairs
from data_prep import simulated
from data_prep import splitting
from data_prep import summary as summary_lib
from data_prep import workers
from lowlight_tf import files

DEFAULT_SPLITS = data_prep.DEFAULT_SPLITS
InputError = core.InputError
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_STAGING_RE = re.compile(r"^\.(?P<name>[a-z][a-z0-9_]*)\.incomplete-(?P<pid>\d+)-")
# Written into each staging folder: the owner's PID and start time, so that a PID reused by an
# unrelated process after a crash does not keep a dead run's folder forever.
_OWNER_FILE = "owner.json"


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


def check_name(name):
    """Raise InputError unless `name` is a valid dataset name (lowercase snake_case)."""
    if not name or not _NAME_RE.match(name):
        raise InputError(f"--name={name!r} is not a valid dataset name: use lowercase letters, "
                         "digits and _, starting with a letter (e.g. eliei_rgb_dev).")


def version_dir_of(output_dir, name):
    """Return OUTPUT_DIR/NAME/VERSION (the folder a finished dataset lives in)."""
    return os.path.join(output_dir, name, core.VERSION)


def _process_start_time(pid):
    """Return the start time of process `pid` (clock ticks since boot; Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after "(comm)": state is field 3 of stat(5), starttime field 22.
    return None if fields[0] == "Z" else int(fields[19])


def _is_alive(pid, start_time=None):
    """Return True when process `pid` runs (and, if given, started at `start_time`)."""
    if pid == os.getpid():
        return False  # A folder of this PID is from an earlier process that had the same PID.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start_time(pid)
    if started is None:
        return not os.path.exists(f"/proc/{int(pid)}")  # A zombie is dead; no /proc: trust kill.
    return start_time is None or started == start_time


def _staging_owner(folder):
    """Return the start time recorded in a staging folder, or None."""
    try:
        with open(os.path.join(folder, _OWNER_FILE), encoding="utf-8") as f:
            return json.load(f).get("start_time")
    except (OSError, ValueError, AttributeError):
        return None


def _clean_stale_staging(output_dir):
    """Remove every staging folder in output_dir whose run is no longer alive; return them.

    A run killed hard (SIGKILL, power loss) cannot remove its `.NAME.incomplete-PID-*` folder;
    the next run in the same OUTPUT_DIR does, whatever its NAME, and whether it builds or reuses.
    Folders of live runs are left alone (two runs may build different names side by side).
    """
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for entry in sorted(os.listdir(output_dir)):
        match = _STAGING_RE.match(entry)
        folder = os.path.join(output_dir, entry)
        if not match or not os.path.isdir(folder):
            continue
        if not _is_alive(int(match.group("pid")), _staging_owner(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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


def _fingerprint(kind, items, options, extra_paths=()):
    """Return the fingerprint of a planned build (see data_prep.fingerprint)."""
    if kind == "images":
        paths = [item.task[0] for item in items]
    elif kind == "pairs":
        paths = [path for item in items for path in item.task[:2]]
    else:
        paths = []
    return fingerprint_lib.make(kind, core.VERSION, options, list(paths) + list(extra_paths))


def _source_identity(source_spec):
    """Return what identifies the source dataset of a simulated build (its fingerprint digest,
    else a digest of its dataset_info.json)."""
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    source_dir = data.dataset_dir(source_spec.output_dir, source_spec.name)
    stored = fingerprint_lib.read(source_dir)
    if stored and stored.get("digest"):
        return {"fingerprint": stored["digest"]}
    return {"dataset_info": fingerprint_lib.content_digest(
        os.path.join(source_dir, "dataset_info.json"))}


def _nothing_usable(what, skips):
    """Return the InputError for an input with no usable example."""
    lines = [f"Nothing usable in {what}: no example could be written."]
    if skips.skipped:
        lines.append(f"{len(skips.skipped)} inputs were skipped, e.g.:")
        lines.extend(f"  {s['path']}: {s['reason']}" for s in skips.skipped[:5])
    if skips.ignored_files:
        lines.append(f"{skips.ignored_files} files without an image/raw extension were ignored.")
    lines.append("Check the folder and the --kind; supported: raw files of any LibRaw format and "
                 ".png .jpg .jpeg .tif .tiff .bmp images.")
    return InputError("\n".join(lines))


def _build(name, plan, staging, download_config, base, attributes, report):
    """Run the builder; retry without splits whose every input was skipped. Return info or None.

    TFDS refuses to finalise a split with no examples; when all inputs of a split turn out to be
    unusable, the split is dropped and the dataset rebuilt from the remaining inputs (the bad
    inputs are already known and not decoded again).
    """
    dropped = []
    while plan.items:
        builder = core.make_builder_class(name, plan, base, **attributes)(data_dir=staging)
        try:
            # TFDS prints "downloading ... to <staging dir>" lines that would only confuse: hide
            # its stdout, keep ours.
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare(download_config=download_config)
            return builder.info, dropped
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
                   max_pixels=files.DEFAULT_MAX_PIXELS, report=None):
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
        num_workers: decoding processes (images, pairs).
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
        report: callable(str) for progress lines (and a progress bar on stderr while
            decoding), or None for silence.

    Returns:
        The summary dict (also written as summary.json): kind, name, path, dtype, splits
        ({split: {examples, shards, bytes}}), examples, skipped ([{path, reason, category}]),
        skipped_by_reason ({named reason: count}), fingerprint (digest), ...

    Raises:
        InputError: missing input, nothing usable, bad name/splits, --split_ids that match no
            input, an existing dataset of another kind or built from other inputs/options. The
            message says what to do.
    """
    start = time.monotonic()
    if kind not in core.KINDS:
        raise InputError(f"--kind={kind!r} must be one of {', '.join(core.KINDS)}.")
    check_name(name)
    if not output_dir:
        raise InputError("No --output_dir given.")
    try:
        split_fractions = splitting.parse_splits(splits) if isinstance(splits, str) else splits
    except ValueError as error:
        raise InputError(f"--splits: {error}") from None
    try:
        split_rules = splitting.parse_split_ids(split_ids)
    except ValueError as error:
        raise InputError(f"--split_ids: {error}") from None
    if max_side is not None and max_side < 0:
        raise InputError(f"--max_side={max_side} must be >= 0 (0 keeps the full size).")
    if max_pixels is not None and max_pixels < 0:
        raise InputError(f"--max_pixels={max_pixels} must be >= 0 (0 sets no limit).")
    if kind == "simulated" and split_ids:
        raise InputError("--split_ids applies to --kind=images and --kind=pairs only; a "
                         "simulated dataset takes its ids from --source_data (name a split "
                         "there instead).")
    tfds.disable_progress_bar()

    _clean_stale_staging(output_dir)
    version_dir = version_dir_of(output_dir, name)
    existing = os.path.isfile(os.path.join(version_dir, "dataset_info.json")) and not overwrite
    if existing:
        _check_existing_kind(output_dir, name, kind)

    skips = summary_lib.SkipLog()
    base, attributes, source_spec = core.LowlightBuilder, {}, None
    if report:
        report(f"[{kind}] scanning {input_dir or source_data} ...")
    if kind == "images":
        items, dtype, rule = images.scan(
            input_dir, split_fractions, skips=skips, split_overrides=split_overrides,
            bit_depth=bit_depth, max_side=max_side, raw_half_size=raw_half_size,
            raw_no_auto_bright=raw_no_auto_bright, split_by=split_by, split_ids=split_rules,
            max_pixels=max_pixels)
        worker_fn, what = workers.decode_image_task, f"{input_dir!r}"
    elif kind == "pairs":
        items, dtype, rule = pairs.scan(
            input_dir, split_fractions, skips=skips, pair_list=pair_list,
            split_overrides=split_overrides, bit_depth=bit_depth, max_side=max_side,
            raw_half_size=raw_half_size, split_by=split_by, split_ids=split_rules,
            max_pixels=max_pixels)
        worker_fn, what = workers.decode_pair_task, f"{pair_list or input_dir!r}"
    else:
        from lowlight_tf import data  # pylint: disable=import-outside-toplevel
        if not source_data:
            raise InputError("--kind=simulated needs --source_data=OUTPUT_DIR/NAME[:split], an "
                             "images dataset written earlier by make_tfrecords.")
        try:
            source_spec = data.parse_dataset_spec(source_data)
        except data.DatasetError as error:
            raise InputError(str(error)) from None
        preset = simulated.load_preset(simulation_params)
        items, dtype, rule = simulated.scan(source_spec, split_fractions,
                                            split_overrides=split_overrides)
        base, worker_fn, what = simulated.SimulatedBuilder, None, f"{source_data!r}"
        attributes = {"preset": preset, "seed": int(seed)}
        num_workers = 1  # Simulation runs TensorFlow in this process.
    if not items:
        raise _nothing_usable(what, skips)
    unmatched = splitting.unmatched_split_ids(split_ids, [item.id for item in items])
    if unmatched:
        raise InputError(f"--split_ids: {', '.join(unmatched)} match no input in {what} (ids "
                         "are file stems such as 12 for 12.png, or integer ranges). Check the "
                         "ids and the input folder.")
    options = {
        "splits": [[split, fraction] for split, fraction in split_fractions.items()],
        "split_by": split_by, "split_ids": list(split_ids or ()),
        "split_overrides": dict(sorted((split_overrides or {}).items())),
        "max_shard_mb": max_shard_mb,
    }
    if kind in ("images", "pairs"):
        options.update(input_dir=[os.path.abspath(p) for p in str(input_dir or "").split(",")
                                  if p],
                       pair_list=os.path.abspath(pair_list) if pair_list else None,
                       max_side=max_side or None, bit_depth=str(bit_depth),
                       raw_half_size=bool(raw_half_size), max_pixels=max_pixels or None)
        if kind == "images":
            options["raw_no_auto_bright"] = bool(raw_no_auto_bright)
    else:
        options.update(source_data=f"{os.path.abspath(source_spec.output_dir)}/"
                                   f"{source_spec.name}:{source_spec.split or ''}",
                       source=_source_identity(source_spec),
                       simulation_params=str(simulation_params),
                       simulation_params_sha256=(fingerprint_lib.content_digest(simulation_params)
                                                 if os.path.isfile(str(simulation_params))
                                                 else None),
                       seed=int(seed))
    fingerprint = _fingerprint(kind, items, options, [pair_list] if pair_list else [])
    if existing:
        return _reuse(output_dir, name, kind, fingerprint, report)
    candidates = len(items)
    if report:
        counts = {s: sum(1 for i in items if i.split == s) for s in split_fractions}
        report(f"[{kind}] {candidates} inputs -> "
               + ", ".join(f"{s} {n}" for s, n in counts.items())
               + f"; stored dtype {dtype.name}")

    plan = core.Plan(kind=kind, items=items, dtype=dtype, worker_fn=worker_fn, skips=skips,
                     num_workers=max(1, int(num_workers)), report=_to_real_stdout(report),
                     source=source_spec,
                     description=f"lowlight_tf {kind} dataset from {what}")
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.incomplete-{os.getpid()}-", dir=output_dir)
    files.write_json(os.path.join(staging, _OWNER_FILE),
                     {"pid": os.getpid(), "start_time": _process_start_time(os.getpid())})
    download_config = _DownloadConfig(
        manual_dir=os.path.abspath(input_dir) if input_dir else staging,
        try_download_gcs=False,
        max_shard_size=(int(max_shard_mb * 1e6) if max_shard_mb
                        else shard_utils.DEFAULT_MAX_SHARD_SIZE))
    try:
        with core.deterministic_serialization():
            info, dropped = _build(name, plan, staging, download_config, base, attributes,
                                   report)
        if info is None:
            raise _nothing_usable(what, skips)
        staged_dir = os.path.join(staging, name, core.VERSION)
        sizes = summary_lib.split_sizes(staged_dir, info)
        order = list(split_fractions) + sorted(set(sizes) - set(split_fractions))
        sizes = {s: sizes[s] for s in order if s in sizes}
        notes = [f"split {s!r} received no inputs and was not written"
                 for s in split_fractions if s not in sizes and s not in dropped]
        notes += [f"split {s!r} was dropped: every input of it was skipped" for s in dropped]
        summary = {
            "kind": kind,
            "name": name,
            "version": core.VERSION,
            "path": os.path.abspath(version_dir),
            "spec": f"{output_dir.rstrip('/')}/{name}",
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "reused": False,
            "input_dir": input_dir,
            "pair_list": pair_list,
            "source_data": source_data,
            "dtype": dtype.name,
            "dtype_rule": rule,
            "splits": sizes,
            "examples": sum(s["examples"] for s in sizes.values()),
            "candidates": candidates,
            "skipped_count": len(skips.skipped),
            "skipped_by_reason": skips.by_reason(),
            "skip_reasons": skips.glossary(),
            "skipped": skips.skipped,
            "ignored_files": skips.ignored_files,
            "notes": notes,
            "options": {
                "splits": dict(split_fractions), "max_side": max_side, "bit_depth": str(bit_depth),
                "raw_half_size": bool(raw_half_size),
                "raw_no_auto_bright": bool(raw_no_auto_bright),
                "max_shard_mb": max_shard_mb, "num_workers": plan.num_workers,
                "max_pixels": max_pixels, "split_by": split_by,
                "split_ids": list(split_ids or ()),
                **({"simulation_params": simulation_params, "seed": int(seed),
                    "noise_peak": float(attributes["preset"].noise_peak)}
                   if kind == "simulated" else {}),
            },
            "fingerprint": fingerprint["digest"],
            "seconds": round(time.monotonic() - start, 2),
        }
        summary_lib.write_summary(staged_dir, summary)
        fingerprint_lib.write(staged_dir, fingerprint)
        if flags_text:
            files.write_text(os.path.join(staged_dir, "flags.txt"), flags_text)
        _install(staged_dir, version_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _to_real_stdout(report):
    """Wrap `report` so that it still prints while TFDS's own stdout is hidden."""
    if report is None:
        return None
    real_stdout = sys.stdout

    def wrapped(message):
        with contextlib.redirect_stdout(real_stdout):
            report(message)
    return wrapped


def _install(staged_dir, version_dir, staging):
    """Move the finished version folder into place (replacing an old one) with renames."""
    os.makedirs(os.path.dirname(version_dir), exist_ok=True)
    if os.path.exists(version_dir):
        os.rename(version_dir, os.path.join(staging, "replaced"))
    os.rename(staged_dir, version_dir)
