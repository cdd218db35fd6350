"""`gptlab align sft | reflect | reward | dpo | ppo | grpo | bon`: the ChatGPT recipe on a wine GPT.

sft: instructions -> a GPT that answers them (and stops); reflect: the same, plus
(draft, critique -> revision) examples; reward: a reward model on preference pairs; dpo: the
policy straight from pairs; ppo / grpo: the policy against the reward model with a KL penalty to
the SFT model; bon: best-of-n sampling, the baseline, with its exact KL.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from gptlab.cli.common import FMT, add_positionals
from gptlab.cli.options import Section, add_options, read_options
from gptlab.data.config import DataConfig
from gptlab.data.instructions import CHECKER_PENALTY
from gptlab.settings import SEED_MAX, setting
from gptlab.training.config import DEVICES_HELP, own_fields

SFT_HELP = "the GPT to fine-tune (from `gptlab train`)"
POLICY_HELP = "the SFT model to align (from `gptlab align sft`)"


@dataclass
class BonConfig:
    reward: str = setting("", "reward model folder (from `gptlab align reward`)")
    n: int = setting(16, "largest n: every power of 2 up to it is reported", min=1, max=4096)
    prompts: int = setting(64, "held-out prompts of the corpus to sample", min=1)
    temperature: float = setting(1.0, "sampling temperature", above=0)
    checker_penalty: float = setting(CHECKER_PENALTY, "subtracted from the proxy reward of a response the checker rejects (as `align ppo`)", min=0)
    seed: int = setting(0, "sampling seed", min=0, max=SEED_MAX)
    device: str = setting("auto", DEVICES_HELP)
    json: str = setting("", "write the table to this JSON file too")


def _commands() -> dict[str, tuple[type, str, str, str]]:
    """action -> (config class, model help, help, description)."""
    from gptlab.training.tasks.dpo import DPOConfig
    from gptlab.training.tasks.ppo import GRPOConfig, PPOConfig
    from gptlab.training.tasks.reward import RewardConfig
    from gptlab.training.tasks.sft import SFTConfig
    return {
        "sft": (SFTConfig, SFT_HELP, "supervised fine-tuning on instructions ('write a review : germany : riesling :')",
                "Fine-tune a trained GPT on instructions made from the corpus's reviews; the loss is on the response "
                "only, its <|endoftext|> included, so the model learns to stop."),
        "reflect": (SFTConfig, SFT_HELP, "reflection tuning: instructions plus (draft, critique -> revision) examples",
                    "SFT whose data also holds drafts made wrong on purpose (province or variety), the checker's "
                    "critique, and the true review as the revision."),
        "reward": (RewardConfig, "the GPT whose blocks and tokenizer the reward model starts from (the SFT model)",
                   "train a reward model (a scalar head on the GPT's blocks) on preference pairs, Bradley-Terry loss",
                   "Pairs: a file (--pairs) or the corpus's points (the higher-scored review of the same country and "
                   "variety is preferred; --noise flips labels). Reports held-out pair accuracy."),
        "dpo": (DPOConfig, POLICY_HELP, "direct preference optimisation (or IPO) on preference pairs",
                "The policy learns from pairs directly against a frozen reference (the SFT model)."),
        "ppo": (PPOConfig, POLICY_HELP, "PPO against a reward model with a KL penalty to the SFT model",
                "Clipped objective, a value head, GAE, a KL penalty in the reward (TRL's defaults)."),
        "grpo": (GRPOConfig, POLICY_HELP, "GRPO or RLOO: group baselines instead of a value head",
                 "Several responses per prompt, each judged against its group; the KL to the SFT model in the loss."),
    }


def register(sub: Any) -> None:
    p = sub.add_parser("align", help="the ChatGPT recipe: SFT, reward model, PPO, GRPO, DPO, best-of-n, reflection",
                       description=__doc__)
    ss = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    for action, (cls, model_help, help, description) in _commands().items():
        sp = ss.add_parser(action, help=help, description=description)
        add_positionals(sp, model_help=model_help)
        add_options(sp, [Section("align", cls, "alignment", skip=("model",), first=own_fields(cls)),
                         Section("data", DataConfig, "data (the reviews instructions, pairs and prompts are made from)",
                                 skip=("template",))])
        sp.set_defaults(func=_run, _cls=cls)
    bon = ss.add_parser("bon", help="best-of-n sampling against a reward model: proxy and gold reward by n",
                        formatter_class=FMT)
    add_positionals(bon, model_help=POLICY_HELP)
    add_options(bon, [Section("bon", BonConfig, "best-of-n"),
                      Section("data", DataConfig, "data (the held-out prompts)", skip=("template",))])
    bon.set_defaults(func=_run_bon)


def _run(args: argparse.Namespace) -> int:
    cls = args._cls
    objs = read_options(args, lambda v: {"align": cls(), "data": DataConfig()}, f"align {args.action}")
    t, dcfg = objs["align"], objs["data"]
    t.model = args.model
    if args.action == "reflect" and not t.reflection:
        t.reflection = 1.0
    train = _trainer(args.action)
    r = train(t, dcfg)
    if r.interrupted:
        print(f"stopped at step {r.step}; continue with: gptlab align {args.action} {t.model} --out {t.out} --resume")
        return 130
    shown = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and k not in ("steps", "train_seconds")}
    print(f"{args.action}: {r.step} steps in {r.metrics.get('train_seconds')}s; model in {r.out}")
    print("  " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                           for k, v in shown.items()))
    return 0


def _trainer(action: str) -> Any:
    if action in ("sft", "reflect"):
        from gptlab.training.tasks.sft import sft
        return sft
    if action == "reward":
        from gptlab.training.tasks.reward import train_reward
        return train_reward
    if action == "dpo":
        from gptlab.training.tasks.dpo import dpo
        return dpo
    from gptlab.training.tasks.ppo import grpo, ppo
    return ppo if action == "ppo" else grpo


def _run_bon(args: argparse.Namespace) -> int:
    from gptlab.checkpoint import atomic_write_json
    from gptlab.errors import UserError
    from gptlab.training.align import (
        Scorer,
        best_of_n,
        default_gold,
        load_gpt,
        load_reward,
        policy_prompts,
        same_tokenizer,
    )
    from gptlab.training.env import resolve_device

    objs = read_options(args, lambda v: {"bon": BonConfig(), "data": DataConfig()}, "align bon")
    b, dcfg = objs["bon"], objs["data"]
    if not b.reward:
        raise UserError("no reward model given: pass --reward FOLDER (from `gptlab align reward`)")
    model, tok, _ = load_gpt(args.model)
    rm, rm_tok, _ = load_reward(b.reward)
    same_tokenizer(tok, rm_tok, f"the reward model {b.reward}")
    dev = resolve_device(b.device)
    _, prompts = policy_prompts(dcfg, b.prompts)
    table = best_of_n(model.to(dev).eval(), tok, prompts, Scorer(tok, model=rm, checker_penalty=b.checker_penalty), b.n, b.seed, default_gold(dcfg),
                      b.temperature)
    print(f"best-of-n on {len(prompts)} held-out prompts:")
    print("     n   KL (nats)   proxy reward" + ("   gold reward" if "gold" in table[0] else ""))
    for row in table:
        print(f"{row['n']:6d}   {row['kl']:9.3f}   {row['reward']:12.3f}" + (f"   {row['gold']:11.3f}" if "gold" in row else ""))
    if b.json:
        atomic_write_json(b.json, {"prompts": len(prompts), "table": table})
        print(f"wrote {b.json}")
    return 0

