"""The `gptlab` command line. Each command lives in `gptlab/cli/<name>.py` with
`register(subparsers)` adding its parser and setting `func`; this file only dispatches and turns
bad input (UserError, or a flag argparse cannot read) into one line on stderr with exit status 2,
never a traceback. Anything else that goes wrong is a bug: one line naming it and a log file with
the traceback, exit status 1."""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import tempfile
import traceback
from typing import NoReturn

from gptlab import __version__
from gptlab.cli.common import UsageError, settle, short_usage
from gptlab.errors import UserError, one_line, run_script

COMMANDS = ["train", "eval", "generate", "explain", "temperature", "serve", "seq2seq", "encoder", "scale", "export", "align", "image"]
INTERNAL_ERROR = 1


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line naming the problem and the usage of the
    (sub)command that failed (not the usage block, which `--help` shows), and `main` returns
    instead of exiting. Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message, self)


def _tag(parser: argparse.ArgumentParser) -> None:
    """Each parser remembers itself as `_parser` (a subcommand's overrides its parent's), so an
    error found after parsing names the subcommand and its usage."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                _tag(sp)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    _tag(parser)
    return parser


def log_crash(argv: list[str] | None) -> str | None:
    """Write the traceback being handled to a new file in the temp folder; its path, or None."""
    try:
        fd, path = tempfile.mkstemp(prefix="gptlab-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"gptlab {__version__}, python {sys.version.split()[0]}\n")
            f.write(f"argv: {sys.argv[:1] + list(sys.argv[1:] if argv is None else argv)!r}\n\n")
            f.write(traceback.format_exc())
        return path
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        settle(args, extra)  # positionals given their meaning; unknown flags named after the subcommand
    except UsageError as e:
        usage = f"usage: {short_usage(e.parser)}; " if e.parser is not None else ""
        print(f"{e.prog}: error: {one_line(str(e))} ({usage}see `{e.prog} --help`)", file=sys.stderr)
        return UserError.exit_code
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:  # bad input and ^C answered as every script of the project answers them
        return run_script(lambda: args.func(args), f"gptlab {args.command}")
    except BrokenPipeError:
        return 0
    except Exception as e:  # the last resort: a bug, reported in one line with where its traceback is
        path = log_crash(argv)
        where = f"the traceback is in {path}" if path else "no log file could be written"
        print(f"gptlab {args.command}: internal error: {type(e).__name__}: {one_line(str(e))[:300]} ({where}; "
              "please report it)", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        # A run refused between checking --out and training (its data) leaves OUT locked for a `fit`
        # that will not come: free it now, for a caller that runs main() again in this process.
        loop = sys.modules.get("gptlab.training.loop")
        if loop is not None:
            loop.unlock_waiting()


def entry() -> None:
    if os.environ.get("RANK", "0") != "0":
        # Under torchrun the main worker reports (each result line would come once per worker, the
        # others with "n/a" where only the main one evaluates); errors still reach stderr.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    code = main()
    _leave_worker(code)
    sys.exit(code)


def _leave_worker(code: int) -> None:
    """A torchrun worker leaves without the interpreter's teardown. Its exit handlers run first
    (the process group is destroyed there, locks are freed, logs flushed); what is skipped is the
    teardown of C++ statics and threads, where a worker that had finished and saved was seen to abort
    twice ("terminate called without an active exception", SIGABRT; the two-process tests of `train`
    and `align sft`) even with the group destroyed, which fails the whole torchrun job."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
