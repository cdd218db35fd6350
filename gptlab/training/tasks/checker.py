"""The mini-GenEval checker's shape classifier, trained on the renderer's own shapes (some blurred
and noisy, as generated ones are) on the one training loop. It trains in seconds and is a pure
function of its seed, so `gptlab image eval` trains it where it runs rather than shipping weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptlab.data.shapes import SHAPES, shape_examples
from gptlab.data.tokenizer import Tokenizer
from gptlab.model.checker import ShapeChecker
from gptlab.settings import setting
from gptlab.training.config import LoopConfig
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, fit, runtime_for

KIND = "shape-checker"


@dataclass
class CheckerConfig(LoopConfig):
    out: str = setting("", "the checker is retrained where it is used: nothing is saved by default")
    size: int = setting(32, "canvas side", choices=(32, 64))
    examples: int = setting(4000, "rendered shapes to learn from", min=100)
    max_steps: int = setting(250, "optimizer steps", min=1)
    batch_size: int = setting(128, "shapes per step", min=1)
    lr: float = setting(3e-3, "peak learning rate", min=0)
    warmup_steps: int = setting(20, "linear warmup steps", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0)
    precision: str = setting("fp32", "fp32, bf16 or auto", choices=("auto", "fp32", "bf16"))
    eval_interval: int = setting(0, "steps between evaluations (0 = only at the end)", min=0)
    save_interval: int = setting(0, "steps between checkpoints", min=0)
    tensorboard: bool = setting(False, "write TensorBoard scalars")
    progress: bool = setting(False, "show a progress bar")
    seed: int = setting(0, "seed of the shapes and the initialisation", min=0)
    threads: int = setting(1, "CPU threads (one is fastest for a network this small)", min=0)


class ShapeCheckerTask(Task[ShapeChecker]):
    unit = "crop"
    kind = KIND
    best_metric = "val_accuracy"

    def __init__(self, t: CheckerConfig):
        self.t = t
        self.crops, self.feats, self.labels = shape_examples(t.seed, t.examples, t.size)
        self.val = shape_examples(t.seed + 1_000_003, 1000, t.size)
        # The labels are words: a tokenizer of them lets the loop save this like any other model.
        self.tokenizer = Tokenizer.train(list(SHAPES), vocab_size=16)
        torch.manual_seed(t.seed)
        self.model = ShapeChecker(len(SHAPES))

    def steps_per_epoch(self) -> int:
        return max(1, len(self.labels) // self.t.batch_size)

    def batch(self, step: int) -> Batch:
        rows = np.random.default_rng([self.t.seed, step]).integers(0, len(self.labels), self.t.batch_size)
        return Batch({"crops": torch.from_numpy(self.crops[rows]), "feats": torch.from_numpy(self.feats[rows]),
                      "labels": torch.from_numpy(self.labels[rows])}, len(rows))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(tensors["crops"], tensors["feats"], tensors["labels"])[2]

    @torch.no_grad()
    def evaluate(self, model: ShapeChecker, rt: Runtime) -> dict[str, float]:
        model.eval()
        crops, feats, labels = (torch.from_numpy(a).to(rt.device) for a in self.val)
        logits = model(crops, feats)[0]
        return {"val_accuracy": float((logits.argmax(1) == labels).float().mean())}

    def config(self) -> dict[str, Any]:
        return {"model": {"n_classes": len(SHAPES)}, "labels": list(SHAPES)}

    def describe(self) -> str:
        return f"shape checker: {len(self.labels):,} rendered shapes; "


_TRAINED: dict[tuple, ShapeChecker] = {}


def train_checker(t: CheckerConfig | None = None) -> ShapeChecker:
    """The trained checker (eval mode, on the CPU); the same settings in one process train once."""
    t = t or CheckerConfig()
    key = tuple(sorted(t.to_dict().items()))
    if key not in _TRAINED:
        rt = runtime_for(t, save=bool(t.out))
        _TRAINED[key] = fit(ShapeCheckerTask(t), t, rt).model.cpu().eval()
    return _TRAINED[key]
