"""Tiny alignment fixtures shared by tests/test_align*.py: a Kaggle-layout CSV of short reviews whose
words follow their points (so preferences are learnable) and a tiny GPT pretrained on them."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from gptlab.data.config import DataConfig
from gptlab.model import tiny
from gptlab.training.config import RunConfig, TrainConfig

PLACES = {"germany": ("mosel", "rheingau"), "france": ("bordeaux", "alsace"), "us": ("california", "oregon")}
VARIETIES = ("riesling", "merlot")
WORDS = (("simple", "lean", "short"), ("pleasant", "fresh", "clean"), ("elegant", "polished", "long"),
         ("superb", "profound", "endless"))
FRUIT = ("apple", "cherry", "plum", "lime", "peach")


def toy_rows(n: int = 400, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        country = rng.choice(list(PLACES))
        points = rng.randint(80, 99)
        tier = 0 if points <= 84 else 1 if points <= 88 else 2 if points <= 92 else 3
        desc = f"a {rng.choice(WORDS[tier])} wine with {rng.choice(FRUIT)} and a {rng.choice(WORDS[tier])} finish ."
        rows.append({"country": country, "province": rng.choice(PLACES[country]), "variety": rng.choice(VARIETIES),
                     "description": desc, "points": points, "price": 20})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def base_model(folder: Path, csv_path: Path, steps: int = 150) -> Path:
    """A tiny GPT (context 64) pretrained for `steps` on the CSV's records."""
    from gptlab.training.tasks.causal_lm import train

    mcfg = tiny()
    mcfg.context_length, mcfg.vocab_size = 64, 200
    cfg = RunConfig(mcfg, DataConfig(data=str(csv_path), val_fraction=0.0),
                    TrainConfig(out=str(folder), max_steps=steps, batch_size=16, lr=3e-3, warmup_steps=10,
                                eval_interval=0, progress=False, tensorboard=False, device="cpu", overwrite=True,
                                precision="fp32", sample_prompt="", threads=1, seed=0,
                                label_weight=1.0))  # the alignment tests were tuned on a plain-loss base
    train(cfg)
    return folder


def loop_kw(out: Path, **kw) -> dict:
    return {**dict(out=str(out), batch_size=8, warmup_steps=2, eval_interval=0, log_interval=1, progress=False,
                   tensorboard=False, device="cpu", precision="fp32", seed=3, threads=1), **kw}
