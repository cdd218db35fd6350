"""Model configuration: one typed dataclass, presets as plain functions."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TypeVar

_Config = TypeVar("_Config", bound="ModelConfig")


@dataclass
class ModelConfig:
    vocab_size: int = field(default=10000, metadata={"help": "vocabulary size (set from the tokenizer when training)"})
    context_length: int = field(default=80, metadata={"help": "maximum tokens the model sees at once"})
    d_model: int = field(default=256, metadata={"help": "width of the residual stream"})
    n_layer: int = field(default=4, metadata={"help": "number of transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    head_dim: int = field(default=0, metadata={"help": "width of each head; 0 means d_model // n_head"})
    d_ff: int = field(default=1024, metadata={"help": "hidden width of the feed-forward layer"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after attention and feed-forward"})
    attn_dropout: float = field(default=-1.0, metadata={"help": "dropout on the attention weights (GPT-2 has it, the notebook's Keras attention has none); -1 = the same as dropout"})
    attn_impl: str = field(default="auto", metadata={"help": "attention kernel: auto (explicit matmuls when training in bf16 on a CPU, where they are ~2x faster; the fused kernel elsewhere), sdpa (always fused) or explicit"})
    norm: str = field(default="pre", metadata={"help": "LayerNorm placement: pre (GPT-2) or post (the notebook, Vaswani)"})
    ln_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon"})
    activation: str = field(default="gelu", metadata={"help": "feed-forward activation: gelu or relu"})
    tie_embeddings: bool = field(default=True, metadata={"help": "share the token embedding with the output layer"})
    bias: bool = field(default=True, metadata={"help": "biases in linear layers"})
    final_norm: bool = field(default=True, metadata={"help": "LayerNorm before the output layer (GPT-2)"})

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // max(self.n_head, 1)

    def validate(self) -> None:
        """Raise ValueError naming the bad field and a fix (the CLI turns it into a one-line error)."""
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (got {self.vocab_size})")
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (got {self.context_length}): a model needs at least one token to predict the next")
        for name in ("d_model", "n_layer", "n_head", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.head_dim == 0 and self.d_model % self.n_head:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by n_head {self.n_head}: "
                f"pick n_head from {[h for h in range(1, 17) if self.d_model % h == 0]} or set head_dim"
            )
        if self.head_dim < 0:
            raise ValueError(f"head_dim must be >= 0 (got {self.head_dim})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        if not (self.attn_dropout == -1.0 or 0.0 <= self.attn_dropout < 1.0):
            raise ValueError(f"attn_dropout must be in [0, 1), or -1 for the same as dropout (got {self.attn_dropout})")
        if self.attn_impl not in ("auto", "sdpa", "explicit"):
            raise ValueError(f"attn_impl must be auto, sdpa or explicit (got {self.attn_impl!r})")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post' (got {self.norm!r})")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu' (got {self.activation!r})")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[_Config], d: dict) -> _Config:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


def book(vocab_size: int = 10000) -> ModelConfig:
    """The course notebook's Keras model, exactly: 1 post-LN block, 2 heads of key_dim 256.

    With the 10k vocabulary it has 5,809,168 parameters, as Keras reports.
    """
    return ModelConfig(
        vocab_size=vocab_size, context_length=80, d_model=256, n_layer=1, n_head=2, head_dim=256,
        d_ff=256, dropout=0.1, attn_dropout=0.0, norm="post", ln_eps=1e-6, activation="relu",
        tie_embeddings=False, bias=True, final_norm=False,
    )


def small(vocab_size: int = 10000) -> ModelConfig:
    """gptlab's default: GPT-2 shaped (pre-LN, GELU, final LayerNorm, tied output), CPU-sized."""
    return ModelConfig(
        vocab_size=vocab_size, context_length=80, d_model=256, n_layer=4, n_head=4, head_dim=0,
        d_ff=1024, dropout=0.1, norm="pre", ln_eps=1e-5, activation="gelu",
        tie_embeddings=True, bias=True, final_norm=True,
    )


def tiny(vocab_size: int = 10000) -> ModelConfig:
    """For tests and quick tries: trains in seconds."""
    return ModelConfig(
        vocab_size=vocab_size, context_length=32, d_model=32, n_layer=2, n_head=2, head_dim=0,
        d_ff=64, dropout=0.0, norm="pre", ln_eps=1e-5, activation="gelu",
        tie_embeddings=True, bias=True, final_norm=True,
    )


def gpt2(vocab_size: int = 50257) -> ModelConfig:
    """GPT-2 small (124M) shape, for GPU users."""
    return ModelConfig(
        vocab_size=vocab_size, context_length=1024, d_model=768, n_layer=12, n_head=12, head_dim=0,
        d_ff=3072, dropout=0.0, norm="pre", ln_eps=1e-5, activation="gelu",
        tie_embeddings=True, bias=True, final_norm=True,
    )


PRESETS = {"book": book, "small": small, "tiny": tiny, "gpt2": gpt2}
