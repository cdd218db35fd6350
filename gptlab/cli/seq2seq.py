"""`gptlab seq2seq train | translate | explain`: the encoder-decoder family (translation)."""

from __future__ import annotations

import argparse
from typing import Any

from gptlab.cli.common import FMT, add_use_flags, add_view_flags, pick_index, read_texts, resolve_device, show_trace
from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError
from gptlab.training.config import own_fields


def _sections() -> list[Section]:
    from gptlab.model.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqConfig
    from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig
    return [Section("train", Seq2SeqTrainConfig, "training", first=own_fields(Seq2SeqTrainConfig)),
            Section("model", Seq2SeqConfig, "model (flags not given come from --preset; defaults shown are the small preset's)",
                    SEQ2SEQ_PRESETS["small"](), skip=("vocab_size",))]


def _base(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from gptlab.model.seq2seq import SEQ2SEQ_PRESETS
    from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig
    t = Seq2SeqTrainConfig()
    preset = values["train"].get("preset", t.preset)
    if preset not in SEQ2SEQ_PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(SEQ2SEQ_PRESETS)}")
    return {"train": t, "model": SEQ2SEQ_PRESETS[preset]()}


def register(sub: Any) -> None:
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
    add_options(tr, _sections())
    tr.set_defaults(func=run_train)

    t = ss.add_parser("translate", help="translate text with a trained model", formatter_class=FMT,
                      description="Translate each TEXT (or each line of stdin). Example: gptlab seq2seq translate "
                                  "runs/numbers \"three hundred forty-two\" --beam 4")
    add_use_flags(t, text_help="sentences to translate", many=True,
                  model_help="model folder from `gptlab seq2seq train`")
    t.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    t.set_defaults(func=run_translate)

    e = ss.add_parser("explain", help="show which source words each generated word attended to", formatter_class=FMT,
                      description="Translate one sentence and show the decoder's cross-attention (rows: generated "
                                  "words, columns: source words) in the terminal, and optionally as an HTML heatmap "
                                  "and a gptlab-trace JSON file.")
    add_use_flags(e, text_help="the sentence to translate", many=False,
                  model_help="model folder from `gptlab seq2seq train`")
    e.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    add_view_flags(e, layer_help="decoder layer to show, 1..n, or 'mean' over layers")
    e.add_argument("--values", action="store_true", help="print weights (x100) instead of shades")
    e.set_defaults(func=run_explain)


def run_train(args: argparse.Namespace) -> int:
    from gptlab.infer.translate import evaluate_translation
    from gptlab.training.tasks.seq2seq import train
    objs = read_options(args, _base, "seq2seq train")
    t = objs["train"]
    r = train(t, objs["model"])
    m = r.metrics
    print(f"trained {sum(p.numel() for p in r.model.parameters()):,} parameters for {m['steps']} steps in {m['train_seconds']}s; "
          f"saved to {t.out}")
    if "val_loss" in m:
        print(f"validation: loss {m['val_loss']:.3f}, exact match {m.get('val_exact_match', float('nan')):.1%}"
              + (f", chrF {m['val_chrf']:.1f}" if m.get("val_chrf") is not None else ""))
    if r.splits and r.splits.get("test") and not r.interrupted:
        ev = evaluate_translation(r.model, r.tokenizer, r.splits["test"][:500])
        print(f"test ({ev['n']} held-out pairs): exact match {ev['exact_match']:.1%}"
              + (f", chrF {ev['chrf']:.1f}" if ev.get("chrf") is not None else ""))
        for x in ev["examples"][:3]:
            print(f"  {x['source']}  ->  {x['output']}" + ("" if x["output"] == x["reference"] else f"   (want: {x['reference']})"))
    return 130 if r.interrupted else 0


MAX_BEAM = 64  # K beams x N sentences share one decoder batch: more would only exhaust memory


def check_beam(beam: int) -> int:
    if not 1 <= beam <= MAX_BEAM:
        raise UserError(f"--beam must be 1..{MAX_BEAM} (got {beam}): 1 is greedy, 4 is the usual beam")
    return beam


def run_translate(args: argparse.Namespace) -> int:
    from gptlab.infer.translate import load, translate
    check_beam(args.beam)
    texts = read_texts(args.text)
    model, tok, _ = load(args.model, resolve_device(args.device))
    for line in translate(model, tok, texts, beam=args.beam):
        print(line)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from gptlab.explain.capture import explain_translation
    from gptlab.infer.translate import load
    check_beam(args.beam)
    model, tok, _ = load(args.model, resolve_device(args.device))
    layer = pick_index(args.layer, model.cfg.n_decoder_layer, "layer")
    trace = explain_translation(model, tok, args.text, beam=args.beam, layer=layer)
    return show_trace(trace.terminal(color=args.color, values=args.values), trace, args)
