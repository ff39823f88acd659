"""What `pip install` puts on a user's machine: namespaced commands for every tool, the flagfiles.

The command list is read from the metadata setuptools builds from this tree (not from whatever
was installed earlier), and a real wheel is built and installed into a temporary folder (no
network: the running environment's setuptools builds it, TensorFlow comes from the environment)
to check that a non-editable install runs the tools and finds the flagfiles by name.
"""
import email
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT  # pylint: disable=import-error
from lowlight_tf import cli

TOOLS = sorted(name for name in os.listdir(os.path.join(ROOT, "tools"))
               if "." not in name and os.path.isfile(os.path.join(ROOT, "tools", name)))
# Bare names that clash with other programs on a user's PATH (ImageMagick's `compare`, ...).
CLASHING = {"train", "evaluate", "compare", "enhance", "demo", "export", "reproduce"}

# Runs one console-script entry point the way pip's generated wrapper does.
RUN_ENTRY_POINT = """
import sys
from importlib.metadata import EntryPoint
name, value = sys.argv.pop(1), sys.argv.pop(1)
sys.exit(EntryPoint(name, value, "console_scripts").load()())
"""


def _docstring_first_line(tool):
    with open(os.path.join(ROOT, "tools", tool), encoding="utf-8") as f:
        source = f.read()
    return source.split('"""', 2)[1].strip().splitlines()[0]


@pytest.fixture(scope="module")
def built_metadata(tmp_path_factory):
    """The METADATA and entry points setuptools builds from this tree, as
    (Message, {name: value})."""
    out = tmp_path_factory.mktemp("metadata")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    dist_info = out / done.stdout.strip().splitlines()[-1]
    message = email.message_from_string((dist_info / "METADATA").read_text(encoding="utf-8"))
    scripts, section = {}, None
    for line in (dist_info / "entry_points.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "console_scripts":
            name, value = (part.strip() for part in line.split("=", 1))
            scripts[name] = value
    return message, scripts


@pytest.mark.slow
def test_every_tool_is_an_installed_namespaced_command(built_metadata):
    _, scripts = built_metadata
    assert len(TOOLS) >= 8 and cli.tool_names() == TOOLS
    assert scripts == {cli.command_name(tool): f"lowlight_tf.cli:{tool}" for tool in TOOLS}
    assert "lowlight-make-tfrecords" in scripts and "lowlight-train" in scripts
    assert not CLASHING & set(scripts) and not set(TOOLS) & set(scripts)
    assert all(name.startswith("lowlight-") for name in scripts)


@pytest.mark.slow
def test_runtime_dependencies_are_complete_and_patched_libraries_bounded(built_metadata):
    message, _ = built_metadata
    requires = {}
    for line in message.get_all("Requires-Dist"):
        requirement, _, marker = line.partition(";")
        name = requirement.split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
        if not marker.strip():  # runtime, not an extra
            requires[name.lower().replace("_", "-")] = requirement
    for needed in ("tensorflow", "keras", "tensorflow-datasets", "tifffile", "tqdm", "absl-py",
                   "rawpy", "pillow", "scikit-image", "scipy", "numpy"):
        assert needed in requires, f"{needed} missing from the runtime dependencies"
    for patched in ("keras", "tensorflow-datasets"):  # internals patched: an upper bound
        assert "<" in requires[patched], requires[patched]


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_every_entry_point_runs_its_tool(tool, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RUN_ENTRY_POINT, cli.command_name(tool),
         f"lowlight_tf.cli:{tool}", "--help"],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-3000:]  # absl's --help exits with 1
    assert _docstring_first_line(tool) in done.stdout  # the tool itself ran as __main__
    # --help lists the tool's own flags, also those defined in the library (train, reproduce).
    listed = re.findall(r"^\s+--(?:\[no\])?(\w+):", done.stdout, flags=re.MULTILINE)
    assert len(listed) >= 2, done.stdout[-2000:]


def test_a_bad_flag_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_flags(["lowlight-train", "--no_such_flag=1"])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("lowlight-train: error: ") and "no_such_flag" in message
    assert message.count("\n") == 1 and "lowlight-train --help" in message


def test_an_unknown_tool_is_no_attribute_of_cli():
    with pytest.raises(AttributeError):
        cli.no_such_tool  # pylint: disable=pointless-statement
    assert cli.compare.args == ("compare",)
    # A tool named like a function of cli (run, tools_dir, ...) would never be reached.
    assert not set(TOOLS) & set(vars(cli)), set(TOOLS) & set(vars(cli))


@pytest.mark.slow
def test_the_installed_command_runs_when_installed():
    command = os.path.join(os.path.dirname(sys.executable), "lowlight-compare")
    if not os.path.exists(command):
        pytest.skip("no lowlight-compare beside this Python: not installed, or installed before "
                    "the lowlight-* commands existed (run pip install -e . again)")
    done = subprocess.run([command, "--help"], capture_output=True, text=True, check=False)
    assert _docstring_first_line("compare") in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
def test_a_built_wheel_installs_tools_flagfiles_and_commands(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("lowlight_tf", "data_prep", "tools", "configs"):
        shutil.copytree(os.path.join(ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    done = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                                 str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = glob.glob(str(wheels / "lowlight_tf-*.whl"))
    done = subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(target),
                                 wheel], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(target / "lowlight_tf" / "_tools")) == TOOLS
    shipped = sorted(os.listdir(target / "lowlight_tf" / "_configs"))
    assert shipped == sorted(os.listdir(os.path.join(ROOT, "configs")))
    assert sorted(os.listdir(target / "bin")) == sorted(cli.command_name(t) for t in TOOLS)
    # The shipped pretrained model and its card are package data of a non-editable install.
    assert sorted(os.listdir(target / "lowlight_tf" / "pretrained")) == sorted(
        os.listdir(os.path.join(ROOT, "lowlight_tf", "pretrained")))

    # The installed copy, not this checkout: PYTHONPATH comes before the editable install's hook.
    env = dict(os.environ, PYTHONPATH=str(target))
    work = tmp_path / "elsewhere"
    work.mkdir()
    check = ("from lowlight_tf import cli; import sys; "
             "assert cli.__file__.startswith(sys.argv[1]), cli.__file__; "
             "print(cli.resolve_flagfile('pretrain')); print(cli.tools_dir())")
    done = subprocess.run([sys.executable, "-c", check, str(target)], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(target / "lowlight_tf" / "_configs" / "pretrain.flags"),
                                   str(target / "lowlight_tf" / "_tools")]
    # An installed command reads a shipped flagfile named without a path: smoke.flags holds
    # training flags, which tools/compare rejects by name.
    done = subprocess.run([str(target / "bin" / "lowlight-compare"), "--flagfile=smoke", "a", "b"],
                          cwd=work, env=env, capture_output=True, text=True, check=False)
    with open(os.path.join(ROOT, "configs", "smoke.flags"), encoding="utf-8") as f:
        first = next(line for line in f if line.startswith("--"))[2:].split("=")[0]
    assert "no_such" not in done.stderr, done.stderr[-3000:]
    assert f"Unknown command line flag '{first}'" in done.stderr, done.stderr[-3000:]
