"""tools/evaluate's report folder and files: per_image.csv, unpaired.csv, summary.json, table.md.

The folder is staged and put in place in one step; a later run replaces only a folder this tool
wrote (its marker file lists what it holds), never one holding anything else.
"""
import csv
import io
import json
import os
import re
import shutil
import tempfile

import numpy as np

from lowlight_tf import chroma
from lowlight_tf import files
from lowlight_tf.training_facts import NOT_AVAILABLE


class EvaluationError(ValueError):
    """A user error (bad model, dataset or output directory); the message says what to do."""


# Written last into every report folder: what tools/evaluate wrote there (so a later run may
# replace that folder as a whole, and never a folder holding anything else).
REPORT_MARKER = ".evaluation_report.json"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_files(folder):
    """Relative paths of every file under `folder` (sorted)."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(found)


def _is_previous_report(folder, names):
    """True when `folder` holds only the files of an earlier tools/evaluate report."""
    marker = os.path.join(folder, REPORT_MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                listed = set(json.load(f).get("files", []))
        except (OSError, ValueError, AttributeError):
            return False
        return set(names) <= listed | {REPORT_MARKER}
    # A report of a version without the marker: only its known files, and its summary.json.
    known = {"per_image.csv", "summary.json", "table.md"}
    if not all(n in known or (n.startswith("panels" + os.sep) and n.endswith(".png"))
               for n in names) or "summary.json" not in names:
        return False
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "rows" in summary and "metrics" in summary


class ReportFolder:
    """Where one evaluation's report is written: a hidden staging folder beside `output_dir`,
    put in place by `commit()` only when the whole report is complete.

    A kill or an error before `commit` leaves `output_dir` exactly as it was (the staging folder
    is hidden and removed by the next run). `output_dir` may be missing, empty or an earlier
    report of this tool: it is then replaced as a whole, so old and new files never mix. A
    folder holding anything else is refused unless `overwrite`; with `overwrite` the report's
    files are moved into it one by one (each replace is atomic) and only the files of an earlier
    report listed in its marker are removed, never the user's other files.
    """

    def __init__(self, output_dir, overwrite=False):
        self.output_dir = os.path.abspath(output_dir)
        parent, self.name = os.path.split(self.output_dir.rstrip(os.sep))
        if os.path.lexists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise EvaluationError(f"--output_dir {output_dir} is a file, not a folder; choose "
                                  "another --output_dir.")
        self.existing = _report_files(self.output_dir) if os.path.isdir(self.output_dir) else []
        self.replace_whole = not self.existing or _is_previous_report(self.output_dir,
                                                                      self.existing)
        if not self.replace_whole and not overwrite:
            shown = ", ".join(self.existing[:3]) + (", ..." if len(self.existing) > 3 else "")
            raise EvaluationError(
                f"--output_dir {output_dir} holds files tools/evaluate did not write ({shown}). "
                "Choose a new or empty --output_dir, or pass --overwrite to write the report "
                "into it (only the report's own files are replaced).")
        try:
            os.makedirs(parent, exist_ok=True)
            self._remove_stale(parent)
            self.staging = tempfile.mkdtemp(prefix=f".{self.name}.staging-{os.getpid()}-",
                                            dir=parent)
        except OSError as e:
            raise EvaluationError(f"Cannot write the report to {output_dir} "
                                  f"({e.strerror or e}); choose a folder you can write to.") from e
        self.written = []

    def _remove_stale(self, parent):
        """Deletes staging folders of this output_dir left by killed runs (dead process ids)."""
        pattern = re.compile(rf"^\.{re.escape(self.name)}\.(staging|old)-(\d+)-")
        for entry in os.listdir(parent):
            match = pattern.match(entry)
            if match and not _pid_alive(int(match.group(2))):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

    def path(self, relative):
        """The staging path of a report file (folders created); records it as written."""
        path = os.path.join(self.staging, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.written.append(relative)
        return path

    def commit(self):
        """Puts the complete report in place of output_dir; returns output_dir."""
        files.write_json(os.path.join(self.staging, REPORT_MARKER),
                         {"tool": "tools/evaluate", "files": sorted(set(self.written))})
        if self.replace_whole:
            old = None
            if os.path.isdir(self.output_dir):
                old = tempfile.mkdtemp(prefix=f".{self.name}.old-{os.getpid()}-",
                                       dir=os.path.dirname(self.output_dir))
                os.rename(self.output_dir, os.path.join(old, "report"))
            os.rename(self.staging, self.output_dir)
            if old:
                shutil.rmtree(old, ignore_errors=True)
            return self.output_dir
        previous = []
        marker = os.path.join(self.output_dir, REPORT_MARKER)
        if os.path.isfile(marker):
            try:
                with open(marker, encoding="utf-8") as f:
                    previous = list(json.load(f).get("files", []))
            except (OSError, ValueError, AttributeError):
                previous = []
        for relative in sorted(set(previous) - set(self.written)):
            stale = os.path.join(self.output_dir, relative)
            if os.path.isfile(stale):
                os.remove(stale)
        for relative in sorted(set(self.written)) + [REPORT_MARKER]:
            target = os.path.join(self.output_dir, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(self.staging, relative), target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.output_dir

    def abandon(self):
        """Removes the staging folder; output_dir is untouched."""
        shutil.rmtree(self.staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Reports.

def _format_number(value, digits):
    if isinstance(value, (int, float)) and np.isfinite(value):
        return f"{value:.{digits}f}"
    return NOT_AVAILABLE


def format_table(rows):
    """Markdown table in the shape of the paper's Table 1 (plus SSIM, GT-mean PSNR, the input
    gain, the output / reference brightness and the chroma noise in flat dark regions of the
    output and of the reference, in their own columns; "n/a" where a row has no value).

    GT-mean PSNR (prediction scaled to the reference's mean first) is never mixed with PSNR.
    """
    lines = [
        "| Model | Dataset | No. training images from dataset | No. epochs initial / transfer "
        "| PSNR (dB) | SSIM | GT-mean PSNR (dB) | Input gain | Output / reference brightness "
        "| Chroma noise in flat dark regions: output / reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        is_baseline = row.get("kind") == "baseline"
        lines.append(
            f"| {row['method']}{' (baseline)' if is_baseline else ''} | {row['dataset']} "
            f"| {'-' if is_baseline else row.get('training_images', NOT_AVAILABLE)} "
            f"| {'-' if is_baseline else row.get('epochs', NOT_AVAILABLE)} "
            f"| {_format_number(row['psnr'], 2)} | {_format_number(row['ssim'], 3)} "
            f"| {_format_number(row['psnr_gt_mean'], 2)} | {row.get('gain', 1.0):g} "
            f"| {_format_number(row.get('brightness_ratio'), 2)} "
            f"| {_format_number(row.get('chroma_noise'), 2)} / "
            f"{_format_number(row.get('chroma_noise_reference'), 2)} |")
    return "\n".join(lines)


def format_unpaired_table(rows):
    """Markdown table of the no-reference check: mean brightness and clipped highlights."""
    lines = ["| Method | Photos | Input gain | Images | Mean brightness (of 255) "
             "| Clipped-highlight pixels (%) | Periodic texture |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        is_baseline = row.get("kind") == "baseline"
        lines.append(
            f"| {row['method']}{' (baseline)' if is_baseline else ''} | {row['dataset']} "
            f"| {row['gain']:g} | {row['images']} | {_format_number(row['mean_brightness'], 1)} "
            f"| {_format_number(100.0 * row['clipped_fraction'], 2)} "
            f"| {_format_number(row['periodic_texture'], 2)} |")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _csv_text(fieldnames, lines):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k != "gain" else
                             f"{v:g}" if k == "gain" else v) for k, v in line.items()})
    return buffer.getvalue()


# New columns go at the end: readers of older files (and scripts) may rely on the order.
PER_IMAGE_FIELDS = ["dataset", "id", "method", "gain", "psnr", "psnr_gt_mean", "ssim",
                    "brightness_ratio", "chroma_noise", "chroma_noise_reference"]
# The no-reference numbers of every unpaired photo and output (evaluation_scoring.score_unpaired).
UNPAIRED_STATS = ("mean_brightness", "clipped_fraction", "periodic_texture")
UNPAIRED_FIELDS = ["dataset", "id", "method", "gain", *UNPAIRED_STATS]


# What each column of per_image.csv and each summary row holds (summary.json "metrics").
METRIC_DESCRIPTIONS = {
    "psnr": "20 log10(255 / sqrt(MSE)) on 8-bit values (paper §3.3), mean over images",
    "psnr_gt_mean": "PSNR after scaling the prediction to the reference's mean "
                    "(GT-mean); not comparable with plain PSNR",
    "ssim": "SSIM, 11x11 Gaussian window sigma 1.5, on [0, 255] (tf.image.ssim)",
    "gain": "input gain: each dark input was clip(round(dark * gain), 0, 255) in 8-bit "
            "values (gain 1: as stored), scored against the same reference",
    "brightness_ratio": "geometric mean over images of mean(output) / mean(reference) "
                        "(a mean of per-image ratios; 1 = the reference's brightness)",
    "chroma_noise": f"{chroma.DEFINITION} (lowlight_tf.chroma), of the output; mean over the "
                    "images that have such regions",
    "chroma_noise_reference": "the same of the reference itself, on the same regions and "
                              "images (its real chroma noise)",
}


def write_reports(report, rows, per_image, settings, *, unpaired_rows=(),
                  unpaired_per_image=(), unpaired_skipped=()):
    """Writes per_image.csv, summary.json and table.md (and unpaired.csv) atomically.

    Args:
      report: a ReportFolder (files go to its staging folder), or a folder path (each file
        written atomically in place).
    """
    def path(name):
        if isinstance(report, ReportFolder):
            return report.path(name)
        os.makedirs(report, exist_ok=True)
        return os.path.join(report, name)

    if rows:
        files.write_text(path("per_image.csv"), _csv_text(PER_IMAGE_FIELDS, per_image))
    if unpaired_rows:
        files.write_text(path("unpaired.csv"), _csv_text(UNPAIRED_FIELDS, unpaired_per_image))
    summary = {
        "rows": [{k: _json_safe(v) for k, v in row.items()} for row in rows],
        "settings": settings,
        "metrics": dict(METRIC_DESCRIPTIONS),
    }
    if unpaired_rows or unpaired_skipped:
        summary["unpaired_rows"] = [{k: _json_safe(v) for k, v in row.items()}
                                    for row in unpaired_rows]
        summary["unpaired_skipped"] = [{"path": p, "reason": r} for p, r in unpaired_skipped]
        summary["metrics"]["mean_brightness"] = (
            "no reference: mean over pixels and channels of the 8-bit output, of 255, "
            "averaged over photos")
        summary["metrics"]["clipped_fraction"] = (
            "no reference: fraction of pixels with any channel >= 254, averaged over photos")
        summary["metrics"]["periodic_texture"] = (
            "no reference: power of a 2- or 4-pixel period over its neighbouring frequencies "
            "(luma; about 1 without periodic texture), averaged over photos")
    files.write_json(path("summary.json"), summary)
    text = []
    if rows:
        text.append(format_table(rows) + "\n\nPSNR by the paper's formula on 8-bit values; "
                    "GT-mean PSNR scales the prediction to the reference's mean brightness first "
                    "and is not comparable with plain PSNR. Baselines are computed on the same "
                    "images. Input gain: each dark input scaled by it (8-bit multiply with "
                    "clipping) before enhancement; output / reference brightness is the "
                    "geometric mean over images of mean(output) / mean(reference). Chroma "
                    f"noise in flat dark regions: {chroma.DEFINITION}; of the output and of "
                    "the reference on the same blocks, mean over the images that have such "
                    "blocks (n/a: none).\n")
    if unpaired_rows:
        text.append("## No-reference check on unpaired photos\n\n"
                    + format_unpaired_table(unpaired_rows) + "\n\nMean brightness of the 8-bit "
                    "outputs (of 255) and the share of pixels with a channel >= 254 (clipped "
                    "highlights), averaged over the photos: a blow-out shows as a high mean and "
                    "many clipped pixels. Periodic texture: the power of a 2- or 4-pixel period "
                    "over its neighbouring frequencies (luma; about 1 for a photo, higher where "
                    "the enhancer draws a checkerboard texture).\n")
    files.write_text(path("table.md"), "\n".join(text))
