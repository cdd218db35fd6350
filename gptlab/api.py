"""The notebook-facing API: `gptlab.load(path)` returns a model with its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .tokenizer import Tokenizer


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class LoadedModel:
    """A trained model, its tokenizer and its config, ready for a notebook or a server."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: dict, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.path = path

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"<gptlab {self.kind} model from {self.path}: {n:,} parameters, vocab {self.tokenizer.vocab_size}>"


def load(path: str | os.PathLike, device: str | None = None) -> LoadedModel:
    """Load a gptlab model folder (config.json + model.safetensors + tokenizer.json)."""
    model, tok, cfg = load_checkpoint(path, device or default_device())
    return LoadedModel(model, tok, cfg, Path(path))
