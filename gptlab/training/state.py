"""The training state saved beside a model for exact resume: optimizer, RNG, step, history and the
loop's extra tensors (weight average, best weights). No pickle: tensors in safetensors, the rest JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoint import atomic_save_tensors, atomic_write_json
from gptlab.errors import UserError

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


def save_train_state(out: Path, opt: torch.optim.Optimizer, step: int, extra: dict[str, Any],
                     extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    sd = opt.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    for k, v in (extra_tensors or {}).items():
        tensors[f"x.{k}"] = v
    atomic_save_tensors(out / STATE_TENSORS, tensors, metadata={"step": str(step)})
    atomic_write_json(out / STATE_JSON, {"step": step, "param_groups": sd["param_groups"],
                                         "opt_scalars": scalars, **extra})


def load_train_state(out: Path, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimizer and the RNG; returns (the JSON part, the extra tensors by name)."""
    from safetensors.torch import load_file
    try:
        meta = json.loads((out / STATE_JSON).read_text())
        tensors = load_file(str(out / STATE_TENSORS))
    except Exception as e:  # noqa: BLE001 - any corruption means the same thing to the user
        raise UserError(f"--resume: the training state in {out} is unreadable ({str(e)[:80]}): start a new run") from None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, d in meta.get("opt_scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta, {k[2:]: v for k, v in tensors.items() if k.startswith("x.")}
