"""The models of alignment, by composition of the GPT:

- `RewardModel`: the GPT's stack with a scalar head read at the last real token (the
  <|endoftext|> that ends a response): r(prompt, response).
- `ValuePolicy`: a GPT with a value head on the same hidden states (PPO's critic shares the
  policy's trunk) and the current rollout kept as buffers, so a checkpoint taken in the middle of
  a rollout's PPO epochs resumes on the very same rollout.
- `grow_vocab`: a GPT's embedding (and output layer) grown for words added to its tokenizer.

Shapes in names: B rows, T tokens, C width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT, ModelOutput

ROLLOUT_KEYS = ("inputs", "targets", "response_mask", "old_logp", "old_values", "advantages", "returns")


class RewardModel(nn.Module):
    """r(text): the GPT's blocks, then a linear head on the hidden state of each row's last token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gpt = GPT(cfg)
        self.head = nn.Linear(cfg.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx_BxT: torch.Tensor, last_B: torch.Tensor) -> torch.Tensor:
        """Rewards (B,): the head at position last_B of each right-padded row (causal attention
        keeps the padding after it from mattering)."""
        h_BxTxC = self.gpt(idx_BxT, return_hidden=True, return_logits=False).hidden
        assert h_BxTxC is not None
        rows_B = torch.arange(idx_BxT.shape[0], device=idx_BxT.device)
        return self.head(h_BxTxC[rows_B, last_B]).squeeze(-1).float()


@dataclass
class PolicyOutput(ModelOutput):
    values: torch.Tensor | None = None  # (B, T) the critic's estimate of the return after each token


class ValuePolicy(GPT):
    """A GPT (generation works on it unchanged) plus PPO's value head and its rollout buffers
    (rows x length, float: the checkpoint format stores floating point only)."""

    def __init__(self, cfg: ModelConfig, rollout_rows: int, rollout_length: int):
        super().__init__(cfg)
        self.value_head = nn.Linear(cfg.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.register_buffer("rollout_index", torch.full((1,), -1.0))
        for k in ROLLOUT_KEYS:
            self.register_buffer(f"rollout_{k}", torch.zeros(rollout_rows, rollout_length))

    def forward(self, idx_BxT: torch.Tensor, targets_BxT: torch.Tensor | None = None, *,
                with_values: bool = False, **kw) -> PolicyOutput:
        """GPT.forward; with_values adds the critic's values (B, T) and the logits (B, T, V)."""
        if not with_values:
            out = super().forward(idx_BxT, targets_BxT, **kw)
            return PolicyOutput(**vars(out))
        out = super().forward(idx_BxT, return_hidden=True, return_logits=True, **kw)
        assert out.hidden is not None
        values_BxT = self.value_head(out.hidden).squeeze(-1).float()
        return PolicyOutput(**{**vars(out), "values": values_BxT})


def grow_vocab(model: GPT, vocab_size: int) -> GPT:
    """Give `model` rows for token ids up to vocab_size (new words of its tokenizer): each new
    embedding starts at the mean of the old ones, a new output row (untied) at zero."""
    old_V, C = model.tok_emb.weight.shape
    if vocab_size < old_V:
        raise ValueError(f"cannot shrink a vocabulary from {old_V} to {vocab_size}")
    if vocab_size == old_V:
        return model
    w = model.tok_emb.weight.data
    emb = nn.Embedding(vocab_size, C).to(w.device, w.dtype)
    emb.weight.data = torch.cat([w, w.mean(0, keepdim=True).expand(vocab_size - old_V, C)])
    head = nn.Linear(C, vocab_size, bias=model.lm_head.bias is not None).to(w.device, w.dtype)
    if model.cfg.tie_embeddings:
        head.weight = emb.weight
    else:
        head.weight.data = torch.cat([model.lm_head.weight.data, torch.zeros(vocab_size - old_V, C, device=w.device, dtype=w.dtype)])
    if head.bias is not None:
        old_bias = model.lm_head.bias
        assert old_bias is not None
        head.bias.data = torch.cat([old_bias.data, torch.zeros(vocab_size - old_V, device=w.device, dtype=w.dtype)])
    model.tok_emb, model.lm_head = emb, head
    model.cfg.vocab_size = vocab_size
    return model
