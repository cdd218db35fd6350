"""The training state saved beside a model for exact resume: optimizer, RNG, step, history and the
loop's extra tensors (weight average, best weights). No pickle: tensors in safetensors, the rest JSON.

A run's checkpoints are units under OUT/checkpoints/ (model + tokenizer + config + this state, a
manifest written last, the folder renamed into place: see gptlab/checkpoint/unit.py); OUT's own
model files are copies of the newest one. Resume verifies the newest and falls back to an older.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoint import CONFIG, TOKENIZER, WEIGHTS, atomic_save_tensors, atomic_write_json
from gptlab.checkpoint.unit import (
    copy_files,
    newest_intact,
    prune,
    read_manifest,
    recover,
    remove_temporaries,
    unit_name,
    units,
    write_unit,
)
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


# -- the checkpoints of a run: OUT/checkpoints/step-N, each one unit (gptlab.checkpoint.unit) ------
CHECKPOINTS = "checkpoints"
# What a checkpoint must hold to resume from; what is copied to OUT for `gptlab.load`, export and
# serve, config.json last as its presence marks a complete model folder (train_state.json goes
# too: it is how other tools, e.g. `gptlab scale`, see a resumable run and read its history).
REQUIRED = (WEIGHTS, TOKENIZER, CONFIG, STATE_TENSORS, STATE_JSON)
PUBLISHED = (TOKENIZER, WEIGHTS, STATE_JSON, CONFIG)


def has_checkpoints(out: Path) -> bool:
    return bool(units(out / CHECKPOINTS))


def recover_checkpoints(out: Path) -> None:
    """Finish or delete what a killed run left half-written (one process only: it renames)."""
    recover(out / CHECKPOINTS, REQUIRED)
    remove_temporaries(out, (*PUBLISHED, STATE_TENSORS))


def resume_point(out: Path, main: bool = True) -> Path | None:
    """The folder a resumed run continues from: the newest checkpoint that verifies, or OUT itself
    for a run saved before checkpoints were units. Newer checkpoints that fail verification are
    removed (main=True; they would otherwise be taken for the run's state when it reaches their
    step again), with one line on stderr."""
    unit, damaged = newest_intact(out / CHECKPOINTS, REQUIRED)
    if damaged and main:
        for u, _ in damaged:
            shutil.rmtree(u.path, ignore_errors=True)
        what = "; ".join(f"{CHECKPOINTS}/{u.name}: {why}" for u, why in damaged)
        then = f"resuming from {CHECKPOINTS}/{unit.name}" if unit else "no older checkpoint to resume from"
        print(f"--resume: removed a damaged checkpoint ({what}); {then}", file=sys.stderr)
    if unit is not None:
        return unit.path
    legacy = all((out / n).exists() for n in (CONFIG, STATE_JSON, STATE_TENSORS))
    return out if legacy and not damaged else None


def start_fresh(out: Path) -> None:
    """Drop the resume state of an earlier run in OUT (--overwrite): a new run's checkpoints must
    never be mixed with it. The earlier model files stay until the new run replaces them."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    for name in (STATE_JSON, STATE_TENSORS):
        (out / name).unlink(missing_ok=True)
    remove_temporaries(out, (*PUBLISHED, STATE_TENSORS))


def save_checkpoint(out: Path, step: int, fill: Callable[[Path], None], final: bool, keep: int) -> Path:
    """Write the checkpoint of `step` as one unit (fill(folder) writes its files), copy its model
    to OUT, and keep the newest `keep` checkpoints. A checkpoint of the same step and kind already
    there is the same state (saved before an interruption, or the one resumed): it is reused."""
    root = out / CHECKPOINTS
    existing = read_manifest(root / unit_name(step))
    if existing is not None and bool(existing.get("final")) == final:
        folder = root / unit_name(step)
    else:
        folder = write_unit(root, step, fill, {"final": final}).path
    publish(folder, out)
    prune(root, keep)
    return folder


def publish(folder: Path, out: Path) -> None:
    """OUT's model files from a complete checkpoint (a run of the old layout is converted here)."""
    copy_files(folder, out, PUBLISHED)
    (out / STATE_TENSORS).unlink(missing_ok=True)
