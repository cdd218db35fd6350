"""Checkpoints: `model.safetensors` + `config.json` + `tokenizer.json` (+ `train_state.*` for resume).

Nothing here unpickles: weights and tensors are safetensors, everything else is JSON. Every file is
written to a temporary name and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT, Classifier, Encoder, ModelConfig, Seq2Seq, Seq2SeqConfig

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FORMAT_VERSION = 1

def _gpt(cfg: dict) -> torch.nn.Module:
    return GPT(ModelConfig.from_dict(cfg["model"]))


def _encoder(cfg: dict) -> torch.nn.Module:
    return Encoder(ModelConfig.from_dict(cfg["model"]))


def _classifier(cfg: dict) -> torch.nn.Module:
    c = cfg["classifier"]
    return Classifier(ModelConfig.from_dict(cfg["model"]), len(c["labels"]), c.get("pooling", "mean"))


def _seq2seq(cfg: dict) -> torch.nn.Module:
    return Seq2Seq(Seq2SeqConfig.from_dict(cfg["model"]))


# Checkpoint kind (config.json "kind") -> builder of its model from the config dict: every kind
# gptlab writes, in one table, so loading never depends on which modules were imported.
KINDS: dict[str, Callable[[dict], torch.nn.Module]] = {
    "gpt": _gpt, "encoder": _encoder, "classifier": _classifier, "seq2seq": _seq2seq,
}


# -- atomic writes ------------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with tied duplicates dropped (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue
        seen[key] = name
        out[name] = t
    return out


# -- model checkpoints ----------------------------------------------------------------------------
def save_model(out_dir: str | os.PathLike, model: torch.nn.Module, tokenizer: Tokenizer, config: dict) -> None:
    """Write weights, tokenizer and config. `config` must hold at least "kind" and "model"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / WEIGHTS, state_dict_for_save(model), metadata={"format": "pt"})
    tokenizer.save(out / TOKENIZER)
    # config.json goes last: its presence marks a complete model folder.
    atomic_write_json(out / CONFIG, {"format_version": FORMAT_VERSION, **config})


def read_config(model_dir: str | os.PathLike, make: str = "gptlab train") -> dict:
    """The folder's config.json, checked; `make`: the command that writes such a folder (for the errors)."""
    d = Path(model_dir)
    if not d.exists():
        raise UserError(f"model folder {d} does not exist: train one with `{make} --out {d}` or check the path")
    if not d.is_dir():
        raise UserError(f"{d} is a file, not a model folder: pass the folder holding config.json and model.safetensors")
    p = d / CONFIG
    if not p.exists():
        raise UserError(f"{d} holds no {CONFIG}, so it is not a gptlab model folder: train one with `{make} --out {d}`")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): restore it or re-train") from None
    if not isinstance(cfg, dict) or "kind" not in cfg or "model" not in cfg:
        raise UserError(f"{p} is not a gptlab config (no 'kind'/'model' keys): is this folder from another tool?")
    return cfg


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: the model folder is incomplete; re-train or copy it again")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is truncated or not a safetensors file ({str(e)[:80]}): re-train or copy it again") from None
    expected = state_dict_for_save(model)  # tied weights appear once, as they were saved
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        raise UserError(f"{path} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                        "it belongs to another model; re-train or restore the matching config.json")
    for n, t in tensors.items():
        if t.shape != expected[n].shape:
            raise UserError(f"{path}: tensor {n} has shape {tuple(t.shape)}, config.json says {tuple(expected[n].shape)}: "
                            "weights and config come from different models")
    model.load_state_dict(tensors, strict=False)


def build_model(cfg: dict) -> torch.nn.Module:
    kind = cfg["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r} in config.json: this gptlab knows {sorted(KINDS)}; upgrade gptlab?")
    try:
        return KINDS[kind](cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.json describes an impossible model ({e}): fix or re-create it") from None


def load_checkpoint(model_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Return (model in eval mode, tokenizer, config dict) from a model folder."""
    d = Path(model_dir)
    cfg = read_config(d)
    if not (d / TOKENIZER).exists():
        raise UserError(f"{d / TOKENIZER} is missing: the model folder is incomplete; re-train or copy it again")
    tok = Tokenizer.load(d / TOKENIZER)
    model = build_model(cfg)
    load_weights(model, d / WEIGHTS)
    model.to(device).eval()
    return model, tok, cfg
