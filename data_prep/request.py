"""What one `make_tfrecords` call asks for: the request, its checks, the planned inputs, and the
options and input files that make up its fingerprint (paper §3.1 bright images, §3.4 pairs, §4
simulated test set).

`prepare.make_tfrecords` builds a `Request` from its arguments, `check` validates it, `scan` plans
one `core.Item` per input (no decoding yet), and `fingerprint` says what decides the content, so
that an existing dataset is reused only for the same request.
"""
import dataclasses
import importlib.util
import os
import re

from data_prep import core
from data_prep import fingerprint as fingerprint_lib
from data_prep import images
from data_prep import pairs
from data_prep import simulated
from data_prep import splitting
from data_prep import workers

InputError = core.InputError
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def check_name(name):
    """Raise InputError unless `name` is a valid dataset name (lowercase snake_case)."""
    if not name or not _NAME_RE.match(name):
        raise InputError(f"--name={name!r} is not a valid dataset name: use lowercase letters, "
                         "digits and _, starting with a letter (e.g. eliei_rgb_dev).")


@dataclasses.dataclass(frozen=True)
class Request:
    """The arguments of one make_tfrecords call (see its docstring for each)."""
    kind: str
    output_dir: str
    name: str
    input_dir: str
    pair_list: str
    splits: object
    max_side: int
    overwrite: bool
    bit_depth: str
    raw_half_size: bool
    raw_no_auto_bright: bool
    max_shard_mb: float
    num_workers: int
    source_data: str
    simulation_params: str
    seed: int
    split_overrides: dict
    split_by: str
    split_ids: list
    flags_text: str
    max_pixels: int
    beam_runner: str
    beam_options: str
    report: object


@dataclasses.dataclass
class Scan:
    """What scanning the inputs planned: items, stored dtype, and how to build them."""
    items: list
    dtype: object
    rule: str
    what: str
    worker_fn: object = None
    base: type = core.LowlightBuilder
    attributes: dict = dataclasses.field(default_factory=dict)
    source_spec: object = None


def check(request):
    """Validate a request; return (split fractions, split id rules). InputError when bad."""
    if request.kind not in core.KINDS:
        raise InputError(f"--kind={request.kind!r} must be one of {', '.join(core.KINDS)}.")
    check_name(request.name)
    if not request.output_dir:
        raise InputError("No --output_dir given.")
    try:
        split_fractions = (splitting.parse_splits(request.splits)
                           if isinstance(request.splits, str) else request.splits)
    except ValueError as error:
        raise InputError(f"--splits: {error}") from None
    try:
        split_rules = splitting.parse_split_ids(request.split_ids)
    except ValueError as error:
        raise InputError(f"--split_ids: {error}") from None
    if request.max_side is not None and request.max_side < 0:
        raise InputError(f"--max_side={request.max_side} must be >= 0 (0 keeps the full size).")
    if request.max_pixels is not None and request.max_pixels < 0:
        raise InputError(f"--max_pixels={request.max_pixels} must be >= 0 (0 sets no limit).")
    if request.kind == "simulated" and request.split_ids:
        raise InputError("--split_ids applies to --kind=images and --kind=pairs only; a "
                         "simulated dataset takes its ids from --source_data (name a split "
                         "there instead).")
    if request.beam_runner:
        if importlib.util.find_spec("apache_beam") is None:
            raise InputError(f"--beam_runner={request.beam_runner} needs Apache Beam, which is "
                             "an optional extra: pip install -e '.[beam]' (or pip install "
                             "apache-beam), or leave --beam_runner unset to decode with the "
                             "local process pool.")
    elif request.beam_options:
        raise InputError("--beam_options is given without --beam_runner; name the runner (e.g. "
                         "--beam_runner=DirectRunner) or drop --beam_options.")
    return split_fractions, split_rules


