"""The optimizer, the learning-rate schedule and the weight average every family trains with."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch


def build_optimizer(model: torch.nn.Module, t: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW decays matrices only (not biases, LayerNorms); `adam` is the notebook's Keras Adam."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs: dict[str, Any] = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    cls: type[torch.optim.Optimizer]
    groups: Any
    if t.optimizer == "adam":
        cls, groups = torch.optim.Adam, params
    else:
        cls = torch.optim.AdamW
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if device.type in ("cuda", "cpu"):
        # One pass over each parameter for the whole update (CUDA: one kernel for all of them; CPU,
        # torch >= 2.4: ~8% of a `book` step saved against the per-op loop).
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # an older torch without fused CPU Adam
            pass
    return cls(groups, **kwargs)


def warmup_for(t: Any, total_steps: int) -> int:
    """The warmup actually used: a run shorter than 4x its warmup warms up for a quarter of it,
    so a short run still reaches its peak learning rate (200 warmup steps of a 200-step run
    would never leave warmup)."""
    if total_steps <= 0 or total_steps >= 4 * t.warmup_steps:
        return int(t.warmup_steps)
    return max(1, total_steps // 4) if t.warmup_steps else 0


def lr_at(step: int, progress: float, t: Any, warmup: int | None = None) -> float:
    """Warmup by step, then cosine from lr to min_lr over `progress` in [0, 1]."""
    warmup = t.warmup_steps if warmup is None else warmup
    if warmup and step < warmup:
        return float(t.lr * (step + 1) / warmup)
    if t.schedule == "constant":
        return float(t.lr)
    p = min(max(progress, 0.0), 1.0)
    return float(t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * p)))


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging).

    Late in fine-tuning on a small labelled set, successive weights scatter around a good point as
    each batch pulls them its way; their running average sits nearer that point and usually scores
    better on unseen rows than any single step. The decay ramps up from 0 ((1 + step) / (10 + step))
    so the first steps' random-ish weights are soon forgotten.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.shadow)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (evaluation), the training weights after."""
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, current)
