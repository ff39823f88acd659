"""Every flagfile in configs/ parses with the tool it is written for, named without a path.

Reproduce flagfiles (they set --work_dir) go to tools/reproduce, the others to tools/train. Paths
in them (../shared/data) are only read when a run starts, so parsing needs no data. The tools
expand `--flagfile` with lowlight_tf.cli.expand_flagfiles (names of shipped flagfiles resolve);
its reading rules must stay those of absl's own `--flagfile`.
"""
import glob
import os
import subprocess
import sys

from absl import flags
import pytest

from conftest import ROOT  # pylint: disable=import-error
from lowlight_tf import cli

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags")))
NAMES = [os.path.basename(path)[:-len(".flags")] for path in CONFIGS]

# Loads a tool's flag definitions without running it, then parses each flagfile given, the way
# the tools do (cli.run: names expanded, then absl parses).
PARSE = """
import runpy, sys
from absl import flags
from lowlight_tf import cli
runpy.run_path(sys.argv[1], run_name="parse_only")
for value in sys.argv[2:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(cli.expand_flagfiles(["tool", "--flagfile=" + value]))
    print("parsed", value)
"""


def _tool_of(path):
    with open(path, encoding="utf-8") as f:
        return "reproduce" if any(line.startswith("--work_dir=") for line in f) else "train"


def _parse(tool, values, cwd=ROOT):
    return subprocess.run([sys.executable, "-c", PARSE, os.path.join(ROOT, "tools", tool),
                           *values], capture_output=True, text=True, cwd=cwd, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["reproduce", "train"])
def test_flagfiles_parse_with_their_tool_by_name_from_anywhere(tool, tmp_path):
    names = [name for name, path in zip(NAMES, CONFIGS) if _tool_of(path) == tool]
    assert names, f"no flagfile for tools/{tool} in configs/"
    done = _parse(tool, names, cwd=tmp_path)  # not the checkout: names must not need it
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("parsed") == len(names)


@pytest.mark.slow
def test_a_bad_flag_in_a_flagfile_fails_the_parse(tmp_path):
    bad = tmp_path / "bad.flags"
    bad.write_text("--work_dir=x\n--no_such_flag=1\n")
    done = _parse("reproduce", [str(bad)])
    assert done.returncode != 0 and "no_such_flag" in done.stderr


def test_the_checkout_configs_are_the_shipped_flagfiles():
    assert cli.flagfile_names() == NAMES
    assert len(NAMES) >= 7


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_flagfile_resolves_by_name(name):
    expected = os.path.join(ROOT, "configs", name + ".flags")
    for value in (name, name + ".flags"):
        assert os.path.samefile(cli.resolve_flagfile(value), expected)


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").write_text("--seed=7\n")
    assert cli.resolve_flagfile("smoke") == "smoke"
    assert cli.expand_flagfiles(["tool", "--flagfile=smoke"]) == ["tool", "--seed=7"]
    with open(os.path.join(ROOT, "configs", "smoke.flags"), encoding="utf-8") as f:
        first = next(line.strip() for line in f if line.startswith("--"))
    assert cli.expand_flagfiles(["tool", "--flagfile=smoke.flags"])[1] == first


def test_an_unknown_name_or_missing_path_says_what_exists(tmp_path):
    for value in ("no_such_config", str(tmp_path / "missing.flags"), "configs/pretrain"):
        with pytest.raises(cli.FlagfileError, match="smoke"):
            cli.resolve_flagfile(value)


def test_expansion_reads_flagfiles_as_absl_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inner.flags").write_text("# comment\n--b=2\n\n// also a comment\n  --c=3  \n")
    (tmp_path / "outer.flags").write_text("--a=1\n--flagfile=inner.flags\n--d=4\n")
    argv = ["tool", "--x=0", "--flagfile=outer.flags", "pos", "-flagfile=inner.flags",
            "--flagfile", "inner.flags", "--flagfile=", "--", "--flagfile=outer.flags"]
    expected = [argv[0]] + flags.FlagValues().read_flags_from_files(argv[1:])
    assert cli.expand_flagfiles(argv) == expected
    assert expected[1:5] == ["--x=0", "--a=1", "--b=2", "--c=3"]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "zero_shot_eliei"])
