"""Flags and helpers shared by the commands that use a trained model of the other families."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gptlab.errors import UserError

FMT = argparse.ArgumentDefaultsHelpFormatter


# -- flags of the commands that use a trained model (translate/explain, predict/explain) ----------
def add_use_flags(parser: argparse.ArgumentParser, *, text_help: str, many: bool, model: str, model_help: str) -> None:
    """The text(s) to work on, --model and --device."""
    if many:
        parser.add_argument("text", nargs="*", help=f"{text_help} (default: one per line from stdin)")
    else:
        parser.add_argument("text", help=text_help)
    parser.add_argument("--model", default=model, help=model_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")


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
