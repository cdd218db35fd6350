"""The decoder-only transformer (GPT): embeddings, causal blocks, output layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.config import ModelConfig
from gptlab.model.layers import Block, KVCache, init_weights, linear_fn, norm_fn
from gptlab.model.linear_ce import linear_cross_entropy

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None      # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None        # mean NLL over target tokens that are not IGNORE_INDEX
    nll_sum: torch.Tensor | None = None     # summed NLL: exact gradient accumulation divides by the global count
    # With weights_BxT: the same targets' NLL each counted once (not differentiable), else nll_sum.
    nll_plain_sum: torch.Tensor | None = None
    n_tokens: int | torch.Tensor = 0        # target tokens counted in nll_sum (a 0-d tensor off the CPU: no host sync)
    attn: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, T, S), when asked
    hidden: torch.Tensor | None = None      # (B, T, C) after the final norm, when asked
    # The last position's residual streams (B, C), when asked: the embeddings, then each block's output.
    streams: list[torch.Tensor] = field(default_factory=list)


def token_nll(hidden_NxC: torch.Tensor, head: nn.Linear, targets_N: torch.Tensor,
              chunk: int = 0, ignore_index: int | None = None, weights_N: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy (fp32) of the output layer over N rows: `F.cross_entropy(head(h).float(),
    t, reduction="sum")` up to float rounding, fused and computed in row chunks (see linear_ce).

    `ignore_index`: rows whose target equals it count nothing; for callers that keep padding rows
    to avoid a host sync on a GPU (on the CPU, select the rows first: it saves their compute).
    The (N, V) logits never exist whole: 82k rows x 10k vocab would be 3.3 GB in fp32.
    """
    return token_nlls(hidden_NxC, head, targets_N, chunk, ignore_index, weights_N)[0]