def test_every_flagfile_expands_as_absl_reads_its_path(name):
    path = os.path.join(ROOT, "configs", name + ".flags")
    assert (cli.expand_flagfiles(["tool", "--flagfile=" + name])
            == ["tool"] + flags.FlagValues().read_flags_from_files(["--flagfile=" + path]))


def test_a_nested_name_expands_in_place():
    lines = cli.expand_flagfiles(["tool", "--flagfile=zero_shot_eliei", "--seed=3"])
    base = cli.expand_flagfiles(["tool", "--flagfile=reproduce_eliei"])[1:]
    assert lines[1:1 + len(base)] == base  # the nested file first: the lines after it win
    assert lines[1 + len(base)] == "--notone_curve" and lines[-1] == "--seed=3"


# Loads a tool's flag definitions and prints {name: [default, help]} of the flags it added.
DEFINED = """
import json, runpy, sys
from absl import flags
before = set(flags.FLAGS)
runpy.run_path(sys.argv[1], run_name="parse_only")
print(json.dumps({name: [flags.FLAGS[name].default, flags.FLAGS[name].help]
                  for name in set(flags.FLAGS) - before
                  if flags.FLAGS.find_module_defining_flag(name, "") in (
                      "lowlight_tf.config", sys.argv[1])}))
"""


def _options(tool):
    """{name: dataclass field} of every option the tool's flags must be generated from."""
    from lowlight_tf import config as config_lib
    from lowlight_tf import reproduce_config, train_config
    classes = {"train": [(train_config.TrainConfig, None)],
               "reproduce": [(reproduce_config.ReproduceConfig, None),
                             (train_config.TrainConfig, reproduce_config.TRAIN_OPTIONS)]}[tool]
    return {f.name: f for cls, names in classes for f in config_lib.fields(cls, names)}


@pytest.mark.parametrize("tool", ["reproduce", "train"])
def test_every_flag_is_generated_from_its_dataclass_with_its_default(tool):
    """The tool defines exactly the dataclass options as flags, with their defaults and help."""
    import json
    done = subprocess.run([sys.executable, "-c", DEFINED, os.path.join(ROOT, "tools", tool)],
                          capture_output=True, text=True, check=True)
    defined = json.loads(done.stdout.strip().splitlines()[-1])
    options = _options(tool)
    assert set(defined) == set(options)
    for name, field in options.items():
        required = name in ("model_dir", "work_dir")
        default, help_text = defined[name]
        assert default == (None if required else field.default), name
        assert help_text.endswith(field.metadata["help"]), name  # enums prefix <a|b|c>:


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_flagfiles_list_only_what_differs_from_the_defaults(path):
    """No line restates a default (or, after --flagfile=BASE, the value BASE already sets)."""
    from lowlight_tf import config as config_lib
    options = _options(_tool_of(path))
    inherited = {name: None if f.default is None else str(f.default)
                 for name, f in options.items()}
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.startswith("--")]
    for line in lines:
        if line.startswith("--flagfile="):
            with open(cli.resolve_flagfile(line[len("--flagfile="):]),
                      encoding="utf-8") as base:
                inherited.update(config_lib.parse_flag_lines(base))
    restated = []
    for line in lines:
        if line.startswith("--flagfile="):
            continue
        (name, value), = config_lib.parse_flag_lines([line]).items()
        before = inherited[name]
        if before is not None and (before == value or _same_number(before, value)):
            restated.append(line)
    assert not restated, f"{os.path.basename(path)} restates defaults: {restated}"


def _same_number(a, b):
    try:
        return float(a) == float(b)
    except ValueError:
        return False
