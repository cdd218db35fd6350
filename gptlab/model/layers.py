"""Transformer building blocks shared by every model family.

One attention module serves causal self-attention (GPT, the decoder), bidirectional self-attention
(the encoder, `causal=False`) and cross-attention (`cross=True`); a Block is attention + optional
cross-attention + feed-forward, with LayerNorm before (pre-LN, GPT-2) or after (post-LN, Vaswani and
the course's notebook) each residual sub-layer.

Masks are boolean, True = may attend. Shapes are in names: B batch, T queries, S keys, H heads,
D head width, C model width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.config import ModelConfig


# -- decoding one token per row: functions over a module's tensors, looked up once ----------------
# Sampling one text at a time, a step's arithmetic is tiny and its cost is the calls: an attribute of
# an nn.Module (a submodule, a weight) is a dictionary lookup through Module.__getattr__, dozens per
# step. `decoder()` methods look everything up once, when a generation starts, and return plain
# functions (GPT.decoder; 275 -> 234 us per step of the course's model, benchmarks/RESULTS.md). They
# are built per generation, so a model changed between generations is never decoded stale.
def linear_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module.forward` as a function of x alone: nn.Linear's weight and bias bound now; a module
    with its own `as_function` (the int8 output layer) gives that; anything else its forward."""
    if type(module) is nn.Linear:
        w, b = module.weight, module.bias
        return lambda x: F.linear(x, w, b)
    as_function = getattr(module, "as_function", None)
    return as_function() if callable(as_function) else module.forward


