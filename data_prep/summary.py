"""Run summaries for the offline data preparation job: skipped inputs with reasons, counts, sizes.

Supports the paper's data preparation (§3.1 bright images, §3.4 real pairs): every input that
could not be used is named with its reason, so nothing is lost silently.
"""
import collections
import json
import os

from lowlight_tf import files

SUMMARY_FILE = "summary.json"

# The one taxonomy of skipped inputs: every reader failure and every planning problem maps to one
# of these names (`category` of each entry of summary.json's `skipped`, counted in
# `skipped_by_reason`); the text beside it is the file's own detail.
SKIP_REASONS = {
    "unreadable": "missing, empty or unreadable file (permissions, I/O error)",
    "not_an_image": "content is not an image despite the file extension",
    "truncated": "the file ends early (an interrupted copy or download)",
    "corrupt": "damaged data: the decoder rejected it",
    "unsupported": "a format, pixel layout or sample type the decoders do not read",
    "too_large": "more pixels than --max_pixels (checked on the header, before decoding)",
    "decoder_crash": "the decoder crashed its worker process (the file was retried alone)",
    "decoder_error": "the decoder raised an unexpected error (a decoder bug or an exotic file)",
    "size_mismatch": "the dark and bright images of a pair differ in size",
    "unpaired": "a dark or bright file without its partner in the other folder",
    "missing_file": "a file named in the pair list does not exist",
    "malformed_list_line": "a pair list line that is not `short_path long_path [ISOxxx Fy]`",
    "simulation_failed": "the simulation of this image failed",
}


class SkipLog:
    """Collects skipped inputs (path, reason, category) and the count of ignored files."""

    def __init__(self):
        self.skipped = []
        self._seen = set()
        self.ignored_files = 0

    def skip(self, path, reason, category="decoder_error"):
        """Record that `path` (relative to the input root) was skipped.

        Args:
            path: the input's id or path relative to the input root.
            reason: human-readable detail, e.g. "truncated image (image file is truncated)".
            category: the named skip reason, a key of SKIP_REASONS.
        """
        if category not in SKIP_REASONS:
            raise ValueError(f"unknown skip category {category!r}; add it to SKIP_REASONS")
        if path in self._seen:
            return
        self._seen.add(path)
        self.skipped.append({"path": path, "reason": reason, "category": category})

    def sort_by(self, planned_ids):
        """Order the entries as the planned inputs (the same for the local pool and Beam,
        whatever order workers finished in); inputs skipped while planning stay first."""
        order = {example_id: index for index, example_id in enumerate(planned_ids)}
        self.skipped.sort(key=lambda entry: order.get(entry["path"], -1))

    def is_skipped(self, path):
        """Return True when `path` was already skipped."""
        return path in self._seen

    def by_reason(self):
        """Return {named skip reason: count}, most frequent first."""
        counts = collections.Counter(item["category"] for item in self.skipped)
        return dict(counts.most_common())

    def glossary(self):
        """Return {named skip reason: meaning} for the reasons that occurred."""
        return {name: SKIP_REASONS[name] for name in self.by_reason()}


def split_sizes(version_dir, dataset_info):
    """Return {split: {examples, shards, bytes}} from a tfds DatasetInfo and the files on disk."""
    sizes = collections.OrderedDict()
    for name, split in dataset_info.splits.items():
        shard_lengths = list(split.shard_lengths)
        prefix = f"{dataset_info.name}-{name}."
        on_disk = sum(os.path.getsize(os.path.join(version_dir, f))
                      for f in os.listdir(version_dir) if f.startswith(prefix))
        sizes[name] = {"examples": int(sum(shard_lengths)), "shards": len(shard_lengths),
                       "bytes": int(on_disk)}
    return sizes


def write_summary(version_dir, summary):
    """Write `summary` as summary.json into the dataset's version directory (atomically)."""
    path = os.path.join(version_dir, SUMMARY_FILE)
    files.write_json(path, summary, default=_json_default)
    return path


def read_summary(version_dir):
    """Return the summary.json dict of a dataset version directory, or None when absent."""
    path = os.path.join(version_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(value):
    """Serialise numpy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _human_bytes(num):
    """Format a byte count as e.g. 12.3 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1000 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000.0
    return f"{num:.1f} GB"


def format_summary(summary, max_skipped_lines=15):
    """Return a one-screen text version of a summary dict (as written to summary.json)."""
    lines = []
    state = "reused existing dataset" if summary.get("reused") else "written"
    lines.append(f"{summary['kind']} dataset {summary['name']!r} {state}: {summary['path']}")
    lines.append(f"  stored dtype: {summary.get('dtype', '?')}"
                 + (f"  ({summary['dtype_rule']})" if summary.get("dtype_rule") else ""))
    for name, info in summary.get("splits", {}).items():
        lines.append(f"  {name:>8}: {info['examples']:6d} examples  {info['shards']:3d} shards  "
                     f"{_human_bytes(info['bytes'])}")
    total = summary.get("examples", 0)
    lines.append(f"  {'total':>8}: {total:6d} examples from {summary.get('candidates', 0)} inputs"
                 f" in {summary.get('seconds', 0):.1f} s")
    for note in summary.get("notes", []):
        lines.append(f"  note: {note}")
    ignored = summary.get("ignored_files", 0)
    if ignored:
        lines.append(f"  ignored {ignored} files without an image or raw extension")
    skipped = summary.get("skipped", [])
    lines.append(f"  skipped {len(skipped)} inputs"
                 + (":" if skipped else ""))
    for item in skipped[:max_skipped_lines]:
        category = item.get("category")
        lines.append(f"    {item['path']}: " + (f"[{category}] " if category else "")
                     + item["reason"])
    if len(skipped) > max_skipped_lines:
        lines.append(f"    ... and {len(skipped) - max_skipped_lines} more "
                     f"(all listed in {SUMMARY_FILE})")
    return "\n".join(lines)
