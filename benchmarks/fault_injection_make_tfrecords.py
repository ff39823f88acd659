#!/usr/bin/env python3
"""Fault injection for tools/make_tfrecords: SIGKILL one build again and again, lose nothing.

A generated fixture (random 8-bit PNGs, incompressible so that shards take time to write, plus a
few bad files that must be skipped) is built once uninterrupted (the reference). A second build
of the same command, into its own output folder, is killed with SIGKILL and restarted with the
same command, over and over, until it finishes. Each kill targets one phase, in turn:

  - `startup`: a random moment in the first seconds (imports, scanning, fingerprint);
  - `decode`: a random moment after the decoding worker processes appeared;
  - `writing`: as soon as the first shard file appears in the hidden staging folder (TFDS writes
    a split's shards after generating it), plus a random 0-50 ms;
  - `late`: a random moment after the first shard, up to the reference run's end (later shards,
    dataset_info.json, summary.json, the install rename).

Checks after every kill: every process of the killed run (decoding workers, the multiprocessing
resource tracker) is gone within 10 s; nothing but hidden `.NAME.incomplete-*` staging folders and
complete datasets is visible in the output folder (a visible NAME/VERSION must be byte-identical
to the reference). At the end: the build exits 0, its shards and dataset_info.json are
byte-identical to the reference's (so its decoded records are too), its summary lists the same
examples and skips, and no staging folder is left.

  python benchmarks/fault_injection_make_tfrecords.py                 # 12 kills, ~10 min
  python benchmarks/fault_injection_make_tfrecords.py --kills=20 --seed=3 --work_dir=/tmp/fi

Prints the figures: kills (per phase), kills survived, stray processes, visible partial files,
examples lost.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "make_tfrecords")
NAME = "faults"
PHASES = ("startup", "decode", "writing", "late")


def write_fixture(folder, images, side, seed):
    """Write `images` random RGB PNGs of side x side plus three bad files; return the folder."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for index in range(images):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:04d}.png"))
    with open(os.path.join(folder, "empty.png"), "wb"):
        pass
    with open(os.path.join(folder, "text.jpg"), "w", encoding="utf-8") as f:
        f.write("not a picture")
    with open(os.path.join(folder, "0000.png"), "rb") as f:
        head = f.read(2000)
    with open(os.path.join(folder, "cut.png"), "wb") as f:
        f.write(head)
    return folder


def command(input_dir, output_dir, workers):
    return [sys.executable, TOOL, "--kind=images", f"--input_dir={input_dir}",
            f"--output_dir={output_dir}", f"--name={NAME}", "--splits=train:0.7,test:0.3",
            "--max_shard_mb=1", f"--num_workers={workers}"]


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid):
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid):
    """Return every live descendant PID of `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def staged_shards(output_dir, pid):
    """Return the number of shard files inside the hidden staging folder of process `pid`."""
    count = 0
    for entry in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
        if entry.startswith(f".{NAME}.incomplete-{pid}-"):
            for _, _, names in os.walk(os.path.join(output_dir, entry)):
                count += sum(1 for n in names if ".tfrecord-" in n)
    return count


def dataset_files(version_dir):
    """Return {file name: bytes} of the content files of a dataset version folder."""
    return {name: open(os.path.join(version_dir, name), "rb").read()
            for name in sorted(os.listdir(version_dir))
            if ".tfrecord-" in name or name in ("dataset_info.json", "features.json")}


def visible_problems(output_dir, reference):
    """Return the visible paths that are neither hidden staging nor a complete dataset."""
    problems = []
    if not os.path.isdir(output_dir):
        return problems
    for entry in os.listdir(output_dir):
        path = os.path.join(output_dir, entry)
        if entry.startswith("."):
            if not entry.startswith(f".{NAME}.incomplete-"):
                problems.append(path)
            continue
        if entry != NAME:
            problems.append(path)
            continue
        for version in os.listdir(path):
            version_dir = os.path.join(path, version)
            if version != "1.0.0" or dataset_files(version_dir) != reference:
                problems.append(version_dir)
    return problems


def wait_for(condition, process, timeout):
    """Poll `condition()` every 20 ms until true, the process ends or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return False


