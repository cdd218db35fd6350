"""`gptlab encoder pretrain | classify | predict | explain`: the encoder-only family (BERT)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from gptlab.cli.seq2seq import FMT, add_fields, add_use_flags, add_view_flags, fill, read_texts, show_trace


def _data_fields(parser, skip=()):
    """DataConfig's flags as `gptlab train` spells them: --data, --format, ..., --data-seed."""
    from gptlab.data import DataConfig
    group = parser.add_argument_group("data")
    for f in fields(DataConfig):
        if f.name in skip:
            continue
        flag = "--data-seed" if f.name == "seed" else "--" + f.name.replace("_", "-")
        default = getattr(DataConfig(), f.name)
        kw = ({"action": argparse.BooleanOptionalAction} if isinstance(default, bool)
              else {"type": type(default), "metavar": {int: "N", float: "X"}.get(type(default), "S")})
        group.add_argument(flag, dest=f"data__{f.name}", default=default,
                           help=f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%"), **kw)


def register(sub) -> None:
    from gptlab.training.tasks.encoder import ClassifyConfig, EncoderTrainConfig
    from gptlab.model.encoder import ENCODER_PRESETS

    p = sub.add_parser("encoder", help="encoder-only transformer (BERT): masked-LM pretraining, classification, attention",
                       description="The encoder-only family: the GPT's blocks with bidirectional attention. "
                                   "Pretrain by masked-language modelling, then fine-tune a classifier.")
    ss = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    pre = ss.add_parser("pretrain", help="masked-LM pretraining on a corpus (default: the built-in wine reviews)",
                        description="15% of word tokens are selected; 80% of those become [MASK], 10% a random "
                                    "word, 10% stay; the model learns to restore them from both sides.")
    add_fields(pre, EncoderTrainConfig(), "training")
    add_fields(pre, ENCODER_PRESETS["small"](), "model (flags not given come from --preset)", dest_prefix="m_",
               skip=("vocab_size",), default_none=True, shown="small preset")
    _data_fields(pre)
    pre.set_defaults(func=run_pretrain)

    cl = ss.add_parser("classify", help="fine-tune a classifier on a labelled column (e.g. wine variety or country)",
                       description="Predict --label from --text-field alone. With --model PRETRAINED the encoder "
                                   "starts from masked-LM weights; without, from scratch.")
    add_fields(cl, ClassifyConfig(), "training", skip=("mask_prob", "init"))
    add_fields(cl, ENCODER_PRESETS["small"](), "model when training from scratch (flags not given come from --preset)",
               dest_prefix="m_", skip=("vocab_size",), default_none=True, shown="small preset")
    _data_fields(cl, skip=("template",))
    cl.set_defaults(func=run_classify)

    pr = ss.add_parser("predict", help="label texts with a trained classifier", formatter_class=FMT)
    add_use_flags(pr, text_help="texts to classify", many=True, model="runs/classifier",
                  model_help="classifier folder from `gptlab encoder classify`")
    pr.add_argument("--top", type=int, default=3, help="labels shown per text")
    pr.set_defaults(func=run_predict)

    ex = ss.add_parser("explain", help="show how one token ([CLS] by default) attends over the whole sentence",
                       formatter_class=FMT,
                       description="Bidirectional attention made visible: the chosen token's attention over every "
                                   "token, left and right. A classifier also shows its prediction; a masked-LM "
                                   "encoder fills each [MASK] in the text.")
    add_use_flags(ex, text_help="the sentence", many=False, model="runs/classifier",
                  model_help="encoder or classifier folder")
    ex.add_argument("--token", default=None, help="position (0 = [CLS]) or word whose attention to show")
    add_view_flags(ex, layer_help="layer (0.., -1 = last) or 'mean' over layers")
    ex.add_argument("--matrix", action="store_true", help="also print every token's attention as a heatmap")
    ex.set_defaults(func=run_explain)


def _data_config(args):
    from gptlab.data import DataConfig
    return fill(DataConfig(), args, prefix="data__")


def run_pretrain(args) -> int:
    from gptlab.training.tasks.encoder import EncoderTrainConfig, pretrain
    from gptlab.model.encoder import ENCODER_PRESETS
    t = fill(EncoderTrainConfig(), args)
    t.validate()
    mcfg = fill(ENCODER_PRESETS[t.preset](), args, prefix="m_")
    r = pretrain(t, _data_config(args), mcfg)
    m = r.config["metrics"]
    print(f"pretrained {r.model.num_params():,} parameters for {m['steps']} steps in {m['train_seconds']}s; "
          f"saved to {t.out}")
    if "val_loss" in m:
        print(f"validation masked-LM loss {m['val_loss']:.3f} (train {m['train_loss']:.3f})")
    return 0


def run_classify(args) -> int:
    from gptlab.training.tasks.encoder import ClassifyConfig, classify
    from gptlab.model.encoder import ENCODER_PRESETS
    t = fill(ClassifyConfig(), args)
    t.validate()
    mcfg = None if t.model else fill(ENCODER_PRESETS[t.preset](), args, prefix="m_")
    r = classify(t, _data_config(args), mcfg)
    m = r.config["metrics"]
    print(f"fine-tuned on {m['train_rows']} rows ({len(r.config['classifier']['labels'])} labels of "
          f"{t.label!r}) for {m['steps']} steps in {m['train_seconds']}s; saved to {t.out}")
    print(f"validation accuracy {m['val_accuracy']:.1%} on {m['val_rows']} rows "
          f"(always guessing the most common label: {m['val_majority_baseline']:.1%})")
    return 0


def run_predict(args) -> int:
    from gptlab.training.tasks.encoder import KIND_CLASSIFIER, load_encoder, predict
    texts = read_texts(args.text)
    model, tok, cfg = load_encoder(args.model, args.device, kinds=(KIND_CLASSIFIER,))
    for text, top in zip(texts, predict(model, tok, cfg, texts, top=max(args.top, 1))):
        print(" | ".join(f"{label} {p:.0%}" for label, p in top) + f"\t{text[:60]}")
    return 0


def run_explain(args) -> int:
    from gptlab.data import normalize_text
    from gptlab.training.tasks.encoder import load_encoder
    from gptlab.explain.families import explain_encoder
    model, tok, cfg = load_encoder(args.model, args.device)
    labels = cfg.get("classifier", {}).get("labels")
    # Read the text as the model was trained to (lowercase, punctuation apart); [MASK] survives.
    text = normalize_text(args.text).replace("[ mask ]", "[MASK]").strip()
    trace = explain_encoder(model, tok, text, focus=args.token, layer=args.layer, labels=labels)
    return show_trace(trace.terminal(color=args.color, matrix=args.matrix), trace, args)
