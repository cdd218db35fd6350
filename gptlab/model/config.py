"""Model configuration: one typed dataclass, presets as plain functions."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

_Config = TypeVar("_Config", bound="ModelConfig")

# Loading refuses a model with more parameters than this unless asked (`--max-params`,
# `gptlab.load(..., max_params=)`): 2e9 fp32 parameters are 8 GB, more than a laptop should be
# asked to allocate because a config.json says so.
MAX_PARAMS = 2_000_000_000

# The maxima are far beyond any model gptlab trains (GPT-2 XL: d_model 1600, 48 layers, context
# 1024, vocab 50k); they stop a typo or a hostile config.json before torch tries to allocate it.
MAX_VOCAB, MAX_CONTEXT, MAX_WIDTH, MAX_LAYERS = 2**24, 2**20, 2**16, 1024


def setting(default: Any, help: str, **limits: Any) -> Any:
    """A field as `gptlab.settings.setting` declares one (help, min/max/below, choices): the CLI and
    `settings.check` read them from its metadata, `validate` below for a config made in Python or
    read from a file. Spelled out here because the model package imports nothing but torch."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class ModelConfig:
    vocab_size: int = setting(10000, "vocabulary size (set from the tokenizer when training)", min=2, max=MAX_VOCAB)
    # Its minimum (2) is validate's, whose message says why.
    context_length: int = setting(80, "maximum tokens the model sees at once", max=MAX_CONTEXT)
    d_model: int = setting(256, "width of the residual stream", min=1, max=MAX_WIDTH)
    n_layer: int = setting(4, "number of transformer blocks", min=1, max=MAX_LAYERS)
    n_head: int = setting(4, "attention heads per block", min=1, max=MAX_WIDTH)
    head_dim: int = setting(0, "width of each head; 0 means d_model // n_head", min=0, max=MAX_WIDTH)
    d_ff: int = setting(1024, "hidden width of the feed-forward layer", min=1, max=16 * MAX_WIDTH)
    dropout: float = setting(0.1, "dropout after attention and feed-forward", min=0, below=1)
    attn_dropout: float = setting(-1.0, "dropout on the attention weights (GPT-2 has it, the notebook's Keras attention has none); -1 = the same as dropout", min=-1, below=1)
    attn_impl: str = setting("auto", "attention kernel: auto (explicit matmuls when training in bf16 on a CPU, where they are ~2x faster; the fused kernel elsewhere), sdpa (always fused) or explicit", choices=("auto", "sdpa", "explicit"))
    norm: str = setting("pre", "LayerNorm placement: pre (GPT-2) or post (the notebook, Vaswani)", choices=("pre", "post"))
    ln_eps: float = setting(1e-5, "LayerNorm epsilon", min=0, below=1)
    activation: str = setting("gelu", "feed-forward activation: gelu or relu", choices=("gelu", "relu"))
    tie_embeddings: bool = setting(True, "share the token embedding with the output layer")
    head_bias: bool = setting(True, "a bias on the output layer when it is not tied and --bias is on (the notebook's Keras Dense has one, GPT-2's untied heads none)")
    bias: bool = setting(True, "biases in linear layers")
    final_norm: bool = setting(True, "LayerNorm before the output layer (GPT-2)")

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
        if not (self.attn_dropout == -1.0 or 0.0 <= self.attn_dropout < 1.0):
            raise ValueError(f"attn_dropout must be in [0, 1), or -1 for the same as dropout (got {self.attn_dropout})")
        for f in fields(self):  # the declared ranges and choices, maxima included
            problem = _limit_error(getattr(self, f.name), f.metadata)
            if problem:
                raise ValueError(f"{f.name} must be {problem} (got {getattr(self, f.name)!r})")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[_Config], d: dict) -> _Config:
        """The config a dict (config.json's "model") describes; ValueError naming a key that is
        unknown or of the wrong type (sizes are checked by `validate`)."""
        if not isinstance(d, dict):
            raise ValueError(f"model must be a JSON object of settings (got {type(d).__name__})")
        types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in fields(cls)}
        unknown = set(d) - set(types)
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**{k: _typed(k, v, types[k]) for k, v in d.items()})


def _limit_error(v: Any, m: Any) -> str | None:
    """What `v` must be when it breaks the limits in a field's metadata `m`, else None."""
    if m.get("choices") is not None and v not in m["choices"]:
        return f"one of {', '.join(map(str, m['choices']))}"
    lo, hi, lt = m.get("min"), m.get("max"), m.get("below")
    if v != v or (lo is not None and v < lo) or (hi is not None and v > hi) or (lt is not None and v >= lt):
        return " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}",
                                        lt is not None and f"< {lt}") if s)
    return None


# A JSON value accepted for a field of each type: JSON has no int/float distinction for 2.0, and
# True is an int to Python, so both are spelled out.
_JSON_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}


def _typed(name: str, value: Any, type_name: str) -> Any:
    if not _JSON_TYPES.get(type_name, lambda v: True)(value):
        raise ValueError(f"model.{name} must be {'a number' if type_name == 'float' else type_name} (got {value!r})")
    return float(value) if type_name == "float" else value


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


def fast(vocab_size: int = 10000) -> ModelConfig:
    """The best held-out loss for the minutes of a CPU (measured in benchmarks/RESULTS.md): GPT-2
    shaped but narrow and shallow, so a step is cheap and the model sees the corpus many times.
    The output layer is its own, not the input embedding: at 128 wide, a tied layer left ~2% of a
    sample's probability on words that cannot come next in the template (a description word where
    the variety goes), an untied one ~1.3%, for the same compute. Without a bias, as GPT-2's
    untied heads, so it still exports to the Hugging Face GPT-2 format."""
    return ModelConfig(
        vocab_size=vocab_size, context_length=80, d_model=128, n_layer=2, n_head=4, head_dim=0,
        d_ff=512, dropout=0.0, norm="pre", ln_eps=1e-5, activation="gelu",
        tie_embeddings=False, head_bias=False, bias=True, final_norm=True,
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


PRESETS = {"book": book, "small": small, "fast": fast, "tiny": tiny, "gpt2": gpt2}