def killed_run(cmd, output_dir, phase, rng, reference_seconds, log):
    """Start the build, SIGKILL it in `phase`; return (killed, stray PIDs, seconds at kill)."""
    start = time.monotonic()
    process = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
    seen = set()

    def track(condition=lambda: False):
        def check():
            seen.update(descendants(process.pid))
            return condition()
        return check

    if phase == "startup":
        wait_for(track(), process, rng.uniform(0.2, min(8.0, reference_seconds * 0.5)))
    elif phase == "decode":
        if wait_for(track(lambda: len(descendants(process.pid)) >= 2), process, 600):
            wait_for(track(), process, rng.uniform(0.0, 1.5))
    elif phase == "writing":
        if wait_for(track(lambda: staged_shards(output_dir, process.pid) > 0), process, 600):
            wait_for(track(), process, rng.uniform(0.0, 0.05))
    else:
        if wait_for(track(lambda: staged_shards(output_dir, process.pid) > 0), process, 600):
            wait_for(track(), process, rng.uniform(0.0, max(0.5, reference_seconds * 0.2)))
    seen.update(descendants(process.pid))
    at = time.monotonic() - start
    if process.poll() is not None:
        return False, [], at
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in seen):
        time.sleep(0.1)
    stray = sorted(pid for pid in seen if alive(pid))
    for pid in stray:  # ours: end them so that the next run starts clean
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True, stray, at


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs of the build (>= 1).")
    parser.add_argument("--images", type=int, default=80, help="PNG inputs in the fixture.")
    parser.add_argument("--side", type=int, default=256, help="Side of each PNG in pixels.")
    parser.add_argument("--workers", type=int, default=2, help="--num_workers of the builds.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    parser.add_argument("--work_dir", default=None, help="Folder for the fixture and outputs "
                        "(default: a temporary folder, removed at the end).")
    args = parser.parse_args()
    if not os.path.isdir("/proc/self"):
        sys.exit("fault_injection_make_tfrecords: needs /proc (Linux) to find worker processes.")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fault_make_tfrecords_")
    os.makedirs(work_dir, exist_ok=True)
    rng = random.Random(args.seed)
    input_dir = write_fixture(os.path.join(work_dir, "inputs"), args.images, args.side,
                              args.seed)
    reference_dir, faults_dir = (os.path.join(work_dir, d) for d in ("reference", "killed"))
    for folder in (reference_dir, faults_dir):
        shutil.rmtree(folder, ignore_errors=True)
    log = open(os.path.join(work_dir, "runs.log"), "w", encoding="utf-8")  # noqa: SIM115

    start = time.monotonic()
    reference = subprocess.run(command(input_dir, reference_dir, args.workers), stdout=log,
                               stderr=log, cwd=ROOT, check=False)
    reference_seconds = time.monotonic() - start
    if reference.returncode != 0:
        sys.exit(f"the reference build failed (exit {reference.returncode}); see {log.name}")
    reference_files = dataset_files(os.path.join(reference_dir, NAME, "1.0.0"))
    print(f"reference build: {reference_seconds:.1f} s, "
          f"{sum('.tfrecord-' in n for n in reference_files)} shards", flush=True)

    cmd = command(input_dir, faults_dir, args.workers)
    kills, stray_total, visible_total, finished_early = {p: 0 for p in PHASES}, 0, 0, 0
    attempt = 0
    while sum(kills.values()) < args.kills:
        phase = PHASES[attempt % len(PHASES)]
        attempt += 1
        killed, stray, at = killed_run(cmd, faults_dir, phase, rng, reference_seconds, log)
        problems = visible_problems(faults_dir, reference_files)
        if killed:
            kills[phase] += 1
        else:
            finished_early += 1
        stray_total += len(stray)
        visible_total += len(problems)
        print(f"run {attempt:2d}: {phase:8s} {'killed' if killed else 'finished'} at {at:5.1f} s"
              f", {len(stray)} stray processes, {len(problems)} visible partial paths"
              + (f" {problems}" if problems else ""), flush=True)
        if not killed:
            shutil.rmtree(os.path.join(faults_dir, NAME), ignore_errors=True)  # start over

    final = subprocess.run(cmd, stdout=log, stderr=log, cwd=ROOT, check=False)
    version_dir = os.path.join(faults_dir, NAME, "1.0.0")
    final_files = dataset_files(version_dir) if final.returncode == 0 else {}
    leftovers = [e for e in os.listdir(faults_dir) if ".incomplete-" in e]
    with open(os.path.join(reference_dir, NAME, "1.0.0", "summary.json")) as f:
        expected = json.load(f)
    got = {}
    if final.returncode == 0:
        with open(os.path.join(version_dir, "summary.json")) as f:
            got = json.load(f)
    lost = expected["examples"] - got.get("examples", 0)
    same_skips = got.get("skipped") == expected["skipped"]
    identical = final_files == reference_files
    total_kills = sum(kills.values())
    survived = total_kills if final.returncode == 0 and identical else 0
    print()
    print(f"kills: {total_kills} ({', '.join(f'{p} {n}' for p, n in kills.items())}); "
          f"runs that finished before their kill point: {finished_early}")
    print(f"survived: {survived}/{total_kills} (final build exit {final.returncode}, shards and "
          f"dataset_info.json byte-identical to the uninterrupted build: {identical}, same "
          f"skipped list: {same_skips})")
    print(f"data lost: {max(lost, 0)} of {expected['examples']} examples; stray processes: "
          f"{stray_total}; visible partial files: {visible_total}; staging folders left: "
          f"{len(leftovers)}")
    print(f"total {time.monotonic() - start:.0f} s; log: {log.name}")
    log.close()
    ok = (survived == total_kills and lost == 0 and stray_total == 0 and visible_total == 0
          and not leftovers and same_skips)
    if not args.work_dir and ok:
        shutil.rmtree(work_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
