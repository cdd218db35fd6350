"""The optimizer, the learning-rate schedule and the weight average every family trains with."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_update

from gptlab.training.env import resolve_precision


def build_optimizer(model: torch.nn.Module, t: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW decays matrices only (not biases, LayerNorms); `adam` is the notebook's Keras Adam;
    `muon` is Muon on the blocks' matrices and AdamW on the rest (`MuonAdamW`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kwargs: dict[str, Any] = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    cls: type[torch.optim.Optimizer]
    groups: Any
    if t.optimizer == "adam":
        cls, groups = torch.optim.Adam, [p for _, p in named]
    elif t.optimizer == "muon":
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        rest = [p for n, p in named if not is_hidden_matrix(n, p)]
        groups = [{"params": hidden, "muon": True, "weight_decay": t.weight_decay}, *decay_groups(rest, t.weight_decay)]
        # Newton-Schulz in the run's precision: bf16 where --precision auto picks it (the hardware
        # is fast at it) or bf16 is asked for, fp32 when fp32 is asked for (then two processes'
        # averaged gradients, equal to rounding, give equal updates; in bf16 a rounding flip moves
        # an update by ~0.4%).
        ns_dtype = resolve_precision(t.precision, device) or torch.float32
        return MuonAdamW([g for g in groups if g["params"]], ns_dtype=ns_dtype, **kwargs)
    else:
        cls, groups = torch.optim.AdamW, decay_groups([p for _, p in named], t.weight_decay)
    if device.type in ("cuda", "cpu"):
        # One pass over each parameter for the whole update (CUDA: one kernel for all of them; CPU,
        # torch >= 2.4: ~8% of a `book` step saved against the per-op loop).
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # an older torch without fused CPU Adam
            pass
    return cls(groups, **kwargs)


def decay_groups(params: Sequence[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's groups: weight decay on matrices only, not on biases and norms."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A weight matrix inside the transformer blocks (attention and feed-forward projections): what
    Muon is for. The embeddings, the output layer, biases and norms are not (Jordan et al. 2024)."""
    return p.dim() == 2 and ".blocks." in f".{name}"


def newton_schulz(g_AxB: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (U S' V^T, S' ~ 1): Muon's
    quintic Newton-Schulz iteration, as torch.optim.Muon computes it, in `dtype`."""
    a, b, c = coefficients
    x = g_AxB.to(dtype)
    tall = g_AxB.size(0) > g_AxB.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon (momentum, then the update orthogonalised by Newton-Schulz) on the param groups marked
    "muon", AdamW on the others, in one optimizer so that one state saves and resumes.

    The Muon part is torch.optim.Muon's update with Moonshot's learning-rate match
    (lr * 0.2 * sqrt(max(A, B)), so one learning rate suits both parts; a test checks the two
    agree). Written here rather than called because torch's runs Newton-Schulz in bf16 only, and
    on a CPU without fast bf16 (AVX2) that made a `fast` step ~2x as long (measured); `ns_dtype`
    picks fp32 there. The AdamW part is torch's own functional AdamW."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.bfloat16):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, muon=False)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for g in self.param_groups:
            if g["muon"] and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon's groups hold matrices only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            lr, wd = float(g["lr"]), g["weight_decay"]
            if g["muon"]:
                m = g["momentum"]
                for p in ps:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - m)
                    update = p.grad.lerp(buf, m) if g["nesterov"] else buf
                    update = newton_schulz(update, g["ns_steps"], dtype=self.ns_dtype)
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                continue
            for p in ps:
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            b1, b2 = g["betas"]
            adamw_update(
                ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps],
                [self.state[p]["exp_avg_sq"] for p in ps], [], [self.state[p]["step"] for p in ps],
                amsgrad=False, beta1=b1, beta2=b2, lr=lr, weight_decay=wd, eps=g["eps"], maximize=False)
        return loss


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
