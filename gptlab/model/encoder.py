"""The encoder-only transformer (BERT): the GPT's blocks with `causal=False`.

Every token sees every other token of its sentence, left and right, so the model cannot be trained
to predict the next word; it is pretrained instead by masked-language modelling (predict the words
hidden behind [MASK]) and then fine-tuned with a small head to classify whole sentences.

Shapes in names: B batch, T tokens, C model width, V vocabulary, K classes, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT, ModelOutput

POOLINGS = ("mean", "cls", "meanmax")


def bert_tiny(vocab_size: int = 1000) -> ModelConfig:
    """For tests: trains in seconds."""
    return ModelConfig(vocab_size=vocab_size, context_length=64, d_model=32, n_layer=2, n_head=2,
                       d_ff=64, dropout=0.0, norm="pre", activation="gelu", tie_embeddings=True)


def bert_small(vocab_size: int = 10000) -> ModelConfig:
    """CPU-sized, for wine descriptions (up to 128 tokens)."""
    return ModelConfig(vocab_size=vocab_size, context_length=128, d_model=128, n_layer=4, n_head=4,
                       d_ff=512, dropout=0.1, norm="pre", activation="gelu", tie_embeddings=True)


def bert_base(vocab_size: int = 30522) -> ModelConfig:
    """BERT-base's shape (110M with its vocabulary), for GPU users."""
    return ModelConfig(vocab_size=vocab_size, context_length=512, d_model=768, n_layer=12, n_head=12,
                       d_ff=3072, dropout=0.1, norm="post", ln_eps=1e-12, activation="gelu",
                       tie_embeddings=True, final_norm=False)


ENCODER_PRESETS = {"tiny": bert_tiny, "small": bert_small, "base": bert_base}


# The encoder returns the GPT's output record: logits (B, T, V) when asked, loss / nll_sum /
# n_tokens over the masked positions, hidden (B, T, C) after the final norm, attn per layer.
EncoderOutput = ModelOutput


@dataclass
class ClassifierOutput:
    logits: torch.Tensor                 # (B, K)
    loss: torch.Tensor | None = None     # mean cross-entropy, when labels are given
    pooled: torch.Tensor | None = None   # (B, C) the sentence vector the head reads
    attn: list[torch.Tensor] = field(default_factory=list)


class Encoder(GPT):
    """The GPT's stack with bidirectional blocks; its output layer predicts masked tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, causal=False)

    def new_cache(self, *args, **kwargs):
        raise TypeError("an encoder sees the whole sentence at once: it has no incremental decoding cache")

    def encode(self, idx_BxT: torch.Tensor, key_mask_BxT: torch.Tensor | None = None,
               return_attn: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Contextual vectors (B, T, C) after the final norm; key_mask_BxT True on real tokens."""
        out = super().forward(idx_BxT, key_mask_BxS=key_mask_BxT, return_attn=return_attn,
                              return_hidden=True, return_logits=False)
        return cast(torch.Tensor, out.hidden), out.attn  # return_hidden=True: always set

    # Not GPT.forward's signature, on purpose (so mypy's override check is silenced): the mask is
    # over the sentence's own tokens (key_mask_BxT), and there are no positions, cache or last-only
    # decoding to offer (see new_cache). Nothing calls an Encoder through GPT.forward's keywords.
    def forward(self, idx_BxT: torch.Tensor, targets_BxT: torch.Tensor | None = None, *,  # type: ignore[override]
                key_mask_BxT: torch.Tensor | None = None, return_attn: bool = False,
                return_logits: bool | None = None) -> EncoderOutput:
        """targets_BxT: the original token at masked positions, IGNORE_INDEX everywhere else."""
        return super().forward(idx_BxT, targets_BxT, key_mask_BxS=key_mask_BxT, return_attn=return_attn,
                               return_logits=return_logits, return_hidden=True)


def pooled_width(d_model: int, pooling: str) -> int:
    return 2 * d_model if pooling == "meanmax" else d_model


def pool(h_BxTxC: torch.Tensor, key_mask_BxT: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per sentence: the first ([CLS]) position, the mean over real tokens, or (meanmax)
    that mean and each feature's maximum over real tokens side by side (B, 2C): a maximum keeps a
    feature that fires on one telling word ("riesling") at full strength, where the mean dilutes it
    by the sentence's length."""
    if pooling == "cls":
        return h_BxTxC[:, 0]
    if key_mask_BxT is None:
        mean_BxC = h_BxTxC.mean(dim=1)
        return torch.cat([mean_BxC, h_BxTxC.amax(dim=1)], dim=-1) if pooling == "meanmax" else mean_BxC
    w_BxTx1 = key_mask_BxT[..., None].to(h_BxTxC.dtype)
    mean_BxC = (h_BxTxC * w_BxTx1).sum(dim=1) / w_BxTx1.sum(dim=1).clamp_min(1.0)
    if pooling != "meanmax":
        return mean_BxC
    max_BxC = h_BxTxC.masked_fill(~key_mask_BxT[..., None].bool(), float("-inf")).amax(dim=1)
    return torch.cat([mean_BxC, max_BxC], dim=-1)


class Classifier(nn.Module):
    """An Encoder (its weights loadable from a masked-LM checkpoint) + a pooled linear head."""

    def __init__(self, cfg: ModelConfig, n_classes: int, pooling: str = "mean"):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes (got {n_classes})")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {pooling!r})")
        self.encoder = Encoder(cfg)
        self.pooling = pooling
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(pooled_width(cfg.d_model, pooling), n_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self) -> ModelConfig:
        return self.encoder.cfg

    def forward(self, idx_BxT: torch.Tensor, labels_B: torch.Tensor | None = None, *,
                key_mask_BxT: torch.Tensor | None = None, return_attn: bool = False) -> ClassifierOutput:
        h_BxTxC, attn = self.encoder.encode(idx_BxT, key_mask_BxT, return_attn)
        pooled_BxC = pool(h_BxTxC, key_mask_BxT, self.pooling)
        logits_BxK = self.head(self.drop(pooled_BxC))
        loss = F.cross_entropy(logits_BxK.float(), labels_B) if labels_B is not None else None
        return ClassifierOutput(logits=logits_BxK, loss=loss, pooled=pooled_BxC, attn=attn)
