"""What every command shares: the one CLI convention (a positional MODEL with `-m/--model` as its
alias, `-p/--prompt` beside a positional prompt, one device default, usage errors naming the
subcommand) and the flags of the commands that use a trained model of the other families."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.errors import UserError

FMT = argparse.ArgumentDefaultsHelpFormatter
DEVICE_HELP = "cpu, cuda, cuda:N, mps (default: cuda when available, else cpu)"
# Ends a help text whose default it states itself: ArgumentDefaultsHelpFormatter adds
# "(default: ...)" only to a help without "%(default)", and this prints nothing.
OWN_DEFAULT = "%(default).0s"
MODEL_HELP = "model folder (config.json, model.safetensors, tokenizer.json), e.g. runs/demo"


class UsageError(Exception):
    """A command line argparse cannot read (unknown flag, missing argument, 'abc' for a number);
    `parser` is the (sub)command's parser that failed, whose usage the message shows."""

    def __init__(self, prog: str, message: str, parser: argparse.ArgumentParser | None = None):
        super().__init__(message)
        self.prog = prog
        self.parser = parser


# -- positionals: MODEL first, then the command's texts -------------------------------------------
@dataclass(frozen=True)
class Slot:
    """A positional after MODEL: `dest` in the namespace, `nargs` "?" (optional), 1 (required) or
    "*" (the rest, a list); `alias`: the dest of the flag that may give it instead (-p/--prompt)."""
    dest: str
    metavar: str
    nargs: Any = "?"
    default: Any = None
    alias: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class Positionals:
    model: str        # "required" or "optional" (explain --trace, temperature --logits run without one)
    slots: tuple[Slot, ...]

    def usage(self) -> str:
        parts = ["MODEL" if self.model == "required" else "[MODEL]"]
        for s in self.slots:
            parts.append({"*": f"[{s.metavar} ...]", 1: s.metavar}.get(s.nargs, f"[{s.metavar}]"))
        return " ".join(parts)