def scan(request, split_fractions, split_rules, skips):
    """Plan the examples of a request (one Item per input); InputError when nothing is usable."""
    common = dict(split_overrides=request.split_overrides, bit_depth=request.bit_depth,
                  max_side=request.max_side, raw_half_size=request.raw_half_size,
                  split_by=request.split_by, split_ids=split_rules,
                  max_pixels=request.max_pixels)
    if request.kind == "images":
        items, dtype, rule = images.scan(request.input_dir, split_fractions, skips=skips,
                                         raw_no_auto_bright=request.raw_no_auto_bright, **common)
        scan = Scan(items, dtype, rule, f"{request.input_dir!r}", workers.decode_image_task)
    elif request.kind == "pairs":
        items, dtype, rule = pairs.scan(request.input_dir, split_fractions, skips=skips,
                                        pair_list=request.pair_list, **common)
        scan = Scan(items, dtype, rule, f"{request.pair_list or request.input_dir!r}",
                    workers.decode_pair_task)
    else:
        scan = _scan_simulated(request, split_fractions)
    if not scan.items:
        raise nothing_usable(scan.what, skips)
    unmatched = splitting.unmatched_split_ids(request.split_ids, [i.id for i in scan.items])
    if unmatched:
        raise InputError(f"--split_ids: {', '.join(unmatched)} match no input in {scan.what} "
                         "(ids are file stems such as 12 for 12.png, or integer ranges). Check "
                         "the ids and the input folder.")
    return scan


def _scan_simulated(request, split_fractions):
    """Plan a simulated dataset from its source images dataset and preset."""
    from lowlight_tf import data  # pylint: disable=import-outside-toplevel
    if not request.source_data:
        raise InputError("--kind=simulated needs --source_data=OUTPUT_DIR/NAME[:split], an "
                         "images dataset written earlier by make_tfrecords.")
    try:
        source_spec = data.parse_dataset_spec(request.source_data)
    except data.DatasetError as error:
        raise InputError(str(error)) from None
    preset = simulated.load_preset(request.simulation_params)
    items, dtype, rule = simulated.scan(source_spec, split_fractions,
                                        split_overrides=request.split_overrides)
    return Scan(items, dtype, rule, f"{request.source_data!r}", base=simulated.SimulatedBuilder,
                attributes={"preset": preset, "seed": int(request.seed)},
                source_spec=source_spec)


def _options(request, split_fractions, source_spec):
    """Return the options that decide a build's content (part of its fingerprint)."""
    options = {
        "splits": [[split, fraction] for split, fraction in split_fractions.items()],
        "split_by": request.split_by, "split_ids": list(request.split_ids or ()),
        "split_overrides": dict(sorted((request.split_overrides or {}).items())),
        "max_shard_mb": request.max_shard_mb,
    }
    if request.kind in ("images", "pairs"):
        options.update(
            input_dir=[os.path.abspath(p) for p in str(request.input_dir or "").split(",") if p],
            pair_list=os.path.abspath(request.pair_list) if request.pair_list else None,
            max_side=request.max_side or None, bit_depth=str(request.bit_depth),
            raw_half_size=bool(request.raw_half_size), max_pixels=request.max_pixels or None)
        if request.kind == "images":
            options["raw_no_auto_bright"] = bool(request.raw_no_auto_bright)
        return options
    params = str(request.simulation_params)
    options.update(source_data=f"{os.path.abspath(source_spec.output_dir)}/"
                               f"{source_spec.name}:{source_spec.split or ''}",
                   source=_source_identity(source_spec), simulation_params=params,
                   simulation_params_sha256=(fingerprint_lib.content_digest(params)
                                             if os.path.isfile(params) else None),
                   seed=int(request.seed))
    return options


def fingerprint(request, split_fractions, scan):
    """Return the fingerprint of a planned build (data_prep.fingerprint): options and inputs."""
    options = _options(request, split_fractions, scan.source_spec)
    if request.kind == "images":
        paths = [item.task[0] for item in scan.items]
    elif request.kind == "pairs":
        paths = [path for item in scan.items for path in item.task[:2]]
    else:
        paths = []
    if request.pair_list:
        paths.append(request.pair_list)
    return fingerprint_lib.make(request.kind, core.VERSION, options, paths)


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


def nothing_usable(what, skips):
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