def token_nlls(hidden_NxC: torch.Tensor, head: nn.Linear, targets_N: torch.Tensor, chunk: int = 0,
               ignore_index: int | None = None, weights_N: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll` with each row counted `weights_N` times, and the plain sum (each row once, not
    differentiable) from the same pass."""
    return linear_cross_entropy(hidden_NxC, head.weight, head.bias, targets_N, chunk, ignore_index, weights_N)


class GPT(nn.Module):
    """Token + position embeddings, blocks, final norm, output layer over the vocabulary.

    `causal=False` makes the same stack bidirectional: the encoder-only model (model/encoder.py)
    is this class with that one change and a masked-LM objective.
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.causal = causal
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, causal=causal) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias and cfg.head_bias and not cfg.tie_embeddings)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        init_weights(self, cfg.n_layer)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        cfg = self.cfg
        p = self.tok_emb.weight
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len or cfg.context_length, cfg.head_size,
                       device=device or p.device, dtype=dtype or p.dtype)

    def decode(self, idx_B: torch.Tensor, pos_B: torch.Tensor, cache: KVCache,
               key_mask_BxS: torch.Tensor | None = None, *, attn_out: list[torch.Tensor] | None = None,
               streams_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, V) for one new token per row after the cache: the same as
        `forward(idx_B[:, None], pos_BxT=pos_B[:, None], cache=cache, last_only=True).logits[:, 0]`.
        attn_out / streams_out: lists that get, as forward's `attn` and `streams` hold them, each
        layer's attention (B, H, 1, S) and the residual streams (B, C): an explanation's capture.
        key_mask_BxS: True for real tokens among all cache.length + 1 keys (left-padded batches).

        One call builds its functions first: a loop of steps takes `decoder()` once and calls that.
        """
        return self.decoder()(idx_B, pos_B, cache, key_mask_BxS, attn_out=attn_out, streams_out=streams_out)

    def decoder(self) -> Callable[..., torch.Tensor]:
        """`decode` as a function with every module's tensors looked up now (layers.linear_fn):
        build it when a generation starts and call it once per step.

        Sampling one text at a time, a step's arithmetic is tiny and its cost is the operators'
        calls and Python's lookups; this path works on (B, C) rows and skips forward's general cases
        (targets, the output object): 1.17x per step of the course's model over the modules' own
        decode methods, which were 6-9% faster than forward (benchmarks/RESULTS.md). The token
        embedding alone goes through __call__, so a forward hook on it sees (or holds) every
        decoding step (the server's deadline check does); hooks on the other modules see forward()
        only.
        """
        tok_emb, pos_W = self.tok_emb, self.pos_emb.weight
        # A ModuleList yields plain Modules to the type checker; these are the Blocks built in __init__.
        blocks = [block.decoder(i) for i, block in enumerate(cast("Iterable[Block]", self.blocks))]
        ln_f, head = norm_fn(self.ln_f), linear_fn(self.lm_head)

        def decode(idx_B: torch.Tensor, pos_B: torch.Tensor, cache: KVCache,
                   key_mask_BxS: torch.Tensor | None = None, *, attn_out: list[torch.Tensor] | None = None,
                   streams_out: list[torch.Tensor] | None = None) -> torch.Tensor:
            x_BxC = tok_emb(idx_B) + F.embedding(pos_B, pos_W)
            if streams_out is not None:
                streams_out.append(x_BxC)
            for block in blocks:
                x_BxC = block(x_BxC, cache, key_mask_BxS, attn_out)
                if streams_out is not None:
                    streams_out.append(x_BxC)
            cache.length += 1
            return head(x_BxC if ln_f is None else ln_f(x_BxC))
        return decode

    def forward(self, idx_BxT: torch.Tensor, targets_BxT: torch.Tensor | None = None, *,
                pos_BxT: torch.Tensor | None = None, key_mask_BxS: torch.Tensor | None = None,
                cache: KVCache | None = None, return_attn: bool = False, last_only: bool = False,
                return_logits: bool | None = None, return_hidden: bool = False,
                return_streams: bool = False, weights_BxT: torch.Tensor | None = None) -> ModelOutput:
        """Run the model.

        targets_BxT: next-token ids, IGNORE_INDEX where no loss is wanted (padding). With targets,
        the output layer runs only on the counted rows (no compute on padding) and logits are not
        returned unless return_logits=True; return_logits=False skips the output layer in any case.
        pos_BxT: position ids (default: 0.., or after the cache); left-padded batches pass their own.
        key_mask_BxS: True for real tokens among all keys (cached + new), for left-padded batches.
        last_only: compute logits for the last position only (generation).
        return_streams: keep the last position's residual stream before the blocks and after each
        (an explanation's logit lens reads them).
        weights_BxT: with targets, each target's cross-entropy counts that many times in nll_sum
        (n_tokens still counts targets).
        """
        B, T = idx_BxT.shape
        offset = cache.length if cache is not None else 0
        if pos_BxT is None:
            if offset + T > self.cfg.context_length:
                raise ValueError(f"sequence of {offset + T} tokens exceeds context_length {self.cfg.context_length}")
            pos_BxT = torch.arange(offset, offset + T, device=idx_BxT.device)[None]
        x = self.tok_emb(idx_BxT) + self.pos_emb(pos_BxT)
        out = ModelOutput()
        if return_streams:
            out.streams.append(x[:, -1])
        for i, block in enumerate(self.blocks):
            x, attn, _ = block(x, key_mask_BxS=key_mask_BxS, cache=cache, layer=i, return_attn=return_attn)
            if return_attn:
                out.attn.append(attn)
            if return_streams:
                out.streams.append(x[:, -1])
        if cache is not None:
            cache.length += T
        h_BxTxC = self.ln_f(x)
        if return_hidden:
            out.hidden = h_BxTxC
        if targets_BxT is not None:
            keep_BxT = targets_BxT != IGNORE_INDEX
            if h_BxTxC.device.type == "cpu":
                # Drop padding rows before the output layer: no compute on them.
                out.n_tokens = int(keep_BxT.sum())
                out.nll_sum, out.nll_plain_sum = token_nlls(
                    h_BxTxC[keep_BxT], self.lm_head, targets_BxT[keep_BxT],
                    weights_N=None if weights_BxT is None else weights_BxT[keep_BxT])
                out.loss = out.nll_sum / max(out.n_tokens, 1)
            else:
                # On an accelerator, counting or selecting rows would wait for the device (a host
                # sync every step); padding rows stay in and are ignored, and the count is a tensor.
                n_tokens = keep_BxT.sum()
                out.n_tokens = n_tokens
                out.nll_sum, out.nll_plain_sum = token_nlls(
                    h_BxTxC.flatten(0, 1), self.lm_head, targets_BxT.flatten(), ignore_index=IGNORE_INDEX,
                    weights_N=None if weights_BxT is None else weights_BxT.flatten())
                out.loss = out.nll_sum / n_tokens.clamp(min=1)
            if not return_logits:
                return out
        if return_logits is False:  # only the hidden states (or attention) were wanted
            return out
        if last_only:
            h_BxTxC = h_BxTxC[:, -1:]
        out.logits = self.lm_head(h_BxTxC)
        return out
