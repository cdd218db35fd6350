"""The `gptlab` command line. Each command lives in `gptlab/commands/<name>.py` with
`register(subparsers)` adding its parser and setting `func`; this file only dispatches and turns
bad input (UserError) into one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from gptlab import __version__
from gptlab.errors import UserError

COMMANDS = ["train", "eval", "generate", "explain", "temperature", "serve", "seq2seq", "encoder", "scale", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="A workbench for small generative transformers: train a GPT on wine reviews or "
                    "your own text, sample from it, see what it attends to, serve it.",
    )
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"gptlab.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"gptlab.cli.{name}":
                continue  # command not built in this version
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"gptlab {args.command}: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"gptlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    sys.exit(main())
