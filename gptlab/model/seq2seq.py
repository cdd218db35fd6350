"""The encoder-decoder transformer (Vaswani et al. 2017; T5, BART), built from the GPT's blocks.

- encoder: `Block(causal=False)`: every source token sees every other (bidirectional), padding
  hidden by the source key mask;
- decoder: `Block(causal=True, cross=True)`: masked self-attention over the target written so far,
  then cross-attention from each target position to the whole encoded source.

Vocabulary: one shared vocabulary and one token embedding for source, target and output layer
(Vaswani's shared source-target vocabulary with three-way weight tying, as T5/BART/Marian do). It
keeps a checkpoint to one tokenizer.json, halves the embedding parameters, and lets words that are
spelt the same in both languages (names, numbers) share a vector. Positions are learned and kept
separate for the two sides: a source position and a target position mean different things.

Shapes in names: B batch, S source length, T target length, C model width, V vocabulary, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import IGNORE_INDEX, token_nll
from gptlab.model.layers import Block, KVCache, init_weights


@dataclass
class Seq2SeqConfig(ModelConfig):
    """ModelConfig (widths, heads, norm placement...) plus a layer count per side.

    `context_length` bounds both the source and the target length; `n_layer` is the default for
    both sides.
    """

    encoder_layers: int = field(default=0, metadata={"help": "encoder blocks; 0 means n_layer"})
    decoder_layers: int = field(default=0, metadata={"help": "decoder blocks; 0 means n_layer"})

    @property
    def n_encoder_layer(self) -> int:
        return self.encoder_layers or self.n_layer

    @property
    def n_decoder_layer(self) -> int:
        return self.decoder_layers or self.n_layer

    def validate(self) -> None:
        super().validate()
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)}); 0 means n_layer")


def seq2seq_tiny(vocab_size: int = 1000) -> Seq2SeqConfig:
    """For tests: trains in seconds."""
    return Seq2SeqConfig(vocab_size=vocab_size, context_length=32, d_model=32, n_layer=2, n_head=2,
                         d_ff=64, dropout=0.0, norm="pre", activation="gelu", tie_embeddings=True)


def seq2seq_small(vocab_size: int = 1000) -> Seq2SeqConfig:
    """CPU-sized: number words English -> Spanish to >= 99% exact match in minutes."""
    return Seq2SeqConfig(vocab_size=vocab_size, context_length=32, d_model=128, n_layer=3, n_head=4,
                         d_ff=512, dropout=0.1, norm="pre", activation="gelu", tie_embeddings=True)


def seq2seq_base(vocab_size: int = 15000) -> Seq2SeqConfig:
    """A short-sentence translation model (the Keras English-to-Spanish example's size class)."""
    return Seq2SeqConfig(vocab_size=vocab_size, context_length=40, d_model=256, n_layer=4, n_head=8,
                         d_ff=1024, dropout=0.1, norm="pre", activation="gelu", tie_embeddings=True)


def vaswani(vocab_size: int = 37000) -> Seq2SeqConfig:
    """The paper's base model: 6+6 post-LN blocks, d_model 512, 8 heads, ReLU feed-forward 2048."""
    return Seq2SeqConfig(vocab_size=vocab_size, context_length=256, d_model=512, n_layer=6, n_head=8,
                         d_ff=2048, dropout=0.1, norm="post", ln_eps=1e-6, activation="relu",
                         tie_embeddings=True, final_norm=False)


SEQ2SEQ_PRESETS = {"tiny": seq2seq_tiny, "small": seq2seq_small, "base": seq2seq_base, "vaswani": vaswani}


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor | None = None      # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None        # mean NLL over target tokens that are not IGNORE_INDEX
    nll_sum: torch.Tensor | None = None
    n_tokens: int = 0
    encoder_attn: list[torch.Tensor] = field(default_factory=list)  # per encoder layer (B, H, S, S)
    self_attn: list[torch.Tensor] = field(default_factory=list)     # per decoder layer (B, H, T, T)
    cross_attn: list[torch.Tensor] = field(default_factory=list)    # per decoder layer (B, H, T, S)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.src_pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.tgt_pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.encoder = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.n_encoder_layer))
        self.decoder = nn.ModuleList(Block(cfg, causal=True, cross=True) for _ in range(cfg.n_decoder_layer))
        # Pre-LN blocks leave an un-normalised residual stream: normalise the encoder output
        # before every decoder layer reads it, and the decoder output before the output layer.
        self.ln_enc = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.final_norm else nn.Identity()
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias and cfg.head_bias and not cfg.tie_embeddings)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        init_weights(self, cfg.n_encoder_layer + cfg.n_decoder_layer)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_len(self, n: int, side: str) -> None:
        if n > self.cfg.context_length:
            raise ValueError(f"{side} of {n} tokens exceeds context_length {self.cfg.context_length}")

    def encode(self, src_BxS: torch.Tensor, src_mask_BxS: torch.Tensor | None = None,
               return_attn: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Contextual vectors of the source, (B, S, C), and per-layer attention when asked.

        src_mask_BxS: True for real tokens; padded keys are hidden from every query.
        """
        S = src_BxS.shape[1]
        self._check_len(S, "source")
        x = self.tok_emb(src_BxS) + self.src_pos_emb(torch.arange(S, device=src_BxS.device))[None]
        attn = []
        for block in self.encoder:
            x, a, _ = block(x, key_mask_BxS=src_mask_BxS, return_attn=return_attn)
            if return_attn:
                attn.append(a)
        return self.ln_enc(x), attn

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """Cache for the decoder: self-attention K/V by position, cross-attention K/V once."""
        cfg, p = self.cfg, self.tok_emb.weight
        return KVCache(cfg.n_decoder_layer, batch, cfg.n_head, max_len or cfg.context_length,
                       cfg.head_size, device=p.device, dtype=p.dtype)

    def _decoder(self, tgt_BxT: torch.Tensor, memory_BxSxC: torch.Tensor,
                 src_mask_BxS: torch.Tensor | None, cache: KVCache | None, return_attn: bool,
                 out: Seq2SeqOutput) -> torch.Tensor:
        """Decoder hidden states (B, T, C) after the final norm; attention appended to `out`."""
        T = tgt_BxT.shape[1]
        offset = cache.length if cache is not None else 0
        self._check_len(offset + T, "target")
        pos = torch.arange(offset, offset + T, device=tgt_BxT.device)
        x = self.tok_emb(tgt_BxT) + self.tgt_pos_emb(pos)[None]
        for i, block in enumerate(self.decoder):
            x, sa, ca = block(x, context_BxSxC=memory_BxSxC, context_mask_BxS=src_mask_BxS,
                              cache=cache, layer=i, return_attn=return_attn)
            if return_attn:
                out.self_attn.append(sa)
                out.cross_attn.append(ca)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def decode(self, tgt_BxT: torch.Tensor, memory_BxSxC: torch.Tensor,
               src_mask_BxS: torch.Tensor | None = None, *, cache: KVCache | None = None,
               return_attn: bool = False, last_only: bool = False) -> Seq2SeqOutput:
        """Decoder logits for target inputs tgt_BxT (starting with the start token).

        With a cache, tgt_BxT holds only the new positions and the cache advances by T; the
        cross-attention keys/values of `memory_BxSxC` are computed at the first call and reused.
        """
        out = Seq2SeqOutput()
        h_BxTxC = self._decoder(tgt_BxT, memory_BxSxC, src_mask_BxS, cache, return_attn, out)
        out.logits = self.lm_head(h_BxTxC[:, -1:] if last_only else h_BxTxC)
        return out

    def forward(self, src_BxS: torch.Tensor, tgt_in_BxT: torch.Tensor,
                targets_BxT: torch.Tensor | None = None, *, src_mask_BxS: torch.Tensor | None = None,
                return_attn: bool = False, return_logits: bool | None = None) -> Seq2SeqOutput:
        """Teacher-forced pass: encode the source, decode the shifted target.

        targets_BxT: the next target token per position, IGNORE_INDEX on padding. With targets the
        output layer runs only on counted rows and logits are skipped unless return_logits=True.
        Target padding needs no mask: it sits after the real tokens, which causality already hides.
        """
        memory, enc_attn = self.encode(src_BxS, src_mask_BxS, return_attn=return_attn)
        out = Seq2SeqOutput(encoder_attn=enc_attn)
        h_BxTxC = self._decoder(tgt_in_BxT, memory, src_mask_BxS, None, return_attn, out)
        if targets_BxT is not None:
            keep_BxT = targets_BxT != IGNORE_INDEX
            out.n_tokens = int(keep_BxT.sum())
            out.nll_sum = token_nll(h_BxTxC[keep_BxT], self.lm_head, targets_BxT[keep_BxT])
            out.loss = out.nll_sum / max(out.n_tokens, 1)
            if not return_logits:
                return out
        out.logits = self.lm_head(h_BxTxC)
        return out
