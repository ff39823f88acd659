"""The command-line layer: installed `lowlight-*` commands, flagfile names, quiet library logs.

The tools are thin extension-less scripts in `tools/`, outside the library (STYLE.md habit 1).
They are installed twice over: as package data (`lowlight_tf/_tools/`, beside the shipped
flagfiles in `lowlight_tf/_configs/`), and as console-script entry points `lowlight-NAME =
lowlight_tf.cli:NAME`, where `NAME` is looked up by this module's `__getattr__` and runs the tool
file as `__main__`. From a checkout (and in an editable install) the same files are read from
`tools/` and `configs/`. The commands carry a prefix because bare names like `train`, `evaluate` or
`compare` (ImageMagick has one) clash with other programs on a user's PATH.

Every tool ends with `cli.run(main, ...)` instead of `absl.app.run(main, ...)`, which adds:
  * `--flagfile=NAME` for a shipped flagfile (`--flagfile=pretrain` is configs/pretrain.flags),
    also inside flagfiles; an existing file path keeps its meaning (relative to the working
    directory, as in absl);
  * absl's INFO lines (tensorflow-datasets logs every dataset it opens) hidden unless the user
    passes `--verbosity`;
  * a bad flag reported on one line with exit status 2 (`parse_flags`).
"""
import functools
import os
import runpy
import sys

from absl import app
from absl import flags
from absl import logging

COMMAND_PREFIX = "lowlight-"
FLAGFILE_SUFFIX = ".flags"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Where setup.py installs the tools and flagfiles as package data.
_INSTALLED_TOOLS = os.path.join(_PACKAGE_DIR, "_tools")
_INSTALLED_CONFIGS = os.path.join(_PACKAGE_DIR, "_configs")
# The flagfile directives absl understands (absl.flags.FlagValues.read_flags_from_files).
_DIRECTIVES = ("--flagfile", "-flagfile")


class FlagfileError(ValueError):
    """A --flagfile value that is neither an existing file nor a shipped flagfile's name."""


def _shipped_dir(installed, checkout_name):
    """The installed copy if there is one, else the checkout's folder next to the package."""
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_PACKAGE_DIR), checkout_name)


def tools_dir():
    """The folder of the tool scripts: `lowlight_tf/_tools` when installed, else `tools/`."""
    return _shipped_dir(_INSTALLED_TOOLS, "tools")


def configs_dir():
    """The folder of the shipped flagfiles: `lowlight_tf/_configs` when installed, else
    `configs/`."""
    return _shipped_dir(_INSTALLED_CONFIGS, "configs")


def tool_names():
    """Every tool: the extension-less files in `tools_dir()` (the rule setup.py also applies)."""
    folder = tools_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if "." not in name and os.path.isfile(os.path.join(folder, name)))


def command_name(tool):
    """The installed command of a tool: `make_tfrecords` -> `lowlight-make-tfrecords`."""
    return COMMAND_PREFIX + tool.replace("_", "-")


def flagfile_names():
    """Names of the shipped flagfiles, e.g. ['finetune_all', 'pretrain', ...]."""
    folder = configs_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(name[:-len(FLAGFILE_SUFFIX)] for name in os.listdir(folder)
                  if name.endswith(FLAGFILE_SUFFIX))


def resolve_flagfile(value):
    """The file a `--flagfile` value means: an existing file, else a shipped flagfile's name.

    Args:
      value: what follows `--flagfile=`: a path (`~` expanded, relative to the working directory)
        or the name of a shipped flagfile with or without `.flags` (`pretrain`, `pretrain.flags`).
    Returns:
      The path to read.
    Raises:
      FlagfileError: neither; the message lists the shipped names.
    """
    path = os.path.expanduser(value.strip())
    if os.path.isfile(path):
        return path
    name = path[:-len(FLAGFILE_SUFFIX)] if path.endswith(FLAGFILE_SUFFIX) else path
    if name and os.sep not in name and "/" not in name and name in flagfile_names():
        return os.path.join(configs_dir(), name + FLAGFILE_SUFFIX)
    raise FlagfileError(
        f"--flagfile={value}: no such file, and no shipped flagfile is named {name!r}. Give a "
        f"path, or one of the shipped names: {', '.join(flagfile_names()) or '(none found)'}.")


def _flagfile_lines(path, stack):
    """The flag lines of a flagfile, nested flagfiles expanded in place (absl's reading rules)."""
    if path in stack:  # absl warns and skips a file that includes itself
        print(f"Warning: circular flagfile dependency; ignoring {path}", file=sys.stderr)
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    result = []
    for line in lines:
        if line.isspace() or line.startswith(("#", "//")):
            continue
        if line.startswith(tuple(d + "=" for d in _DIRECTIVES)):
            value = line.split("=", 1)[1].strip()
            if value:  # absl ignores an empty --flagfile=
                result += _flagfile_lines(resolve_flagfile(value), stack + [path])
        else:
            result.append(line.strip())
    return result


def expand_flagfiles(argv):
    """`argv` with every --flagfile directive replaced by its file's flags, names resolved.

    Follows absl's `FlagValues.read_flags_from_files` (the flags are inserted where the directive
    stood, so later flags still win; `--flagfile PATH` and `-flagfile=PATH` forms; nothing after
    `--` is touched; lines starting with # or // are comments), but resolves each value, also in
    nested directives, with `resolve_flagfile`. absl then sees no directive left.

    Args:
      argv: the full command line, program name first.
    Raises:
      FlagfileError: a value that is neither a file nor a shipped name.
    """
    result, rest = list(argv[:1]), list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg in _DIRECTIVES:
            if not rest:
                raise FlagfileError(f"{arg} needs a value: a path or a shipped flagfile's name.")
            value = rest.pop(0)
        elif arg.startswith(tuple(d + "=" for d in _DIRECTIVES)):
            value = arg.split("=", 1)[1]
        else:
            result.append(arg)
            if arg == "--":
                result += rest
                break
            continue
        if value.strip():
            result += _flagfile_lines(resolve_flagfile(value), [])
    return result


def quiet_library_logs():
    """Hide absl INFO lines (tensorflow-datasets' dataset messages) unless --verbosity was given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def parse_flags(argv):
    """Parse argv into FLAGS; a bad flag is a user error: one line naming it, exit status 2.

    (absl alone prints the whole usage and exits with status 1.)
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        name = os.path.basename(argv[0]) if argv else "lowlight"
        print(f"{name}: error: {str(error).rstrip('.')}. See {name} --help for its flags.",
              file=sys.stderr)
        sys.exit(2)


def run(main, flags_parser=parse_flags):
    """Run a tool's `main` like `absl.app.run`, with flagfile names and quiet library logs."""
    try:
        argv = expand_flagfiles(sys.argv)
    except (FlagfileError, OSError) as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(2)

    def main_quietly(argv):
        quiet_library_logs()
        return main(argv)

    app.run(main_quietly, argv=argv, flags_parser=flags_parser)


def run_tool(tool, argv=None):
    """Run tools/TOOL as `__main__` with `argv` (default: this process's arguments)."""
    path = os.path.join(tools_dir(), tool)
    if not os.path.isfile(path):
        sys.exit(f"{command_name(tool)}: the tool script {path} is missing; reinstall lowlight_tf.")
    sys.argv = [command_name(tool)] + list(sys.argv[1:] if argv is None else argv)
    runpy.run_path(path, run_name="__main__")


def __getattr__(name):
    """`lowlight_tf.cli.NAME` for each tool NAME: the console-script entry point's function."""
    if not name.startswith("_") and name in tool_names():
        return functools.partial(run_tool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
