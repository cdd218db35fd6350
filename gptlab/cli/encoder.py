"""`gptlab encoder pretrain | classify | predict | explain`: the encoder-only family (BERT)."""

from __future__ import annotations

import argparse
from typing import Any

from gptlab.cli.common import FMT, add_use_flags, add_view_flags, pick_index, read_texts, resolve_device, show_trace
from gptlab.cli.options import Section, add_options, read_options
from gptlab.data import DataConfig
from gptlab.errors import UserError
from gptlab.training.config import own_fields


def _sections(train_cls: type, model_title: str, data_skip: tuple[str, ...] = ()) -> list[Section]:
    from gptlab.model import ModelConfig
    from gptlab.model.encoder import ENCODER_PRESETS
    return [Section("train", train_cls, "training", first=own_fields(train_cls)),
            Section("model", ModelConfig, f"{model_title} (flags not given come from --preset; defaults shown are the small preset's)",
                    ENCODER_PRESETS["small"](), skip=("vocab_size",)),
            Section("data", DataConfig, "data", skip=data_skip)]


def _base(train_cls: type) -> Any:
    def base(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from gptlab.model.encoder import ENCODER_PRESETS
        t = train_cls()
        preset = values["train"].get("preset", t.preset)
        if preset not in ENCODER_PRESETS:
            raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(ENCODER_PRESETS)}")
        return {"train": t, "model": ENCODER_PRESETS[preset](), "data": DataConfig()}
    return base


def register(sub: Any) -> None:
    from gptlab.training.tasks.classify import ClassifyConfig
    from gptlab.training.tasks.masked_lm import EncoderTrainConfig

    p = sub.add_parser("encoder", help="encoder-only transformer (BERT): masked-LM pretraining, classification, attention",
                       description="The encoder-only family: the GPT's blocks with bidirectional attention. "
                                   "Pretrain by masked-language modelling, then fine-tune a classifier.")
    ss = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    pre = ss.add_parser("pretrain", help="masked-LM pretraining on a corpus (default: the built-in wine reviews)",
                        description="15% of word tokens are selected; 80% of those become [MASK], 10% a random "
                                    "word, 10% stay; the model learns to restore them from both sides.")
    add_options(pre, _sections(EncoderTrainConfig, "model"))
    pre.set_defaults(func=run_pretrain)

    cl = ss.add_parser("classify", help="fine-tune a classifier on a labelled column (e.g. wine variety or country)",
                       description="Predict --label from --text-field alone. Here --model PRETRAINED is not a model "
                                   "to use (as MODEL is in predict/explain) but the encoder to start from: "
                                   "masked-LM weights from `gptlab encoder pretrain`; without it, from scratch.")
    add_options(cl, _sections(ClassifyConfig, "model when training from scratch", data_skip=("template",)))
    cl.set_defaults(func=run_classify)

    pr = ss.add_parser("predict", help="label texts with a trained classifier", formatter_class=FMT)
    add_use_flags(pr, text_help="texts to classify", many=True,
                  model_help="classifier folder from `gptlab encoder classify`")
    pr.add_argument("--top", type=int, default=3, help="labels shown per text")
    pr.set_defaults(func=run_predict)

    ex = ss.add_parser("explain", help="show how one token ([CLS] by default) attends over the whole sentence",
                       formatter_class=FMT,
                       description="Bidirectional attention made visible: the chosen token's attention over every "
                                   "token, left and right. A classifier also shows its prediction; a masked-LM "
                                   "encoder fills each [MASK] in the text.")
    add_use_flags(ex, text_help="the sentence", many=False,
                  model_help="encoder or classifier folder")
    ex.add_argument("--token", default=None, help="position (0 = [CLS]) or word whose attention to show")
    add_view_flags(ex, layer_help="layer to show, 1..n_layer, or 'mean' over layers")
    ex.add_argument("--matrix", action="store_true", help="also print every token's attention as a heatmap")
    ex.set_defaults(func=run_explain)


def run_pretrain(args: argparse.Namespace) -> int:
    from gptlab.training.tasks.masked_lm import EncoderTrainConfig, pretrain
    objs = read_options(args, _base(EncoderTrainConfig), "encoder pretrain")
    t = objs["train"]
    r = pretrain(t, objs["data"], None if t.init else objs["model"])
    m = r.metrics
    print(f"pretrained {sum(p.numel() for p in r.model.parameters()):,} parameters for {m['steps']} steps in {m['train_seconds']}s; "
          f"saved to {t.out}")
    if "val_loss" in m:
        print(f"validation masked-LM loss {m['val_loss']:.3f} (train {m['train_loss']:.3f})")
    return 130 if r.interrupted else 0


def run_classify(args: argparse.Namespace) -> int:
    from gptlab.training.tasks.classify import ClassifyConfig, classify
    objs = read_options(args, _base(ClassifyConfig), "encoder classify")
    t = objs["train"]
    r = classify(t, objs["data"], None if t.model else objs["model"])
    if r.interrupted:
        print(f"stopped at step {r.step}; continue with --resume")
        return 130
    m = r.metrics
    print(f"fine-tuned on {m['train_rows']} rows ({len(r.config['classifier']['labels'])} labels of "
          f"{t.label!r}) for {m['steps']} steps in {m['train_seconds']}s; saved to {t.out}")
    print(f"validation accuracy {m['val_accuracy']:.1%} on {m['val_rows']} rows "
          f"(always guessing the most common label: {m['val_majority_baseline']:.1%})")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from gptlab.infer.classify import KIND_CLASSIFIER, load_encoder, predict
    if args.top < 1:
        raise UserError(f"--top must be >= 1 (got {args.top}): the number of labels shown per text")
    texts = read_texts(args.text)
    model, tok, cfg = load_encoder(args.model, resolve_device(args.device), kinds=(KIND_CLASSIFIER,))
    for text, top in zip(texts, predict(model, tok, cfg, texts, top=args.top)):
        print(" | ".join(f"{label} {p:.0%}" for label, p in top) + f"\t{text[:60]}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from gptlab.data import normalize_text
    from gptlab.explain.capture import explain_encoder
    from gptlab.infer.classify import load_encoder
    model, tok, cfg = load_encoder(args.model, resolve_device(args.device))
    labels = cfg.get("classifier", {}).get("labels")
    # Read the text as the model was trained to (lowercase, punctuation apart); [MASK] survives.
    text = normalize_text(args.text).replace("[ mask ]", "[MASK]").strip()
    layer = pick_index(args.layer, model.cfg.n_layer, "layer")
    trace = explain_encoder(model, tok, text, focus=args.token, layer=layer, labels=labels)
    return show_trace(trace.terminal(color=args.color, matrix=args.matrix), trace, args)
