"""`gptlab explain MODEL PROMPT`: generate a few tokens and show, at each step, what the model
attended to and what it considered next (the course notebook's view), in the terminal or as a
standalone HTML page; `--json` saves the trace and `--trace` renders a saved one again."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.cli.common import pick_index
from gptlab.cli.generate import (
    LoadOptions,
    add_model_args,
    add_sampling_args,
    load_model,
    prompt_slot,
    read_sampling,
    warnings_to_stderr,
)
from gptlab.cli.options import Section
from gptlab.errors import UserError
from gptlab.explain.trace import Trace
from gptlab.infer.generate import check_generative
from gptlab.infer.sampling import SamplingConfig
from gptlab.settings import check_writable, setting

# A trace keeps every step's attention rows and candidates: thousands of steps are megabytes of
# JSON and HTML that no one reads.
MAX_STEPS = 10_000
MAX_TOP = 1000


@dataclass
class ExplainView(LoadOptions):
    """`gptlab explain`'s own settings (the sampling ones are SamplingConfig's)."""
    steps: int = setting(4, "tokens to generate and explain", min=1, max=MAX_STEPS)
    top: int = setting(5, "candidates to show per step", min=1, max=MAX_TOP)
    out: str | None = setting(None, "write a standalone HTML page (opens offline) instead of printing")
    json: str | None = setting(None, "also save the trace as JSON, to render again later with --trace")
    trace: str | None = setting(None, "render a saved trace (any family's) instead of running a model")
    layer: str | None = setting(None, "attention layer to show, 1..n_layer or 'mean' (default: the last)")
    head: str | None = setting(None, "attention head to show, 1..n_head or 'mean' (default: mean)")
    compare: str | None = setting(None, "REF model folder (e.g. the SFT model an aligned MODEL came from): per step, "
                                        "the top candidates of both and the KL between them, instead of attention")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="show attention and next-token probabilities step by step",
        description="Generate a few tokens and show, per step, the words highlighted by attention and the "
                    "most likely next words. Example: gptlab explain runs/demo \"wine review : germany\" "
                    "--steps 4 --out trace.html",
    )
    add_model_args(p, prompt_slot(p, "text to continue", default=None), optional=True)
    add_sampling_args(p, skip=("max_new_tokens",),
                      view=Section("view", ExplainView, "explanation", first=("steps", "top", "out", "json", "trace", "layer", "head")))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg, view = read_sampling(args, ExplainView)
    for flag, path in (("--out", view.out), ("--json", view.json)):
        if path:
            check_writable(path, flag, folder=False)
    outputs = [Path(p).resolve() for p in (view.out, view.json) if p]
    if len(set(outputs)) < len(outputs) or (view.trace and Path(view.trace).resolve() in outputs):
        raise UserError("--out, --json and --trace name the same file: give each its own")
    if view.compare and (view.trace or view.json):
        raise UserError("--compare runs two models and writes no trace: leave out --trace and --json (--out FILE.html "
                        "writes the comparison as a page)")
    if view.trace:
        if args.model or args.prompt is not None:
            raise UserError("give either MODEL PROMPT or --trace FILE, not both")
        trace = Trace.load(view.trace)
    else:
        if not args.model:
            raise UserError("give a MODEL folder and a PROMPT (or --trace FILE to render a saved trace)")
        model = load_model(args, view.max_params)
        check_generative(model.model, model.kind)
        if view.compare:
            return run_compare(args, model, view, cfg)
    n_layer, n_head = (trace.n_layer, trace.n_head) if view.trace else (model.model.cfg.n_layer, model.model.cfg.n_head)
    layer = pick_index(view.layer, n_layer, "layer")
    head = pick_index(view.head, n_head, "head")
    if not view.trace:
        kwargs = {k: v for k, v in cfg.to_dict().items() if k != "max_new_tokens"}
        with warnings_to_stderr("explain"):
            trace = model.explain(args.prompt or "", steps=view.steps, top=view.top, **kwargs)
    if view.json:
        trace.save(view.json)
        print(f"wrote {view.json}")
    if view.out:
        from gptlab.checkpoint import atomic_write_text
        from gptlab.explain.render_html import render_html
        atomic_write_text(view.out, render_html(trace, layer=layer, head=head))
        print(f"wrote {view.out}")
    else:
        print(trace.to_terminal(layer=layer, head=head))
    return 0


def run_compare(args: argparse.Namespace, loaded: Any, view: ExplainView, cfg: SamplingConfig) -> int:
    """`gptlab explain MODEL PROMPT --compare REF`: where MODEL and REF disagree, step by step, in the
    terminal or (--out) as a page drawn by the same view as the Compare tab of `gptlab serve`."""
    from gptlab.explain.compare import compare, same_vocabulary
    from gptlab.training.align import load_gpt, same_architecture

    assert view.compare
    ref, ref_tok, _ = load_gpt(view.compare, "--compare")
    same_architecture(loaded.model.cfg, ref.cfg, "--compare")
    same_vocabulary(loaded.tokenizer, ref_tok)
    # Folder names, not paths: a page may be shared, where the models lay on disk is no part of it.
    names = (Path(args.model).resolve().name, Path(view.compare).resolve().name)
    result = compare(loaded.model, ref, loaded.tokenizer, args.prompt or "", cfg, view.steps, view.top, names=names)
    if view.out:
        from gptlab.checkpoint import atomic_write_text
        from gptlab.explain.render_html import render_compare_html
        atomic_write_text(view.out, render_compare_html(result.to_dict(), result.to_terminal()))
        print(f"wrote {view.out}")
    else:
        print(result.to_terminal())
    return 0