def add_positionals(parser: argparse.ArgumentParser, *slots: Slot, model: str = "required",
                    model_help: str = MODEL_HELP) -> None:
    """MODEL (or -m/--model MODEL), then `slots`. argparse reads them loosely (every one optional,
    options may come between texts); `settle` assigns them once the line is read."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=f"{model_help} (or -m/--model MODEL){OWN_DEFAULT}")
    for s in slots:
        parser.add_argument(s.dest, nargs="*" if s.nargs == "*" else "?", default=None, metavar=s.metavar,
                            help=None if s.help is None else s.help + OWN_DEFAULT)
    parser.add_argument("-m", "--model", dest="model_opt", metavar="MODEL", default=None,
                        help="the MODEL folder as a flag; then every positional argument is text" + OWN_DEFAULT)
    parser.set_defaults(_positionals=Positionals(model, tuple(slots)))


def _is_model_folder(text: str) -> bool:
    try:
        return Path(text, "config.json").is_file()
    except (OSError, ValueError):
        return False


def _looks_like_flag(text: str) -> bool:
    """As argparse tells an option from a text: a dash first, no space, not a negative number."""
    return text.startswith("-") and len(text) > 1 and " " not in text and not text.lstrip("-").replace(".", "", 1).isdigit()


def settle(args: argparse.Namespace, extras: list[str]) -> None:
    """Give the positionals their meaning: MODEL first unless -m/--model named it, then the slots
    in order (a slot whose flag was given takes no positional). Texts argparse left over (typed
    after an option) join the positionals; unknown flags are a UsageError of the subcommand."""
    parser: argparse.ArgumentParser | None = getattr(args, "_parser", None)
    prog = parser.prog if parser else "gptlab"
    spec: Positionals | None = getattr(args, "_positionals", None)
    if extras and (spec is None or any(_looks_like_flag(e) for e in extras)):
        raise UsageError(prog, f"unrecognized arguments: {' '.join(extras)}", parser)
    if spec is None:
        return
    values: list[str] = [] if args.model is None else [args.model]
    for s in spec.slots:
        v = getattr(args, s.dest)
        values += v if isinstance(v, list) else ([] if v is None else [v])
    values += extras
    if args.model_opt is not None:
        if values and values[0] == args.model_opt:
            values.pop(0)  # the same folder given both ways
        elif values and _is_model_folder(values[0]):
            raise UsageError(prog, f"two models given ({values[0]} and -m {args.model_opt}): give one", parser)
        args.model = args.model_opt
    else:
        args.model = values.pop(0) if values else None
        if args.model is None and spec.model == "required":
            raise UsageError(prog, "the following arguments are required: MODEL", parser)
    for s in spec.slots:
        flag = getattr(args, s.alias) if s.alias else None
        if s.nargs == "*":
            setattr(args, s.dest, values)
            values = []
        elif flag is not None:
            setattr(args, s.dest, flag)
        elif values:
            setattr(args, s.dest, values.pop(0))
        elif s.nargs == 1:
            raise UsageError(prog, f"the following arguments are required: {s.metavar}", parser)
        else:
            setattr(args, s.dest, s.default)
    if values:
        raise UsageError(prog, f"unrecognized arguments: {' '.join(values)}", parser)


def short_usage(parser: argparse.ArgumentParser) -> str:
    """`prog [options] POSITIONALS` in one line, for an error message."""
    spec = parser.get_default("_positionals")
    if isinstance(spec, Positionals):
        rest = spec.usage()
    else:
        fmt = parser._get_formatter()
        rest = " ".join(fmt._format_args(a, fmt._get_default_metavar_for_positional(a))
                        for a in parser._actions if not a.option_strings and a.help is not argparse.SUPPRESS)
    return f"{parser.prog} [options] {rest}".rstrip()


# -- the device ------------------------------------------------------------------------------------
def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help=DEVICE_HELP + OWN_DEFAULT)


def resolve_device(device: str | None) -> str:
    """The device asked for, checked, or the default every command shares: cuda when available."""
    import torch

    from gptlab.api import default_device
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is available: use --device cpu")
    return device


# -- flags of the commands that use a trained model (translate/explain, predict/explain) ----------
def add_use_flags(parser: argparse.ArgumentParser, *, text_help: str, many: bool, model_help: str) -> None:
    """MODEL (or -m/--model), the text(s) to work on, and --device."""
    if many:
        add_positionals(parser, Slot("text", "TEXT", "*", help=f"{text_help} (default: one per line from stdin)"),
                        model_help=model_help)
    else:
        add_positionals(parser, Slot("text", "TEXT", 1, help=text_help), model_help=model_help)
    add_device_arg(parser)


def pick_index(value: str | None, n: int, what: str) -> int | str | None:
    """A --layer/--head choice, counted from 1 as people count (1..n or 'mean'), -> 0-based index,
    "mean" or None. Every explain command reads it so."""
    if value is None or value == "mean":
        return value
    try:
        i = int(value)
    except ValueError:
        i = 0
    if not 1 <= i <= n:
        raise UserError(f"--{what} must be 1..{n} or 'mean' (got {value!r})")
    return i - 1


def add_view_flags(parser: argparse.ArgumentParser, *, layer_help: str) -> None:
    """The explain commands' choice of layer and their outputs besides the terminal."""
    parser.add_argument("--layer", default="mean", help=layer_help)
    parser.add_argument("--html", metavar="FILE", help="write an HTML view here")
    parser.add_argument("--json", metavar="FILE", help="write the trace (format gptlab-trace, version 2; render it again with `gptlab explain --trace FILE`) here")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="ANSI colours (default: when stdout is a terminal)")


def show_trace(terminal: str, trace: Any, args: argparse.Namespace) -> int:
    """Print the terminal view, then write the --html / --json files asked for."""
    print(terminal)
    if args.html:
        trace.save_html(args.html)
        print(f"wrote {args.html}")
    if args.json:
        trace.save_json(args.json)
        print(f"wrote {args.json}")
    return 0


def read_texts(texts: list[str]) -> list[str]:
    """The texts given, or one per line from stdin when none are."""
    if texts:
        return texts
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no text given: pass it as an argument or pipe lines on stdin")
    lines = [ln.rstrip("\n") for ln in sys.stdin]
    if not any(ln.strip() for ln in lines):
        raise UserError("stdin held no text: pass the text as an argument")
    return lines
