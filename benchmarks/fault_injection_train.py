#!/usr/bin/env python3
"""Fault injection for tools/train: SIGKILL one run at many points, restart it, lose nothing.

One reference run trains uninterrupted. A second run of the same command (same flags, its own
model_dir) is killed with SIGKILL again and again and restarted each time with the same command,
until it finishes. Kill points:

  - `time`: the parent sends SIGKILL at a random moment: either 1-30 s after the process
    start (start-up, data building, first steps), or a random fraction of an epoch after the
    process wrote its first or second new checkpoint (training, validation, TensorBoard writes,
    saves: wherever the moment falls);
  - `checkpoint`, `backup`, `final`: inside a save. The child's launcher wraps Keras'
    `Model.save_weights` / `Model.save`; when the run writes its N-th checkpoint
    (checkpoints/.partial_epoch_NNN.weights.h5), backup (backup/.partial_...) or final.keras
    (.final.*.partial.keras), the wrapper truncates the file being written to half its bytes
    and SIGKILLs its own process before the rename: a kill in the middle of the write;
  - `metadata`: the backup's training_metadata.json is written to its temporary file and the
    process is SIGKILLed before the rename.

Checks after the run finishes: it exits 0; its final.keras and every checkpoint epoch_001..N
load and are bit-identical to the reference run's (with --deterministic, TF_ENABLE_ONEDNN_OPTS=0
and --strategy=default training is bit-reproducible, BUILD_NOTES.md), else the largest absolute
weight difference is printed; no process of a killed run outlives it; no partial or temporary
file is left in the model_dir (visible or hidden) and backup/ is gone.

  python benchmarks/fault_injection_train.py                       # 14 kills, about 10 min
  python benchmarks/fault_injection_train.py --time_kills=12 --seed=3 --work_dir=/tmp/fi

The tool runs from `--tree` (default: this checkout) with the editable install's import hook
removed, so a snapshot of the code can be tested while the working tree is being edited.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the child: remove the editable hook, put the tree first, arm the in-save kill, run the
# tool. FI_KILL_IN="kind:N" kills at the N-th save of that kind.
LAUNCHER = r'''
import os, runpy, signal, sys
tree, tool = sys.argv[1:3]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
plan = os.environ.get("FI_KILL_IN", "")
if plan:
    kind, ordinal = plan.split(":")
    ordinal, seen = int(ordinal), [0]

    def hit(path):
        seen[0] += 1
        if seen[0] == ordinal:
            if os.path.isfile(path):  # a kill in the middle of the write: half the bytes
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    import keras
    folders = {"checkpoint": "checkpoints", "backup": "backup"}
    save_weights, save = keras.Model.save_weights, keras.Model.save

    def wrapped_save_weights(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        path = os.fspath(filepath)
        if (os.path.basename(path).startswith(".partial_")
                and os.path.basename(os.path.dirname(path)) == folders.get(kind)):
            hit(path)

    def wrapped_save(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        name = os.path.basename(os.fspath(filepath))
        if kind == "final" and name.startswith(".final.") and ".partial" in name:
            hit(os.fspath(filepath))

    keras.Model.save_weights, keras.Model.save = wrapped_save_weights, wrapped_save
    replace = os.replace

    def wrapped_replace(src, dst, *args, **kwargs):
        if kind == "metadata" and os.path.basename(os.fspath(dst)) == "training_metadata.json":
            hit(os.fspath(src))
        return replace(src, dst, *args, **kwargs)

    os.replace = wrapped_replace
sys.argv = [tool] + sys.argv[3:]
runpy.run_path(os.path.join(tree, tool), run_name="__main__")
'''


def train_args(model_dir, sample_root, epochs, steps):
    """configs/smoke.flags-like tiny settings, bit-reproducible."""
    return ["--stage=pretrain", "--train_data=sample", f"--sample_root={sample_root}",
            f"--model_dir={model_dir}", "--base_filters=8", "--depth=3", "--patch_size=32",
            "--batch_size=8", f"--epochs={epochs}", f"--steps_per_epoch={steps}",
            "--validation_steps=2", "--num_images=4", "--seed=0", "--deterministic",
            "--strategy=default", "--verbose=2"]


def environment(kill_in=""):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env.pop("FI_KILL_IN", None)
    if kill_in:
        env["FI_KILL_IN"] = kill_in
    return env


def start(tree, args, log, kill_in=""):
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, tree, "tools/train", *args],
                            cwd=tree, env=environment(kill_in), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid):
    """Pids of every live process below `pid` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def session_members(sid):
    """Pids of live processes in session `sid` (a killed run's leftovers would be here)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except OSError:
                pass
    return members


def checkpoints(model_dir):
    folder = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def leftovers(model_dir):
    """Partial or temporary files anywhere in model_dir, and whether backup/ is still there."""
    bad = []
    for folder, _, names in os.walk(model_dir):
        if os.path.relpath(folder, model_dir).split(os.sep)[0] == "sample_data":
            continue
        for name in names:
            if "partial" in name or name.endswith(".tmp"):
                bad.append(os.path.relpath(os.path.join(folder, name), model_dir))
    return bad, os.path.isdir(os.path.join(model_dir, "backup"))


def weights(path):
    from lowlight_tf import model as model_lib
    model = model_lib.load_model(path)
    return {w.path: np.asarray(w.numpy()) for w in model.weights}


def max_difference(a, b):
    if a.keys() != b.keys():
        return float("inf")
    return max(float(np.max(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a)


def plan_kills(rng, time_kills, epochs):
    """A shuffled list of kill points, the in-save final kill last."""
    plan = [("time", None)] * time_kills
    plan += [("checkpoint", rng.randint(1, 2)), ("checkpoint", rng.randint(1, 3)),
             ("backup", rng.randint(1, 2)), ("backup", rng.randint(1, 3)),
             ("metadata", rng.randint(1, 2))]
    rng.shuffle(plan)
    return plan + [("final", 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=ROOT, help="Checkout whose tools/train is tested.")
    parser.add_argument("--work_dir", default="", help="Scratch folder (default: a temp dir).")
    parser.add_argument("--time_kills", type=int, default=8,
                        help="Kills at random moments (6 kills inside saves come on top).")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps_per_epoch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill plan.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per process.")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    work = options.work_dir or tempfile.mkdtemp(prefix="fault_injection_train_")
    os.makedirs(work, exist_ok=True)
    sample_root = os.path.join(work, "sample_data")
    reference, victim = os.path.join(work, "reference"), os.path.join(work, "killed")
    for folder in (reference, victim):
        shutil.rmtree(folder, ignore_errors=True)
    log_path = os.path.join(work, "train.log")
    print(f"work dir {work}; tree {options.tree}; log {log_path}", flush=True)

    with open(log_path, "w", encoding="utf-8") as log:
        # Reference run (also builds the sample datasets), with its time line of checkpoints.
        started = time.monotonic()
        process = start(options.tree, train_args(reference, sample_root, options.epochs,
                                                 options.steps_per_epoch), log)
        first_checkpoint = None
        while process.poll() is None:
            if first_checkpoint is None and checkpoints(reference):
                first_checkpoint = time.monotonic() - started
            time.sleep(0.05)
        total = time.monotonic() - started
        if process.returncode != 0:
            sys.exit(f"The reference run failed (exit {process.returncode}); see {log_path}.")
        epoch_seconds = (total - first_checkpoint) / max(1, options.epochs - 1)
        print(f"reference run: {total:.1f} s, first checkpoint after {first_checkpoint:.1f} s, "
              f"{epoch_seconds:.2f} s per epoch", flush=True)

        args = train_args(victim, sample_root, options.epochs, options.steps_per_epoch)
        rows, strays, restarts = [], 0, 0
        for kind, ordinal in plan_kills(rng, options.time_kills, options.epochs):
            before = len(checkpoints(victim))
            log.write(f"\n===== kill {len(rows) + 1}: {kind} {ordinal or ''}\n")
            log.flush()
            process = start(options.tree, args, log,
                            kill_in=f"{kind}:{ordinal}" if kind != "time" else "")
            started = time.monotonic()
            at = None
            if kind == "time":
                wait_for = rng.choice([0, 0, 1, 2])  # new checkpoints before the kill
                if wait_for:
                    while (process.poll() is None
                           and len(checkpoints(victim)) < before + wait_for):
                        time.sleep(0.01)
                    delay = rng.uniform(0.0, epoch_seconds)
                else:
                    delay = rng.uniform(1.0, 30.0)
                at_start = time.monotonic()
                while process.poll() is None and time.monotonic() - at_start < delay:
                    time.sleep(0.01)
                at = time.monotonic() - started
                ordinal = f"{wait_for} ckpt + {delay:.1f} s"
                below = descendants(process.pid)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
            else:
                below = []
            try:
                code = process.wait(timeout=options.timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            restarts += 1
            time.sleep(0.5)
            alive = [p for p in below if os.path.exists(f"/proc/{p}")]
            alive += [p for p in session_members(process.pid) if p not in alive]
            strays += len(alive)
            for pid in alive:  # never leave them running, but count them
                os.kill(pid, signal.SIGKILL)
            rows.append({"kind": kind, "ordinal": ordinal, "at_seconds": at, "exit": code,
                         "killed": code == -signal.SIGKILL, "checkpoints_before": before,
                         "checkpoints_after": len(checkpoints(victim)), "strays": len(alive)})
            print(f"kill {len(rows):2d}: {kind:10s} "
                  + (f"{ordinal} ({at:5.1f} s)" if at is not None else f"save #{ordinal}")
                  + f" exit {code:4d}  checkpoints {before:2d} -> "
                  f"{rows[-1]['checkpoints_after']:2d}  strays {len(alive)}", flush=True)
            if code == 0:
                print("  (the run finished before this kill point)", flush=True)

        log.write("\n===== final restart\n")
        log.flush()
        process = start(options.tree, args, log)
        code = process.wait(timeout=options.timeout)
        restarts += 1

    killed = sum(r["killed"] for r in rows)
    bad, backup_left = leftovers(victim)
    expected = [f"epoch_{e:03d}.weights.h5" for e in range(1, options.epochs + 1)]
    names = checkpoints(victim)
    final_difference = max_difference(weights(os.path.join(reference, "final.keras")),
                                      weights(os.path.join(victim, "final.keras")))
    checkpoint_difference = max(
        max_difference(weights(os.path.join(reference, "checkpoints", n)),
                       weights(os.path.join(victim, "checkpoints", n)))
        for n in expected) if names == expected else float("inf")
    result = {
        "kills": killed, "kill_points": len(rows), "restarts": restarts,
        "kills_by_kind": {k: sum(r["killed"] for r in rows if r["kind"] == k)
                          for k in ("time", "checkpoint", "backup", "metadata", "final")},
        "final_exit": code, "checkpoints_complete": names == expected,
        "final_max_abs_difference": final_difference,
        "checkpoints_max_abs_difference": checkpoint_difference,
        "stray_processes": strays, "partial_files_left": bad, "backup_left": backup_left,
        "reference_seconds": round(total, 1),
    }
    passed = (code == 0 and names == expected and final_difference == 0.0
              and checkpoint_difference == 0.0 and strays == 0 and not bad and not backup_left)
    result["passed"] = passed
    print(json.dumps(result, indent=2))
    print(f"{'PASSED' if passed else 'FAILED'}: {killed} SIGKILLs ({len(rows)} kill points, "
          f"{restarts} starts), final exit {code}, final weights max |diff| {final_difference} "
          f"and checkpoints {checkpoint_difference} against the uninterrupted run, "
          f"{strays} stray processes, {len(bad)} partial files, backup left: {backup_left}.")
    with open(os.path.join(work, "result.json"), "w", encoding="utf-8") as f:
        json.dump({"result": result, "kills": rows}, f, indent=2)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
