"""The decoder-only transformer (GPT): embeddings, causal blocks, output layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import Block, KVCache

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None      # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None        # mean NLL over target tokens that are not IGNORE_INDEX
    nll_sum: torch.Tensor | None = None     # summed NLL: exact gradient accumulation divides by the global count
    n_tokens: int | torch.Tensor = 0        # target tokens counted in nll_sum (a 0-d tensor off the CPU: no host sync)
    attn: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, T, S), when asked
    hidden: torch.Tensor | None = None      # (B, T, C) after the final norm, when asked


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast gives matmuls on this device type, or None when autocast is off."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class _LinearCrossEntropy(torch.autograd.Function):
    """Output layer + summed cross-entropy, with the gradient computed during the forward pass.

    Row chunk by row chunk: logits in the compute dtype, softmax and loss in fp32, and at once the
    gradient of the summed loss w.r.t. the logits (softmax - one_hot, in the compute dtype), from
    which the gradients of the hidden rows, weight and bias follow. The fp32 (N, V) logits never
    exist whole, and the separate log_softmax / nll / backward passes over them are gone; backward
    only scales the stored gradients by the incoming scalar. On the CPU the weight gradient is one
    matmul over all rows at the end (one fp32 conversion instead of one per chunk); on a GPU it is
    accumulated per chunk so the (N, V) gradient never exists whole either.
    """

    @staticmethod
    def forward(ctx, hidden_NxC, weight_VxC, bias_V, targets_N, chunk: int, dtype: torch.dtype,
                masked: bool, ignore_index: int):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_grad = need_h or need_w or need_b
        N, V = hidden_NxC.shape[0], weight_VxC.shape[0]
        w_VxC = weight_VxC.to(dtype)
        b_V = bias_V.to(dtype) if bias_V is not None else None
        h_NxC = hidden_NxC.to(dtype)
        per_chunk_w = hidden_NxC.device.type != "cpu"
        total = hidden_NxC.new_zeros((), dtype=torch.float32)
        grad_h = torch.empty_like(hidden_NxC) if need_h else None
        grad_w = torch.zeros_like(weight_VxC, dtype=torch.float32) if need_w and per_chunk_w else None
        grad_b = torch.zeros_like(bias_V, dtype=torch.float32) if need_b else None
        g_NxV = h_NxC.new_empty((N, V)) if need_w and not per_chunk_w else None
        for i in range(0, N, chunk):
            h_nxC = h_NxC[i:i + chunk]
            t_n = targets_N[i:i + chunk]
            if masked:  # rows to ignore stay in (no host sync to drop them) and get zero loss and gradient
                valid_n = t_n != ignore_index
                t_n = torch.where(valid_n, t_n, torch.zeros_like(t_n))
            x_nxV = F.linear(h_nxC, w_VxC, b_V).float()
            x_t_n1 = x_nxV.gather(1, t_n[:, None])
            m_n1 = x_nxV.amax(dim=-1, keepdim=True)
            e_nxV = x_nxV.sub_(m_n1).exp_()  # in place: the fp32 chunk is the only big buffer
            sum_n1 = e_nxV.sum(dim=-1, keepdim=True)
            nll_n = (m_n1 + sum_n1.log() - x_t_n1)[:, 0]
            total += (nll_n * valid_n).sum() if masked else nll_n.sum()
            if not need_grad:
                continue
            # d(sum of NLL)/d(logits) = softmax - one_hot(target) = (e - sum * one_hot) / sum, made
            # in fp32 and normalised, masked and cast to the compute dtype in one pass.
            e_nxV.scatter_add_(1, t_n[:, None], -sum_n1)
            scale_n1 = sum_n1.reciprocal_()
            if masked:
                scale_n1 *= valid_n[:, None]
            g_nxV = g_NxV[i:i + chunk] if g_NxV is not None else h_nxC.new_empty(e_nxV.shape)
            torch.mul(e_nxV, scale_n1, out=g_nxV)
            if need_b:
                grad_b += g_nxV.sum(0, dtype=torch.float32)
            if need_h:
                grad_h[i:i + chunk] = g_nxV @ w_VxC
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(g_nxV.t(), h_nxC)
                else:
                    grad_w += (g_nxV.t() @ h_nxC).float()
        if need_w and g_NxV is not None:
            grad_w = (g_NxV.t() @ h_NxC).to(weight_VxC.dtype)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.has = (need_h, need_w, need_b)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_total if need else None for need in ctx.has]
        return (*grads, None, None, None, None, None)


def token_nll(hidden_NxC: torch.Tensor, head: nn.Linear, targets_N: torch.Tensor,
              chunk: int = 0, ignore_index: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of the output layer over N rows (fp32), fused and computed in row chunks.

    `ignore_index`: rows whose target equals it count nothing (for callers that keep padding rows
    to avoid a host sync on the GPU; on the CPU select the rows first, it saves their compute).
    Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as
    `F.cross_entropy(head(h).float(), t)` would; the result equals that up to float rounding.
    Chunking keeps the (N, V) logits from existing all at once: 82k rows x 10k vocab would be
    3.3 GB in fp32 on a GPU at batch 1024; on a CPU a smaller chunk stays in cache.
    """
    dev = hidden_NxC.device.type
    dtype = _autocast_dtype(dev) or hidden_NxC.dtype
    if not chunk:
        chunk = 8192 if dev == "cuda" else max(256, 2 ** 21 // head.out_features)
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(hidden_NxC, head.weight, head.bias, targets_N, chunk, dtype,
                                         ignore_index is not None, IGNORE_INDEX if ignore_index is None else ignore_index)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias and not cfg.tie_embeddings)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        # GPT-2: scale the projections into the residual stream by depth so its variance stays put.
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

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

    def forward(self, idx_BxT: torch.Tensor, targets_BxT: torch.Tensor | None = None, *,
                pos_BxT: torch.Tensor | None = None, key_mask_BxS: torch.Tensor | None = None,
                cache: KVCache | None = None, return_attn: bool = False, last_only: bool = False,
                return_logits: bool | None = None, return_hidden: bool = False) -> ModelOutput:
        """Run the model.

        targets_BxT: next-token ids, IGNORE_INDEX where no loss is wanted (padding). With targets,
        the output layer runs only on the counted rows (no compute on padding) and logits are not
        returned unless return_logits=True.
        pos_BxT: position ids (default: 0.., or after the cache); left-padded batches pass their own.
        key_mask_BxS: True for real tokens among all keys (cached + new), for left-padded batches.
        last_only: compute logits for the last position only (generation).
        """
        B, T = idx_BxT.shape
        offset = cache.length if cache is not None else 0
        if pos_BxT is None:
            if offset + T > self.cfg.context_length:
                raise ValueError(f"sequence of {offset + T} tokens exceeds context_length {self.cfg.context_length}")
            pos_BxT = torch.arange(offset, offset + T, device=idx_BxT.device)[None]
        x = self.tok_emb(idx_BxT) + self.pos_emb(pos_BxT)
        out = ModelOutput()
        for i, block in enumerate(self.blocks):
            x, attn, _ = block(x, key_mask_BxS=key_mask_BxS, cache=cache, layer=i, return_attn=return_attn)
            if return_attn:
                out.attn.append(attn)
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
                out.nll_sum = token_nll(h_BxTxC[keep_BxT], self.lm_head, targets_BxT[keep_BxT])
                out.loss = out.nll_sum / max(out.n_tokens, 1)
            else:
                # On an accelerator, counting or selecting rows would wait for the device (a host
                # sync every step); padding rows stay in and are ignored, and the count is a tensor.
                n_tokens = keep_BxT.sum()
                out.n_tokens = n_tokens
                out.nll_sum = token_nll(h_BxTxC.flatten(0, 1), self.lm_head, targets_BxT.flatten(),
                                        ignore_index=IGNORE_INDEX)
                out.loss = out.nll_sum / n_tokens.clamp(min=1)
            if not return_logits:
                return out
        if last_only:
            h_BxTxC = h_BxTxC[:, -1:]
        out.logits = self.lm_head(h_BxTxC)
        return out
