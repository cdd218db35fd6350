"""The one way from settings dataclasses to a command line: every command declares its sections
(e.g. {"train": TrainConfig, "model": ModelConfig, "data": DataConfig}); each field becomes a flag
with its help and default, `--config FILE.toml` reads the same fields, and `read_options` fills
the dataclasses. Precedence: the command's base (a preset) < the TOML file < flags typed.

A TOML file may use sections ([train], [model], ...) or flat keys spelled as the flags are.
A field name used by two sections gets its section as prefix in the later one (data.seed ->
--data-seed). Chosen over jsonargparse/tyro: argparse subcommand trees, lazy imports (no torch to
build a parser), help groups, and one-line errors stay as they are, for ~150 lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from gptlab.errors import UserError
from gptlab.settings import check

TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "int | None": int,
                          "str | None": str, "float | None": float, "list[str]": str, "list[float]": float}
METAVARS = {int: "N", float: "X", str: "S"}


@dataclass
class Section:
    name: str
    cls: type
    title: str
    shown: Any = None          # instance whose values --help shows (default: cls())
    skip: tuple[str, ...] = ()
    aliases: dict[str, list[str]] = field(default_factory=dict)  # field -> extra flag spellings
    first: Sequence[str] = ()  # fields listed before the others (a family's own before the loop's)


@dataclass
class Options:
    sections: list[Section]
    flags: dict[tuple[str, str], str]  # (section, field) -> flag name without dashes, e.g. data_seed

    def field_of(self, section: str, name: str) -> Any:
        return {f.name: f for f in fields(next(s.cls for s in self.sections if s.name == section))}[name]


def _type_name(f: Any) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _help(f: Any, default: Any) -> str:
    shown = "" if default in (None, []) else f" (default: {default!r})"
    return (f.metadata.get("help", "") + shown).replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, sections: list[Section], config_file: bool = True) -> Options:
    """One flag per field of each section; values stay None unless typed, so a preset and a TOML
    file can fill the rest."""
    if config_file:
        parser.add_argument("--config", metavar="TOML", help="TOML file with these settings (sections named as the groups below, or flat keys spelled as the flags)")
    used: set[str] = set()
    opts = Options(sections, {})
    for sec in sections:
        group = parser.add_argument_group(sec.title)
        shown = sec.shown if sec.shown is not None else sec.cls()
        ordered = sorted(fields(sec.cls), key=lambda f: f.name not in sec.first)
        for f in ordered:
            if f.name in sec.skip:
                continue
            name = f.name if f.name not in used else f"{sec.name}_{f.name}"
            used.add(name)
            opts.flags[(sec.name, f.name)] = name
            names = ["--" + name.replace("_", "-"), *sec.aliases.get(f.name, [])]
            _add_flag(group, names, f"opt__{sec.name}__{f.name}", f, getattr(shown, f.name))
    parser.set_defaults(_options=opts)
    return opts


def _add_flag(group: Any, names: list[str], dest: str, f: Any, default: Any) -> None:
    tname = _type_name(f)
    if tname == "bool":
        group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=_help(f, default))
    elif tname == "list[str]":
        group.add_argument(*names, dest=dest, action="append", default=None, metavar="TEXT",
                           help=_help(f, default) + " (repeat for several)")
    elif tname == "list[float]":
        group.add_argument(*names, dest=dest, type=float, nargs="+", default=None, metavar="X", help=_help(f, default))
    else:
        typ = TYPES.get(tname, str)
        group.add_argument(*names, dest=dest, type=typ, default=None, metavar=METAVARS.get(typ, "S"),
                           help=_help(f, default))


def _coerce(where: str, value: Any, tname: str) -> Any:
    if value is None and tname.endswith("| None"):
        return None
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
          "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
          "list[float]": lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}
    base = tname.replace(" | None", "")
    if not ok.get(base, lambda v: True)(value):
        raise UserError(f"config key {where} must be {base}, got {value!r}")
    return float(value) if base == "float" else value


def load_toml(path: str, opts: Options, command: str = "") -> dict[str, dict[str, Any]]:
    """Read a TOML file into {section: {field: value}}; flat keys are placed by their flag name."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} not found: check the path")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML ({e}): fix it") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path} ({e.strerror}): check its permissions") from None
    by_flag = {flag: key for key, flag in opts.flags.items()}
    names = {s.name for s in opts.sections}
    out: dict[str, dict[str, Any]] = {s: {} for s in names}
    for key, value in raw.items():
        if key in names and isinstance(value, dict):
            for k, v in value.items():
                if (key, k) not in opts.flags:
                    known = ", ".join(f for s, f in opts.flags if s == key)
                    raise UserError(f"config file {path}: unknown key {key}.{k}; known: {known}")
                out[key][k] = _coerce(f"{key}.{k}", v, _type_name(opts.field_of(key, k)))
        elif key.replace("-", "_") in by_flag:
            section, name = by_flag[key.replace("-", "_")]
            out[section][name] = _coerce(f"{section}.{name}", value, _type_name(opts.field_of(section, name)))
        else:
            raise UserError(f"config file {path}: unknown key {key!r}; see `gptlab {command} --help` for the names".replace("  ", " "))
    return out


def given(args: argparse.Namespace, command: str = "") -> dict[str, dict[str, Any]]:
    """{section: {field: value}} of every setting given in the TOML file or by a flag (flags win)."""
    opts: Options = args._options
    values: dict[str, dict[str, Any]] = {s.name: {} for s in opts.sections}
    if getattr(args, "config", None):
        for section, vals in load_toml(args.config, opts, command).items():
            values[section].update(vals)
    for dest, value in vars(args).items():
        if dest.startswith("opt__") and value is not None:
            _, section, name = dest.split("__")
            values[section][name] = value
    return values


def read_options(args: argparse.Namespace, base: Callable[[dict[str, dict[str, Any]]], dict[str, Any]],
                 command: str = "") -> dict[str, Any]:
    """The command's dataclasses: base(given) makes them (it may pick a preset from what was
    given), then every given value is set on them and each is range-checked."""
    values = given(args, command)
    objs = base(values)
    for section, vals in values.items():
        for k, v in vals.items():
            setattr(objs[section], k, v)
    flags: dict[tuple[str, str], str] = args._options.flags
    for section, obj in objs.items():
        if is_dataclass(obj):
            check(obj, {n: flag for (s, n), flag in flags.items() if s == section})
    return objs
