"""Staging folders of the data job: build out of sight, install with one rename, clean up crashes.

TFDS writes a dataset into a hidden staging folder `OUTPUT_DIR/.NAME.incomplete-PID-*`; the
finished `VERSION/` folder is renamed into `OUTPUT_DIR/NAME/` in one step, so readers never see
a half-written dataset (paper §3.1/§3.4 data preparation). Each staging folder records its
owner's PID and start time; the next run in the same OUTPUT_DIR removes folders whose owner is
gone (SIGKILL, power loss), even when the PID was reused by an unrelated process.
"""
import json
import os
import re
import shutil
import tempfile

from lowlight_tf import files

_STAGING_RE = re.compile(r"^\.(?P<name>[a-z][a-z0-9_]*)\.incomplete-(?P<pid>\d+)-")
# Written into each staging folder: the owner's PID and start time, so that a PID reused by an
# unrelated process after a crash does not keep a dead run's folder forever.
_OWNER_FILE = "owner.json"


def _process_start_time(pid):
    """Return the start time of process `pid` (clock ticks since boot; Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after "(comm)": state is field 3 of stat(5), starttime field 22.
    return None if fields[0] == "Z" else int(fields[19])


def is_alive(pid, start_time=None):
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


def _owner_start_time(folder):
    """Return the start time recorded in a staging folder, or None."""
    try:
        with open(os.path.join(folder, _OWNER_FILE), encoding="utf-8") as f:
            return json.load(f).get("start_time")
    except (OSError, ValueError, AttributeError):
        return None


def clean_stale(output_dir):
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
        if not is_alive(int(match.group("pid")), _owner_start_time(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def create(output_dir, name):
    """Create and return a new staging folder OUTPUT_DIR/.NAME.incomplete-PID-XXXX (owned)."""
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.incomplete-{os.getpid()}-", dir=output_dir)
    files.write_json(os.path.join(staging, _OWNER_FILE),
                     {"pid": os.getpid(), "start_time": _process_start_time(os.getpid())})
    return staging


def install(staged_dir, version_dir, staging):
    """Move the finished version folder into place (replacing an old one) with renames."""
    os.makedirs(os.path.dirname(version_dir), exist_ok=True)
    if os.path.exists(version_dir):
        os.rename(version_dir, os.path.join(staging, "replaced"))
    os.rename(staged_dir, version_dir)
