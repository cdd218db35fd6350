"""`gptlab train`: corpus -> tokenizer -> GPT, every setting a flag or a TOML key."""

from __future__ import annotations

import argparse

from gptlab.training.config import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a GPT on the built-in wine corpus, the Kaggle wine reviews or your own text",
        description="Train a GPT. Start from a preset (--preset book is the course notebook's model), then "
                    "override any field with a flag or a TOML file (--config). Multi-GPU: "
                    "torchrun --nproc_per_node N -m gptlab train ...",
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from gptlab.training.trainer import train  # torch is imported only when a command needs it

    cfg = config_from_args(args)
    result = train(cfg)
    if result.interrupted:
        print(f"stopped at step {result.step}; the checkpoint in {result.out} continues with: "
              f"gptlab train --out {result.out} --resume")
        return 130
    vl = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"trained {result.step} steps; val loss {vl} per token; model in {result.out}")
    return 0
