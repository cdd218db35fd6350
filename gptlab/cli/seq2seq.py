"""`gptlab seq2seq train | translate | explain`: the encoder-decoder family (translation)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from gptlab.errors import UserError

FMT = argparse.ArgumentDefaultsHelpFormatter


# -- flags from dataclasses (one way to configure: the dataclass is the source of truth) ------------
def add_fields(parser: argparse.ArgumentParser, obj, title: str, dest_prefix: str = "", skip=(),
               default_none: bool = False, shown: str = "default") -> None:
    """One --flag per dataclass field, help from its metadata, the default shown.

    default_none: keep None in the namespace so only flags typed override (model fields, where the
    preset `obj` supplies the rest; `shown` names where the shown default comes from).
    """
    from gptlab.training.tasks.seq2seq import LoopConfig
    group = parser.add_argument_group(title)
    # A family's own fields (--data, --out, ...) before the training-loop fields they share.
    loop = {f.name for f in fields(LoopConfig)} if isinstance(obj, LoopConfig) else set()
    for f in sorted(fields(obj), key=lambda f: f.name in loop):
        if f.name in skip:
            continue
        default = getattr(obj, f.name)
        help_text = f"{f.metadata.get('help', '')} ({shown}: {default!r})".replace("%", "%%")
        kw = dict(dest=dest_prefix + f.name, default=None if default_none else default, help=help_text)
        if isinstance(default, bool):
            group.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, **kw)
        else:
            typ = type(default)
            group.add_argument("--" + f.name.replace("_", "-"), type=typ,
                               metavar={int: "N", float: "X"}.get(typ, "S"), **kw)


def fill(obj, args: argparse.Namespace, prefix: str = ""):
    """Copy the flags that hold a value back into a dataclass instance."""
    for f in fields(obj):
        v = getattr(args, prefix + f.name, None)
        if v is not None:
            setattr(obj, f.name, v)
    return obj


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
    parser.add_argument("--json", metavar="FILE", help="write the trace (format gptlab-trace, version 1) here")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="ANSI colours (default: when stdout is a terminal)")


def show_trace(terminal: str, trace, args: argparse.Namespace) -> int:
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


# -- the command ----------------------------------------------------------------------------------
def register(sub) -> None:
    from gptlab.model.seq2seq import SEQ2SEQ_PRESETS
    from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig

    p = sub.add_parser("seq2seq", help="encoder-decoder transformer: train a translator, translate, show its cross-attention",
                       description="The original Transformer family (Vaswani et al.; T5, BART): an encoder reads the "
                                   "source sentence both ways, a decoder writes the translation with masked "
                                   "self-attention plus cross-attention to the encoder.")
    ss = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    tr = ss.add_parser("train", help="train on number words (built-in, offline) or a TSV pairs file",
                       description="Train a translation model. --data numbers: English number words -> Spanish "
                                   "(0..9999, test numbers unseen). --data FILE: source<TAB>target lines (the "
                                   "Tatoeba/Anki spa-eng.txt works as is; extra columns are ignored).")
    add_fields(tr, Seq2SeqTrainConfig(), "training")
    add_fields(tr, SEQ2SEQ_PRESETS["small"](), "model (flags not given come from --preset)", dest_prefix="m_",
               skip=("vocab_size",), default_none=True, shown="small preset")
    tr.set_defaults(func=run_train)

    t = ss.add_parser("translate", help="translate text with a trained model", formatter_class=FMT)
    add_use_flags(t, text_help="sentences to translate", many=True, model="runs/seq2seq",
                  model_help="model folder from `gptlab seq2seq train`")
    t.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    t.set_defaults(func=run_translate)

    e = ss.add_parser("explain", help="show which source words each generated word attended to", formatter_class=FMT,
                      description="Translate one sentence and show the decoder's cross-attention (rows: generated "
                                  "words, columns: source words) in the terminal, and optionally as an HTML heatmap "
                                  "and a gptlab-trace JSON file.")
    add_use_flags(e, text_help="the sentence to translate", many=False, model="runs/seq2seq",
                  model_help="model folder from `gptlab seq2seq train`")
    e.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    add_view_flags(e, layer_help="decoder layer to show (0.., -1 = last) or 'mean' over layers")
    e.add_argument("--values", action="store_true", help="print weights (x100) instead of shades")
    e.set_defaults(func=run_explain)


def run_train(args) -> int:
    from gptlab.model.seq2seq import SEQ2SEQ_PRESETS
    from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig, evaluate_translation, train
    t = fill(Seq2SeqTrainConfig(), args)
    t.validate()
    mcfg = SEQ2SEQ_PRESETS[t.preset]()
    fill(mcfg, args, prefix="m_")
    r = train(t, mcfg)
    m = r.config["metrics"]
    print(f"trained {r.model.num_params():,} parameters for {m['steps']} steps in {m['train_seconds']}s; "
          f"saved to {t.out}")
    if "val_loss" in m:
        print(f"validation: loss {m['val_loss']:.3f}, exact match {m.get('val_exact_match', float('nan')):.1%}"
              + (f", chrF {m['val_chrf']:.1f}" if m.get("val_chrf") is not None else ""))
    if r.splits.get("test"):
        ev = evaluate_translation(r.model, r.tokenizer, r.splits["test"][:500])
        print(f"test ({ev['n']} held-out pairs): exact match {ev['exact_match']:.1%}"
              + (f", chrF {ev['chrf']:.1f}" if ev.get("chrf") is not None else ""))
        for x in ev["examples"][:3]:
            print(f"  {x['source']}  ->  {x['output']}" + ("" if x["output"] == x["reference"] else f"   (want: {x['reference']})"))
    return 0


def run_translate(args) -> int:
    from gptlab.training.tasks.seq2seq import load, translate
    texts = read_texts(args.text)
    model, tok, _ = load(args.model, args.device)
    for line in translate(model, tok, texts, beam=args.beam):
        print(line)
    return 0


def run_explain(args) -> int:
    from gptlab.explain.families import explain_translation
    from gptlab.training.tasks.seq2seq import load
    model, tok, _ = load(args.model, args.device)
    trace = explain_translation(model, tok, args.text, beam=args.beam, layer=args.layer)
    return show_trace(trace.terminal(color=args.color, values=args.values), trace, args)

