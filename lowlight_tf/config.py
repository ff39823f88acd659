"""Configuration defined once: dataclass fields carry their default, help text, bounds and choices.

Each tool's flags, the flagfiles a run writes (`to_flag_lines`) and the configs the library
takes all derive from one dataclass (flax `configs/`: override the default config instead of
restating its fields). A field is declared with `option`:

    patch_size: int = option(64, "Side of the square training patches in pixels.", lower=8)

and `define_flags(TrainConfig)` defines `--patch_size` with that default, help and bound;
`from_flags(TrainConfig)` reads the parsed values back. Fields typed `int | None` (etc.) are
optional: their flag has no default and None means "derive it" (the docstring says from what).
"""
import dataclasses
import types
import typing

from absl import flags

_TYPES = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
          str: flags.DEFINE_string}


def option(default, help, *, lower=None, upper=None, choices=None):  # noqa: A002 (absl's name)
    """A dataclass field with the metadata `define_flags` turns into a flag.

    Args:
      default: the one default value (None only for optional fields).
      help: the flag's help text, full sentences.
      lower, upper: optional numeric bounds (inclusive).
      choices: optional tuple of the allowed strings (an enum flag).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "lower": lower, "upper": upper, "choices": choices})


def _base_type(cls, field):
    """bool, int, float or str of a field of `cls` annotated T or T | None."""
    annotation = typing.get_type_hints(cls)[field.name]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation not in _TYPES:
        raise TypeError(f"Field {field.name}: unsupported flag type {annotation!r}.")
    return annotation


def fields(cls, names=None):
    """The dataclass fields of `cls` that are options, optionally only those in `names`."""
    chosen = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    if names is not None:
        unknown = set(names) - {f.name for f in chosen}
        if unknown:
            raise ValueError(f"{cls.__name__} has no option named {sorted(unknown)}.")
        chosen = [f for f in chosen if f.name in names]
    return chosen


def defaults(cls):
    """{name: default} of every option of `cls`."""
    return {f.name: f.default for f in fields(cls)}


def define_flags(cls, *, names=None, flag_values=flags.FLAGS, required=()):
    """Define one absl flag per option of `cls` (or of `names`), same name, default and help.

    Returns:
      {name: FlagHolder}.
    """
    holders = {}
    for field in fields(cls, names):
        meta, kind = field.metadata, _base_type(cls, field)
        default = None if field.name in required else field.default
        if meta["choices"]:
            holder = flags.DEFINE_enum(field.name, default, meta["choices"], meta["help"],
                                       flag_values=flag_values)
        elif kind in (int, float):
            holder = _TYPES[kind](field.name, default, meta["help"], lower_bound=meta["lower"],
                                  upper_bound=meta["upper"], flag_values=flag_values)
        else:
            holder = _TYPES[kind](field.name, default, meta["help"], flag_values=flag_values)
        holders[field.name] = holder
    for name in required:
        flags.mark_flag_as_required(name, flag_values=flag_values)
    return holders


def from_flags(cls, *, names=None, flag_values=flags.FLAGS):
    """{name: parsed value} of the options of `cls` (or of `names`) after flag parsing."""
    return {f.name: flag_values[f.name].value for f in fields(cls, names)}


def check_options(config):
    """Raise ValueError naming the first option of `config` outside its bounds or choices.

    The same bounds and choices as the generated flags, for configs built in code.
    """
    for field in fields(type(config)):
        value, meta = getattr(config, field.name), field.metadata
        if value is None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise ValueError(f"--{field.name}={value} is not one of {', '.join(meta['choices'])}.")
        if meta["lower"] is not None and value < meta["lower"]:
            raise ValueError(f"--{field.name}={value} must be at least {meta['lower']}.")
        if meta["upper"] is not None and value > meta["upper"]:
            raise ValueError(f"--{field.name}={value} must be at most {meta['upper']}.")


def to_flag_lines(config, names=None):
    """The options of `config` as flagfile lines `--name=value` (booleans `--[no]name`).

    None values (derived later) are left out, so replaying the lines derives them again.
    """
    lines = []
    for field in fields(type(config), names):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{'' if value else 'no'}{field.name}")
        else:
            lines.append(f"--{field.name}={value}")
    return lines


def parse_flag_lines(lines):
    """Read `--name=value` / `--[no]name` lines (as `to_flag_lines` writes) into {name: str}."""
    values = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, sep, value = line[2:].partition("=")
        if not sep:
            value = "False" if name.startswith("no") else "True"
            name = name[2:] if name.startswith("no") else name
        values[name] = value
    return values
