"""Shared test settings and helpers: quiet TensorFlow, keep tests on the CPU and off ../shared.

Also the repository root, one way to run a tool of tools/ in a child process, and the tiny
images dataset that several test files train on (built once per test run).
"""
import json
import os
import socket
import subprocess
import sys

# Before TensorFlow is imported anywhere: its C++ logging and device discovery read these once.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# pylint: disable=wrong-import-position
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from data_prep import prepare  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool_env(**extra):
    """The environment of a tool's child process: this one, quiet and on the CPU, plus extra."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)


def tool_command(name, *args):
    """The command line running tools/NAME with this Python."""
    return [sys.executable, os.path.join(ROOT, "tools", name), *args]


def run_tool(name, *args, cwd=ROOT, env=None, timeout=600, check=False):
    """Run tools/NAME with args in a child process; return the subprocess.CompletedProcess.

    stdout and stderr are captured as text. `env` holds variables set on top of `tool_env()`;
    `timeout` (seconds) raises subprocess.TimeoutExpired, generous because a CPU shared with
    other jobs can take minutes to start TensorFlow; `check=True` raises on a non-zero exit.
    """
    return subprocess.run(tool_command(name, *args), cwd=cwd, env=tool_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout, check=check)


def start_tool(name, *args, cwd=ROOT, env=None, **popen):
    """Start tools/NAME without waiting; return the subprocess.Popen (stdout, stderr piped)."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(tool_command(name, *args), cwd=cwd, env=tool_env(**(env or {})),
                            **popen)


def free_ports(count):
    """`count` free TCP ports on localhost."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_train_workers(*args, workers=2, timeout=240):
    """Run tools/train as a `workers`-process MultiWorkerMirroredStrategy cluster on localhost.

    Returns [(returncode, stdout, stderr)] per worker, worker 0 (the chief) first; every
    process is gone on return.
    """
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    processes = [
        start_tool("train", *args, "--strategy=multi_worker",
                   env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}})})
        for index in range(workers)]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            outputs.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """An images dataset `tiny` of 8 random 48x64 PNGs (6 train, 2 val); returns OUTPUT_DIR/NAME."""
    root = tmp_path_factory.mktemp("tiny")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    overrides = {}
    for i in range(8):
        image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(photos / f"p{i}.png")
        overrides[f"p{i}.png"] = "val" if i >= 6 else "train"
    prepare.make_tfrecords("images", output_dir=str(root / "tfrecords"), name="tiny",
                           input_dir=str(photos), splits="train:0.75,val:0.25",
                           split_overrides=overrides)
    return str(root / "tfrecords" / "tiny")
