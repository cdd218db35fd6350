"""`gptlab generate MODEL PROMPT`: sample text from a trained model.

The sampling flags are generated from `SamplingConfig`'s fields (names, defaults and help), so the
CLI, the Python API and the web server describe the same settings the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from gptlab.cli.common import OWN_DEFAULT, Slot, add_device_arg, add_positionals, resolve_device
from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError
from gptlab.infer.dtypes import DTYPE_HELP, DTYPE_NAMES
from gptlab.infer.sampling import SamplingConfig
from gptlab.model.config import MAX_PARAMS
from gptlab.settings import SEED_MAX, setting

# Samples one command draws: each is a row of a batch and a Completion kept until printed.
MAX_SAMPLES = 1_000_000


def add_model_args(parser: argparse.ArgumentParser, *slots: Slot, optional: bool = False) -> None:
    """MODEL (or -m/--model), the positionals after it, --device and --dtype."""
    add_positionals(parser, *slots, model="optional" if optional else "required")
    add_device_arg(parser)
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help=DTYPE_HELP)


def prompt_slot(parser: argparse.ArgumentParser, help: str, default: str | None = "") -> Slot:
    """The positional PROMPT, with -p/--prompt PROMPT as the flag that may give it instead."""
    parser.add_argument("-p", "--prompt", dest="prompt_opt", metavar="PROMPT", default=None,
                        help="the PROMPT as a flag (as in llama.cpp)" + OWN_DEFAULT)
    return Slot("prompt", "PROMPT", "?", default, alias="prompt_opt", help=help)


@dataclass
class LoadOptions:
    """The settings of loading a model, shared by the commands that load one (views subclass it)."""
    max_params: int = setting(MAX_PARAMS, "refuse a model with more parameters than this (counted from config.json and "
                                          "the weights file's header before anything is allocated)", min=1)


def load_model(args: argparse.Namespace, max_params: int = MAX_PARAMS):
    from gptlab.api import load
    return load(args.model, device=resolve_device(args.device), dtype=getattr(args, "dtype", None), max_params=max_params)


@contextmanager
def warnings_to_stderr(command: str) -> Iterator[None]:
    """Library warnings (prompt cut, unknown words) as one plain line each on stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"gptlab {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


@dataclass
class GenerateView(LoadOptions):
    """`gptlab generate`'s own settings (the sampling ones are SamplingConfig's)."""
    n: int = setting(1, "number of samples", min=1, max=MAX_SAMPLES)
    stream: bool = setting(False, "print tokens as they come (samples one after another, seeds seed, seed+1, ...)")
    json: bool = setting(False, "print the completions as JSON (prompt, text, token_ids, finish_reason)")


def add_sampling_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), view: Section | None = None) -> None:
    """SamplingConfig's fields as flags (and TOML keys of a --config file), -T for the temperature;
    `view`: the command's own settings, a second section of the same flags and file."""
    sections = [Section("sampling", SamplingConfig, "sampling", skip=skip,
                        aliases={"temperature": ["-T"], "max_new_tokens": ["--max-tokens"]})]
    add_options(parser, sections + ([view] if view else []))


def read_sampling(args: argparse.Namespace, view: type | None = None, **overrides: Any) -> tuple[SamplingConfig, Any]:
    """(the sampling settings, validated; the command's own settings or None)."""
    objs = read_options(args, lambda values: {"sampling": SamplingConfig(), "view": view() if view else None},
                        args.command)
    cfg = objs["sampling"]
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg.validate(), objs["view"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="sample text from a trained model",
        description="Sample text from a trained model. Example: "
                    "gptlab generate runs/demo \"wine review : us\" -T 0.5 -n 3 --seed 1 "
                    "(-n counts samples, not tokens as in llama.cpp: --max-tokens sets the length)",
    )
    add_model_args(p, prompt_slot(p, "text to continue (default: empty, start from scratch)"))
    add_sampling_args(p, view=Section("view", GenerateView, "output", aliases={"n": ["-n"]}, first=("n", "stream", "json")))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg, view = read_sampling(args, GenerateView)
    if view.n > 32:
        print(f"gptlab generate: warning: -n {view.n} draws {view.n} samples (-n counts samples here, not tokens: "
              "--max-tokens sets the length)", file=sys.stderr)
    if view.stream and view.json:
        raise UserError("--stream and --json do not go together: pick one")
    model = load_model(args, view.max_params)
    kwargs = cfg.to_dict()
    with warnings_to_stderr("generate"):
        if view.stream:
            for k in range(view.n):
                if k:
                    print()
                seed = None if cfg.seed is None else (cfg.seed + k) % (SEED_MAX + 1)  # torch's seeds wrap at 2**64
                print(args.prompt, end="", flush=True)
                for piece in model.stream(args.prompt, **{**kwargs, "seed": seed}):
                    print(piece, end="", flush=True)
                print()
            return 0
        completions = model.generate(args.prompt, n=view.n, **kwargs)
    if view.json:
        print(json.dumps([asdict(c) for c in completions], ensure_ascii=False, indent=2))
        return 0
    for k, c in enumerate(completions):
        if k:
            print()
        print(c.prompt + c.text)
    return 0
