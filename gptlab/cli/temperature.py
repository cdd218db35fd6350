"""`gptlab temperature MODEL PROMPT -T 0.5 1 1.5`: how temperature reshapes the next-token
distribution (the course's table); `--logits 4.1,3.9,2.7 --labels pfalz,mosel,rhein` works the
slide's example by hand, with no model."""

from __future__ import annotations

import argparse
import json

from gptlab.errors import UserError
from gptlab.infer.sampling import temperature_table
from gptlab.cli.generate import add_model_args, load_model, warnings_to_stderr


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "temperature", help="table of next-token probabilities at several temperatures",
        description="Show the most likely next tokens with their logits, their probability at each temperature "
                    "and the entropy. Examples: gptlab temperature runs/demo \"wine review : germany :\" -T 0.5 1 1.5 3; "
                    "gptlab temperature --logits 4.1,3.9,2.7 --labels pfalz,mosel,rhein",
    )
    add_model_args(p, optional=True)
    p.add_argument("prompt", nargs="?", default="", help="text whose next token is examined")
    p.add_argument("-T", "--temperatures", dest="temperatures", type=float, nargs="+", default=[0.5, 1.0, 1.5],
                   help="temperatures to compare, 0 = greedy (default: 0.5 1 1.5)")
    p.add_argument("--top", type=int, default=None, help="tokens to show (default: 5, or all given --logits)")
    p.add_argument("--logits", help="comma-separated logits to use instead of a model, e.g. 4.1,3.9,2.7")
    p.add_argument("--labels", help="comma-separated names for --logits, e.g. pfalz,mosel,rhein")
    p.add_argument("--decimals", type=int, default=3, help="decimals shown (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the table as JSON (unrounded)")
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.decimals <= 12:
        raise UserError(f"--decimals must be 0..12 (got {args.decimals})")
    if args.logits is not None:
        if args.model:
            raise UserError("give either MODEL PROMPT or --logits, not both")
        try:
            logits = [float(x) for x in _split(args.logits)]
        except ValueError:
            raise UserError(f"--logits must be numbers separated by commas, e.g. 4.1,3.9,2.7 (got {args.logits!r})") from None
        if not logits:
            raise UserError("--logits is empty: give numbers separated by commas, e.g. 4.1,3.9,2.7")
        labels = _split(args.labels) if args.labels else [f"#{i + 1}" for i in range(len(logits))]
        if len(labels) != len(logits):
            raise UserError(f"--labels has {len(labels)} names for {len(logits)} logits: give one name per logit")
        table = temperature_table(logits, args.temperatures, top=args.top or len(logits), label=labels.__getitem__)
    else:
        if args.labels:
            raise UserError("--labels names the --logits values: give --logits too")
        if not args.model:
            raise UserError("give a MODEL folder and a PROMPT, or --logits to work an example by hand")
        # Check the temperatures before the (slower) model load.
        temperature_table([0.0], args.temperatures, top=args.top or 5)
        model = load_model(args)
        with warnings_to_stderr("temperature"):
            table = model.temperature_table(args.prompt, args.temperatures, top=args.top or 5)
    print(json.dumps(table.to_dict(), ensure_ascii=False, indent=2) if args.json else table.format(args.decimals))
    return 0
