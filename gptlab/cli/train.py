"""`gptlab train`: corpus -> tokenizer -> GPT, every setting a flag or a TOML key."""

from __future__ import annotations

import argparse
from typing import Any

from gptlab.cli.options import Options, Section, add_options, read_options
from gptlab.data.config import DataConfig
from gptlab.errors import UserError
from gptlab.model.config import ModelConfig
from gptlab.training.config import RUN_PRESETS, RunConfig, TrainConfig, own_fields, preset_small


def run_sections(shown: RunConfig | None = None) -> list[Section]:
    """train, model and data: the sections of `gptlab train` (and of `gptlab scale`)."""
    shown = shown or preset_small()
    return [Section("train", TrainConfig, "training", shown.train, first=own_fields(TrainConfig, ("out", "epochs"))),
            Section("model", ModelConfig, "model (defaults shown are the small preset's)", shown.model),
            Section("data", DataConfig, "data", shown.data)]


def run_config(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The preset named in the flags or TOML file (default small), as sections."""
    preset = values["train"].get("preset") or "small"
    if preset not in RUN_PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(RUN_PRESETS)}")
    cfg = RUN_PRESETS[preset]()
    return {"train": cfg.train, "model": cfg.model, "data": cfg.data}


def config_from_args(args: argparse.Namespace, command: str = "train") -> RunConfig:
    objs = read_options(args, run_config, command)
    return RunConfig(objs["model"], objs["data"], objs["train"])


def register(sub: Any) -> Options:
    p = sub.add_parser(
        "train", help="train a GPT on the built-in wine corpus, the Kaggle wine reviews or your own text",
        description="Train a GPT. Start from a preset (--preset book is the course notebook's model), then "
                    "override any field with a flag or a TOML file (--config). Multi-GPU: "
                    "torchrun --nproc_per_node N -m gptlab train ...",
    )
    p.set_defaults(func=run)
    return add_options(p, run_sections())


def run(args: argparse.Namespace) -> int:
    from gptlab.training.tasks.causal_lm import train  # torch is imported only when a command needs it

    result = train(config_from_args(args))
    if result.interrupted:
        print(f"stopped at step {result.step}; the checkpoint in {result.out} continues with: "
              f"gptlab train --out {result.out} --resume")
        return 130
    vl = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"trained {result.step} steps; val loss {vl} per token; model in {result.out}")
    return 0
