"""Every flagfile in configs/ parses with the tool it is written for (no unknown or invalid flag).

Reproduce flagfiles (they set --work_dir) go to tools/reproduce, the others to tools/train. Paths
in them (../shared/data) are only read when a run starts, so parsing needs no data.
"""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags")))

# Loads a tool's flag definitions without running it, then parses each flagfile given.
PARSE = """
import runpy, sys
from absl import flags
runpy.run_path(sys.argv[1], run_name="parse_only")
for path in sys.argv[2:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tool", "--flagfile=" + path])
    print("parsed", path)
"""


def _tool_of(path):
    with open(path, encoding="utf-8") as f:
        return "reproduce" if any(line.startswith("--work_dir=") for line in f) else "train"


@pytest.mark.parametrize("tool", ["reproduce", "train"])
def test_flagfiles_parse_with_their_tool(tool):
    files = [path for path in CONFIGS if _tool_of(path) == tool]
    assert files, f"no flagfile for tools/{tool} in configs/"
    done = subprocess.run([sys.executable, "-c", PARSE, os.path.join(ROOT, "tools", tool), *files],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("parsed") == len(files)


def test_a_bad_flag_in_a_flagfile_fails_the_parse(tmp_path):
    bad = tmp_path / "bad.flags"
    bad.write_text("--work_dir=x\n--no_such_flag=1\n")
    done = subprocess.run([sys.executable, "-c", PARSE, os.path.join(ROOT, "tools", "reproduce"),
                           str(bad)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode != 0 and "no_such_flag" in done.stderr