def norm_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A LayerNorm as a function with its tensors bound; None for nn.Identity (nothing to call)."""
    if isinstance(module, nn.Identity):
        return None
    if type(module) is nn.LayerNorm:
        shape, w, b, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    return module.forward


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with the CPU's mask drawn as uniform >= p: the same distribution, and forward +
    backward ~1.3x faster than bernoulli_ there (13.2 -> 10.0 ms for a (128, 4, 46, 46) bf16
    tensor, 8.6 -> 6.8 ms for (128, 46, 128); benchmarks/RESULTS.md); accelerators keep their fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep = torch.rand_like(x, dtype=torch.float32) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training)


class KVCache:
    """Keys and values of past positions, preallocated, for incremental decoding.

    `length` counts the positions already stored; a forward pass with a cache writes its T new
    positions after them and the caller (the model) advances `length` once all layers are done.
    Cross-attention keys/values (fixed for the whole decode) are kept in `cross` by layer.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k_LxBxHxSxD = torch.zeros(shape, device=device, dtype=dtype)
        self.v_LxBxHxSxD = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k_BxHxTxD: torch.Tensor, v_BxHxTxD: torch.Tensor):
        t0, T = self.length, k_BxHxTxD.shape[2]
        if t0 + T > self.max_len:
            raise ValueError(f"KV cache full: {t0 + T} positions > max_len {self.max_len}")
        # narrow + copy_: two operator calls per tensor, where slice assignment takes five.
        k_BxHxSxD, v_BxHxSxD = self.k_LxBxHxSxD[layer], self.v_LxBxHxSxD[layer]
        k_BxHxSxD.narrow(2, t0, T).copy_(k_BxHxTxD)
        v_BxHxSxD.narrow(2, t0, T).copy_(v_BxHxTxD)
        return k_BxHxSxD.narrow(2, 0, t0 + T), v_BxHxSxD.narrow(2, 0, t0 + T)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (reorders too: beam search uses this)."""
        self.k_LxBxHxSxD = self.k_LxBxHxSxD[:, rows]
        self.v_LxBxHxSxD = self.v_LxBxHxSxD[:, rows]
        self.cross = {i: (k[rows], v[rows]) for i, (k, v) in self.cross.items()}



class SlotCache(KVCache):
    """A KV cache whose batch rows are independent slots, each at its own position (continuous batching).

    Row b holds one sequence from position 0; `pos_B` is where each row's next key goes. A decoding
    step (GPT.decode: one new token per row, at position pos_B) writes there and attends over all
    `max_len` positions, so the caller passes key_mask_BxS = keys <= pos_B. Prompts are computed on
    their own (a plain KVCache, batch 1) and copied into their slot with `fill`. `length` is unused.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        super().__init__(n_layer, batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.pos_B = torch.zeros(batch, dtype=torch.long, device=device)
        self.rows_B = torch.arange(batch, device=device)

    def update(self, layer: int, k_BxHxTxD: torch.Tensor, v_BxHxTxD: torch.Tensor):
        if k_BxHxTxD.shape[2] != 1:
            raise ValueError("a SlotCache takes one new position per row: prefill a prompt on its own and `fill` its slot")
        self.k_LxBxHxSxD[layer, self.rows_B, :, self.pos_B] = k_BxHxTxD[:, :, 0]
        self.v_LxBxHxSxD[layer, self.rows_B, :, self.pos_B] = v_BxHxTxD[:, :, 0]
        return self.k_LxBxHxSxD[layer], self.v_LxBxHxSxD[layer]

    def fill(self, row: int, cache: KVCache) -> None:
        """Slot `row` := the cache.length positions of batch-1 `cache`; the rest zeroed, so a slot's
        keys never depend on who used it before."""
        n = cache.length
        if n > self.max_len:
            raise ValueError(f"{n} positions do not fit a slot of {self.max_len}")
        self.k_LxBxHxSxD[:, row, :, :n] = cache.k_LxBxHxSxD[:, 0, :, :n]
        self.v_LxBxHxSxD[:, row, :, :n] = cache.v_LxBxHxSxD[:, 0, :, :n]
        self.k_LxBxHxSxD[:, row, :, n:] = 0
        self.v_LxBxHxSxD[:, row, :, n:] = 0
        self.pos_B[row] = n

    def take(self, row: int, n: int) -> KVCache:
        """A batch-1 KVCache holding a copy of slot `row`'s first n positions (what `fill` puts back)."""
        L, _, H, _, D = self.k_LxBxHxSxD.shape
        out = KVCache(L, 1, H, n, D, device=self.k_LxBxHxSxD.device, dtype=self.k_LxBxHxSxD.dtype)
        out.k_LxBxHxSxD.copy_(self.k_LxBxHxSxD[:, row:row + 1, :, :n])
        out.v_LxBxHxSxD.copy_(self.v_LxBxHxSxD[:, row:row + 1, :, :n])
        out.length = n
        return out

    def clear(self, row: int) -> None:
        """Slot `row` empty, at position 0."""
        self.k_LxBxHxSxD[:, row] = 0
        self.v_LxBxHxSxD[:, row] = 0
        self.pos_B[row] = 0

def build_mask(T: int, S: int, *, causal: bool, offset: int = 0,
               key_mask_BxS: torch.Tensor | None = None, device=None,
               self_attention: bool = True) -> torch.Tensor | None:
    """Boolean attention mask (B or 1, 1, T, S), True = may attend, or None when nothing is masked.

    Query i sits at absolute position offset + i; with `causal` it sees keys j <= offset + i.
    In self-attention a query may always see itself, so a padded query row never becomes
    all-masked (NaN). Cross-attention keys are another sequence: there key i is no "self", and
    a padded source position must stay hidden (every source has at least one real token).
    """
    if not causal and key_mask_BxS is None:
        return None
    q_T1 = torch.arange(T, device=device)[:, None] + offset
    k_1S = torch.arange(S, device=device)[None, :]
    mask_TxS = (k_1S <= q_T1) if causal else torch.ones(T, S, dtype=torch.bool, device=device)
    mask = mask_TxS[None, None]
    if key_mask_BxS is not None:
        mask = mask & key_mask_BxS[:, None, None, :].bool()
        if self_attention:
            mask = mask | (k_1S == q_T1)[None, None]
    return mask


class Attention(nn.Module):
    """Multi-head attention. Self-attention by default; `cross=True` takes keys/values from a context."""

    def __init__(self, cfg: ModelConfig, *, cross: bool = False, qk_norm: bool = False):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_size
        # QK-norm (Dehghani et al. 2023; SD3's MMDiT): each head's query and key RMS-normalised, with
        # a learned gain, so attention logits cannot grow with the weights (they did, to ~1,000, and
        # a denoiser's loss jumped: benchmarks/RESULTS_image.md).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        inner = self.n_head * self.head_dim
        self.cross = cross
        if cross:
            self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=cfg.bias)
        else:
            # One matmul for q, k and v: faster, and the same layout as GPT-2's c_attn.
            self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=cfg.bias)
        self.out = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        # Dropout on the attention weights: GPT-2 has it; Keras's MultiHeadAttention (the notebook)
        # has none by default.
        self.dropout = cfg.dropout if cfg.attn_dropout < 0 else cfg.attn_dropout
        self.impl = cfg.attn_impl

    @staticmethod
    def _qk(x_BxHxTxD: torch.Tensor, norm: nn.RMSNorm | None) -> torch.Tensor:
        if norm is None:
            return x_BxHxTxD
        # The gain in the input's dtype: under bf16 autocast a float32 gain keeps rms_norm off its
        # fused kernel (torch warns, and the step is slower).
        return F.rms_norm(x_BxHxTxD, x_BxHxTxD.shape[-1:], norm.weight.to(x_BxHxTxD.dtype), norm.eps)

    def _heads(self, x_BxTxI: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BxTxI.shape
        return x_BxTxI.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x_BxTxC: torch.Tensor, *, context_BxSxC: torch.Tensor | None = None,
                causal: bool = False, key_mask_BxS: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, return_attn: bool = False):
        B, T, _ = x_BxTxC.shape
        offset = 0
        if self.cross:
            q = self._qk(self._heads(self.q(x_BxTxC)), self.q_norm)
            if cache is not None and layer in cache.cross:
                k, v = cache.cross[layer]
            else:
                k, v = (self._heads(t) for t in self.kv(context_BxSxC).chunk(2, dim=-1))
                k = self._qk(k, self.k_norm)  # cached normalised, as decode() stores its keys
                if cache is not None:
                    cache.cross[layer] = (k, v)
            causal = False  # a decoder position may look at the whole source
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x_BxTxC).chunk(3, dim=-1))
            q, k = self._qk(q, self.q_norm), self._qk(k, self.k_norm)
            if cache is not None:
                offset = cache.length
                k, v = cache.update(layer, k, v)
        S = k.shape[2]
        drop = self.dropout if self.training else 0.0
        attn_BxHxTxS: torch.Tensor | None

        # On the CPU in bf16, scaled_dot_product_attention's fused kernel trains (forward + backward)
        # ~2x slower than plain matmuls + softmax at these sizes (measured for T 80-256, head widths
        # 64 and 256): train through the explicit path there.
        explicit = return_attn or self.impl == "explicit" or (
            self.impl == "auto" and q.device.type == "cpu" and q.dtype != torch.float32 and torch.is_grad_enabled())
        if explicit:
            mask = build_mask(T, S, causal=causal, offset=offset, key_mask_BxS=key_mask_BxS,
                              device=x_BxTxC.device, self_attention=not self.cross)
            scores_BxHxTxS = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores_BxHxTxS = scores_BxHxTxS.masked_fill(~mask, float("-inf"))
            attn_BxHxTxS = scores_BxHxTxS.float().softmax(dim=-1).to(q.dtype)
            y = dropout(attn_BxHxTxS, drop, self.training) @ v
            if not return_attn:
                attn_BxHxTxS = None
        else:
            attn_BxHxTxS = None
            if causal and key_mask_BxS is None and offset == 0 and T == S:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
            else:
                # One new query with a cache sees every stored key: no causal mask needed.
                mask = build_mask(T, S, causal=causal and T > 1, offset=offset, key_mask_BxS=key_mask_BxS,
                                  device=x_BxTxC.device, self_attention=not self.cross)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y_BxTxI = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.out(y_BxTxI), attn_BxHxTxS

    def decode(self, x_BxC: torch.Tensor, cache: KVCache, layer: int,
               key_mask_BxS: torch.Tensor | None = None, attn_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Self-attention of one new position per row over the cache, on (B, C) rows: forward() for
        T=1 with fewer operator calls (see `decoder`). key_mask_BxS: as in forward, over all S =
        cached + 1 keys. attn_out: a list that gets this layer's attention weights (B, H, 1, S)
        appended (an explanation's capture)."""
        return self.decoder(layer)(x_BxC, cache, key_mask_BxS, attn_out)

    def decoder(self, layer: int) -> Callable[..., torch.Tensor]:
        """decode() for `layer` of the cache as a function with this module's tensors bound (the
        comment above `linear_fn`); self-attention only."""
        if self.cross:
            raise TypeError("decode is for self-attention: cross-attention decodes through forward()")
        qkv, out = linear_fn(self.qkv), linear_fn(self.out)
        H, D, q_norm, k_norm, qk = self.n_head, self.head_dim, self.q_norm, self.k_norm, self._qk
        scale = D ** -0.5

        def attend(x_BxC: torch.Tensor, cache: KVCache, key_mask_BxS: torch.Tensor | None = None,
                   attn_out: list[torch.Tensor] | None = None) -> torch.Tensor:
            B = x_BxC.shape[0]
            # (B, H, 1, D) each: viewed with the query axis in place, no unsqueeze calls.
            q_BxHx1xD, k, v = qkv(x_BxC).view(B, 3, H, 1, D).unbind(1)
            if q_norm is not None:
                q_BxHx1xD, k = qk(q_BxHx1xD, q_norm), qk(k, k_norm)
            k_BxHxSxD, v_BxHxSxD = cache.update(layer, k, v)
            mask = None if key_mask_BxS is None else key_mask_BxS[:, None, None, :].bool()
            if B == 1 and attn_out is None:  # one call: batch 1 pays per operator call
                y_BxHx1xD = F.scaled_dot_product_attention(q_BxHx1xD, k_BxHxSxD, v_BxHxSxD, attn_mask=mask)
            else:
                # Written out for a batch (and when the weights are asked for): on CPU, SDPA's result
                # for a row depends on which thread computes it (with 2 threads, rows 4-7 of 8 differ
                # from rows 0-3 by an ulp), so a request's tokens would depend on its slot in the
                # serving engine. Matmul + softmax per row do not.
                s_BxHx1xS = (q_BxHx1xD * scale) @ k_BxHxSxD.transpose(-1, -2)
                if mask is not None:
                    s_BxHx1xS = s_BxHx1xS.masked_fill(~mask, float("-inf"))
                p_BxHx1xS = s_BxHx1xS.float().softmax(-1).to(v_BxHxSxD.dtype)
                if attn_out is not None:
                    attn_out.append(p_BxHx1xS)
                y_BxHx1xD = p_BxHx1xS @ v_BxHxSxD
            return out(y_BxHx1xD.reshape(B, H * D))
        return attend


def init_weights(model: nn.Module, depth: int) -> None:
    """GPT-2's initialisation, for every model family: weights N(0, 0.02), biases zero, and the
    projections into the residual stream scaled by 1/sqrt(2 * depth), so that the stream's variance
    does not grow with the number of blocks (`depth`: all blocks, encoder and decoder together)."""
    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    model.apply(init)
    for name, p in model.named_parameters():
        if name.endswith(("attn.out.weight", "mlp.down.weight")):
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        # tanh-approximate GELU is GPT-2's, which keeps the Hugging Face export exact.
        self.act = nn.GELU(approximate="tanh") if cfg.activation == "gelu" else nn.ReLU()
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x_BxTxC: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x_BxTxC)))

    def decode(self, x_BxC: torch.Tensor) -> torch.Tensor:
        """forward() without its modules' __call__ (see `decoder`)."""
        return self.decoder()(x_BxC)

    def decoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """forward() as a function with this module's tensors bound (the comment above `linear_fn`)."""
        up, act, down = linear_fn(self.up), self.act.forward, linear_fn(self.down)
        return lambda x: down(act(up(x)))


