"""`gptlab temperature MODEL PROMPT -T 0.5 1 1.5`: how temperature reshapes the next-token
distribution (the course's table); `--logits 4.1,3.9,2.7 --labels pfalz,mosel,rhein` works the
slide's example by hand, with no model."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from gptlab.cli.generate import LoadOptions, add_model_args, load_model, prompt_slot, warnings_to_stderr
from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError
from gptlab.infer.sampling import temperature_table
from gptlab.settings import setting


@dataclass
class TemperatureView(LoadOptions):
    temperatures: list[float] = setting([0.5, 1.0, 1.5], "temperatures to compare, 0 = greedy", min=0)
    top: int | None = setting(None, "tokens to show (default: 5, or all given --logits)", min=1, max=100_000)
    logits: str | None = setting(None, "comma-separated logits to use instead of a model, e.g. 4.1,3.9,2.7")
    labels: str | None = setting(None, "comma-separated names for --logits, e.g. pfalz,mosel,rhein")
    decimals: int = setting(3, "decimals shown", min=0, max=12)
    json: bool = setting(False, "print the table as JSON (unrounded)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "temperature", help="table of next-token probabilities at several temperatures",
        description="Show the most likely next tokens with their logits, their probability at each temperature "
                    "and the entropy. Examples: gptlab temperature runs/demo \"wine review : germany :\" -T 0.5 1 1.5 3; "
                    "gptlab temperature --logits 4.1,3.9,2.7 --labels pfalz,mosel,rhein",
    )
    add_model_args(p, prompt_slot(p, "text whose next token is examined"), optional=True)
    add_options(p, [Section("view", TemperatureView, "table", aliases={"temperatures": ["-T"]},
                            first=("temperatures", "top", "logits", "labels", "decimals", "json"))])
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _logits(text: str) -> list[float]:
    try:
        logits = [float(x) for x in _split(text)]
    except ValueError:
        raise UserError(f"--logits must be numbers separated by commas, e.g. 4.1,3.9,2.7 (got {text!r})") from None
    if not logits:
        raise UserError("--logits is empty: give numbers separated by commas, e.g. 4.1,3.9,2.7")
    if not all(math.isfinite(x) for x in logits):
        raise UserError(f"--logits must be finite numbers (got {text!r})")
    return logits


def run(args: argparse.Namespace) -> int:
    v: TemperatureView = read_options(args, lambda values: {"view": TemperatureView()}, "temperature")["view"]
    from gptlab.api import MIN_TEMPERATURE
    tiny = [t for t in v.temperatures if 0 < t < MIN_TEMPERATURE]
    if tiny:
        raise UserError(f"--temperatures {tiny[0]} is too small to compute (below {MIN_TEMPERATURE}): use 0 for greedy")
    if v.logits is not None:
        if args.model:
            raise UserError("give either MODEL PROMPT or --logits, not both")
        logits = _logits(v.logits)
        labels = _split(v.labels) if v.labels else [f"#{i + 1}" for i in range(len(logits))]
        if len(labels) != len(logits):
            raise UserError(f"--labels has {len(labels)} names for {len(logits)} logits: give one name per logit")
        table = temperature_table(logits, v.temperatures, top=v.top or len(logits), label=labels.__getitem__)
    else:
        if v.labels:
            raise UserError("--labels names the --logits values: give --logits too")
        if not args.model:
            raise UserError("give a MODEL folder and a PROMPT, or --logits to work an example by hand")
        # Check the temperatures before the (slower) model load.
        temperature_table([0.0], v.temperatures, top=v.top or 5)
        model = load_model(args, v.max_params)
        with warnings_to_stderr("temperature"):
            table = model.temperature_table(args.prompt, v.temperatures, top=v.top or 5)
    print(json.dumps(table.to_dict(), ensure_ascii=False, indent=2) if v.json else table.format(v.decimals))
    return 0
