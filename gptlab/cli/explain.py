"""`gptlab explain MODEL PROMPT`: generate a few tokens and show, at each step, what the model
attended to and what it considered next (the course notebook's view), in the terminal or as a
standalone HTML page; `--json` saves the trace and `--trace` renders a saved one again."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptlab.errors import UserError
from gptlab.explain.trace import Trace
from gptlab.infer.generate import check_generative
from gptlab.cli.generate import add_model_args, add_sampling_args, load_model, sampling_from_args, warnings_to_stderr


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="show attention and next-token probabilities step by step",
        description="Generate a few tokens and show, per step, the words highlighted by attention and the "
                    "most likely next words. Example: gptlab explain runs/demo \"wine review : germany\" "
                    "--steps 4 --out trace.html",
    )
    add_model_args(p, optional=True)
    p.add_argument("prompt", nargs="?", default=None, help="text to continue")
    p.add_argument("--steps", type=int, default=4, help="tokens to generate and explain (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, help="candidates to show per step (default: %(default)s)")
    p.add_argument("--out", metavar="HTML", help="write a standalone HTML page (opens offline) instead of printing")
    p.add_argument("--json", metavar="JSON", help="also save the trace as JSON, to render again later with --trace")
    p.add_argument("--trace", metavar="JSON", help="render a saved trace instead of running a model")
    p.add_argument("--layer", default=None, help="attention layer to show, 1..n_layer or 'mean' (default: the last)")
    p.add_argument("--head", default=None, help="attention head to show, 1..n_head or 'mean' (default: mean)")
    add_sampling_args(p, skip=("max_new_tokens",))
    p.set_defaults(func=run)


def _pick(value: str | None, n: int, what: str) -> int | str | None:
    """1-based CLI choice -> 0-based index, "mean" or None."""
    if value is None or value == "mean":
        return value
    try:
        i = int(value)
    except ValueError:
        i = 0
    if not 1 <= i <= n:
        raise UserError(f"--{what} must be 1..{n} or 'mean' (got {value!r})")
    return i - 1


def run(args: argparse.Namespace) -> int:
    for path in (args.out, args.json):
        if path and not Path(path).resolve().parent.is_dir():
            raise UserError(f"cannot write {path}: its folder does not exist; create it or pick another path")
    if args.trace:
        if args.model or args.prompt is not None:
            raise UserError("give either MODEL PROMPT or --trace FILE, not both")
        trace = Trace.load(args.trace)
        n_layer, n_head = trace.n_layer, trace.n_head
    else:
        if not args.model:
            raise UserError("give a MODEL folder and a PROMPT (or --trace FILE to render a saved trace)")
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1 (got {args.steps})")
        if args.top < 1:
            raise UserError(f"--top must be >= 1 (got {args.top})")
        cfg = sampling_from_args(args, max_new_tokens=args.steps)
        model = load_model(args)
        check_generative(model.model, model.kind)
        n_layer, n_head = model.model.cfg.n_layer, model.model.cfg.n_head
    layer = _pick(args.layer, n_layer, "layer")
    head = _pick(args.head, n_head, "head")
    if not args.trace:
        kwargs = {k: v for k, v in cfg.to_dict().items() if k != "max_new_tokens"}
        with warnings_to_stderr("explain"):
            trace = model.explain(args.prompt or "", steps=args.steps, top=args.top, **kwargs)
    if args.json:
        trace.save(args.json)
        print(f"wrote {args.json}")
    if args.out:
        from gptlab.checkpoint import atomic_write_text
        from gptlab.explain.render_html import render_html
        atomic_write_text(args.out, render_html(trace, layer=layer, head=head))
        print(f"wrote {args.out}")
    else:
        print(trace.to_terminal(layer=layer, head=head))
    return 0