class Block(nn.Module):
    """Self-attention (+ cross-attention when `cross`) + feed-forward, each a residual sub-layer.

    `causal` is a property of the block: GPT and decoder blocks are causal, encoder blocks are not.
    """

    def __init__(self, cfg: ModelConfig, *, causal: bool = True, cross: bool = False):
        super().__init__()
        self.causal = causal
        self.pre_norm = cfg.norm == "pre"
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln_cross = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cross else None
        self.cross_attn = Attention(cfg, cross=True) if cross else None
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout)

    def _residual(self, x, ln, fn):
        """x + f(x) with the block's LayerNorm placement; returns (new x, attention or None)."""
        if self.pre_norm:
            y, attn = fn(ln(x))
            return x + self.drop(y), attn
        y, attn = fn(x)
        return ln(x + self.drop(y)), attn

    def forward(self, x_BxTxC: torch.Tensor, *, key_mask_BxS=None, context_BxSxC=None,
                context_mask_BxS=None, cache: KVCache | None = None, layer: int = 0,
                return_attn: bool = False):
        x, self_attn = self._residual(x_BxTxC, self.ln_attn, lambda h: self.attn(
            h, causal=self.causal, key_mask_BxS=key_mask_BxS, cache=cache, layer=layer,
            return_attn=return_attn))
        cross_attn = None
        if self.cross_attn is not None:
            x, cross_attn = self._residual(x, self.ln_cross, lambda h: self.cross_attn(
                h, context_BxSxC=context_BxSxC, key_mask_BxS=context_mask_BxS, cache=cache,
                layer=layer, return_attn=return_attn))
        x, _ = self._residual(x, self.ln_mlp, lambda h: (self.mlp(h), None))
        return x, self_attn, cross_attn

    def decode(self, x_BxC: torch.Tensor, cache: KVCache, layer: int,
               key_mask_BxS: torch.Tensor | None = None, attn_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """forward() in eval mode for one new position per row, on (B, C) rows (GPT.decode);
        self-attention only (attn_out: as Attention.decode)."""
        return self.decoder(layer)(x_BxC, cache, key_mask_BxS, attn_out)

    def decoder(self, layer: int) -> Callable[..., torch.Tensor]:
        """decode() for `layer` of the cache as a function with this block's tensors bound: the
        residual sub-layers written out, without the dropout modules and closures of forward()."""
        if self.cross_attn is not None or self.training:
            raise TypeError("Block.decode is for inference with decoder-only blocks: use forward() to train "
                            "or to decode with cross-attention")
        attend, mlp = self.attn.decoder(layer), self.mlp.decoder()
        ln_attn, ln_mlp = norm_fn(self.ln_attn), norm_fn(self.ln_mlp)
        assert ln_attn is not None and ln_mlp is not None  # LayerNorms, never Identity

        def pre(x_BxC: torch.Tensor, cache: KVCache, key_mask_BxS: torch.Tensor | None = None,
                attn_out: list[torch.Tensor] | None = None) -> torch.Tensor:
            x_BxC = x_BxC + attend(ln_attn(x_BxC), cache, key_mask_BxS, attn_out)
            return x_BxC + mlp(ln_mlp(x_BxC))

        def post(x_BxC: torch.Tensor, cache: KVCache, key_mask_BxS: torch.Tensor | None = None,
                 attn_out: list[torch.Tensor] | None = None) -> torch.Tensor:
            x_BxC = ln_attn(x_BxC + attend(x_BxC, cache, key_mask_BxS, attn_out))
            return ln_mlp(x_BxC + mlp(x_BxC))
        return pre if self.pre_norm else post
