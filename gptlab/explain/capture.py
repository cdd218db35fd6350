"""Capture, for every family: run the model with attention capture on (the models' `return_attn`:
self-attention per layer, and the decoder's cross-attention for seq2seq) and turn the tensors
into a Trace of plain lists (gptlab.explain.trace), with top-k candidates and entropy where the
model predicts tokens or labels.

- GPT: `explain` generates and records each step: the predicting position's attention row and
  residual streams, taken from the same cached pass that produced the logits (the engine's
  `capture=True`: after the prompt, the lean one-token `GPT.decode`), and the sampler's logits.
  The vocabulary-sized work (candidates, entropies, the sampler's distribution, `capture_steps`;
  the logit lens, `logit_lenses`) runs once for all the steps at the end, so explaining costs little
  more than generating.
- encoder / classifier: `explain_encoder`; seq2seq: `explain_translation`. Both go through
  `capture_attention`, which pads a batch, hides the padding with the key mask and cuts it away
  again per row, so a row's weights are the same alone or in a ragged batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Protocol

import torch

from gptlab.data.tokenizer import UNK, Tokenizer
from gptlab.errors import UserError
from gptlab.explain.trace import Candidate, EncoderTrace, GPTTrace, Layer, Seq2SeqTrace, TraceStep
from gptlab.infer.generate import Step, TextTracker, encode_prompts, text_steps
from gptlab.infer.sampling import SamplingConfig, apply_repetition_penalty, entropy_bits, make_generator

if TYPE_CHECKING:
    from gptlab.model.config import ModelConfig
    from gptlab.model.gpt import GPT

N_LOGITS = 20        # candidates stored per GPT step (with logits, labels, p at T=1 and as drawn)
FULL_VOCAB_MAX = 4096  # up to this vocabulary a GPT step keeps every logit (a few tens of kB of JSON)
N_DIST_TOP = 50      # above it: the top logits, and a histogram of the others
TAIL_BIN = 0.02      # the histogram's bin width, in logits
LOGIT_DECIMALS = 4   # stored logits: ties closer than 1e-4 are as rare as they are harmless
LENS_TOP = 5         # words kept per layer of the logit lens
MATRIX_DECIMALS = 4  # attention matrices: 4 decimals keep the JSON small; rows still sum to 1 within 1e-3


# -- shared: numbers as short JSON, labels, model facts ---------------------------------------------
def _round_sig(x: torch.Tensor, digits: int = 6) -> list:
    """Values rounded to `digits` significant digits, as Python floats with short decimal reprs.

    Dividing an integer by a power of ten (both exact in float64) gives the double nearest the
    decimal, so the JSON reads 0.123457, not 0.12345699965953827. Done on the tensor: formatting
    numbers one by one in Python would cost more than the rest of the capture.
    """
    x = x.double()
    exp10 = (digits - 1 - x.abs().clamp(min=1e-300).log10().floor()).clamp(-300, 300)
    scale = torch.pow(10.0, exp10.abs())
    return torch.where(exp10 >= 0, (x * scale).round() / scale, (x / scale).round() * scale).tolist()


def round_list(x: torch.Tensor, decimals: int = MATRIX_DECIMALS) -> list:
    """A tensor as nested lists of floats with `decimals` decimals (the same trick as _round_sig)."""
    scale = 10.0 ** decimals
    return (x.double() * scale).round().div(scale).tolist()


def token_labels(tokenizer: Tokenizer) -> Callable[[int], str]:
    """id -> display text (a BPE token keeps its leading space; special tokens show by name)."""
    @cache
    def label(i: int) -> str:
        return tokenizer.decode([i], skip_special=False) or tokenizer.id_to_token(i)  # decode drops [PAD]
    return label


def surface_tokens(tok: Tokenizer, text: str, limit: int | None = None) -> list[str]:
    """Token strings as the user wrote them: an [UNK] shows its original word, marked with '?'."""
    enc = tok.hf.encode(text, add_special_tokens=False)
    out = [f"{text[a:b]}?" if t == UNK and b > a else t for t, (a, b) in zip(enc.tokens, enc.offsets)]
    return out[:limit] if limit else out


class Configured(Protocol):
    """Any family's model: each has its config as `cfg` (Seq2Seq's is a Seq2SeqConfig)."""
    @property
    def cfg(self) -> ModelConfig: ...


def model_info(model: Configured, tokenizer: Tokenizer, kind: str = "gpt", path=None) -> dict:
    """The model facts every trace carries (its "model" field)."""
    from gptlab.model.seq2seq import Seq2SeqConfig
    cfg = model.cfg
    info = {"kind": kind, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "context_length": cfg.context_length,
            "tokenizer": tokenizer.kind, "path": None if path is None else str(path)}
    if isinstance(cfg, Seq2SeqConfig):  # seq2seq: the cross-attention shown lives in the decoder
        info.update(n_layer=cfg.n_decoder_layer, encoder_layers=cfg.n_encoder_layer,
                    decoder_layers=cfg.n_decoder_layer)
    return info


def top_tokens(logits_NxV: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs_NxV, top-k probs_NxK, their ids_NxK, entropy_N in bits), in float32."""
    probs_NxV = logits_NxV.float().softmax(dim=-1)
    p_NxK, ids_NxK = probs_NxV.topk(min(k, probs_NxV.shape[-1]), dim=-1)
    return probs_NxV, p_NxK, ids_NxK, entropy_bits(probs_NxV)


# -- GPT: generation steps -----------------------------------------------------------------------------
def sampler_logits(logits_V: torch.Tensor, seen: set[int], penalty: float) -> torch.Tensor:
    """The logits the sampler turns into a distribution before temperature: the raw ones with the
    repetition penalty applied to the tokens already in the text (the same function the sampler calls)."""
    if penalty == 1.0 or not seen:
        return logits_V.float()
    seen_1xV = torch.zeros(1, logits_V.shape[-1], dtype=torch.bool, device=logits_V.device)
    seen_1xV[0, torch.tensor(sorted(seen), device=logits_V.device)] = True
    return apply_repetition_penalty(logits_V.float()[None], seen_1xV, penalty)[0]


def distribution_data(z_V: torch.Tensor, full_vocab_max: int = FULL_VOCAB_MAX, n_top: int = N_DIST_TOP) -> dict:
    """Enough of the sampler's logits `z_V` (before temperature) to redo softmax(filters(z / T)) for any T.

    A vocabulary up to `full_vocab_max`: every logit (rounded to LOGIT_DECIMALS: the probabilities
    move by < 0.05% / T). Larger: the top `n_top` logits and a histogram of all the others (bins of
    TAIL_BIN logits, counted), so the "all other words" mass at temperature T is
    sum(count * exp(bin middle / T)): within a factor exp(TAIL_BIN / 2T) of the truth for those words
    alone (the logsumexp of the tail at T = 1 alone could not be re-weighted to another T).
    """
    return distributions_data(z_V[None], full_vocab_max, n_top)[0]


def distributions_data(z_NxV: torch.Tensor, full_vocab_max: int = FULL_VOCAB_MAX, n_top: int = N_DIST_TOP) -> list[dict]:
    """`distribution_data` of N rows at once: a few calls over (N, V) instead of a dozen per row
    (an explanation's steps are what makes it slower than plain generation)."""
    if z_NxV.shape[-1] <= full_vocab_max:
        return [{"logits": row} for row in round_list(z_NxV.double(), LOGIT_DECIMALS)]
    N = len(z_NxV)
    # The ranking, the tail's mask and its extremes on the logits as given (float32: half the bytes
    # of a float64 pass over (N, V)); the bins in float64.
    top = z_NxV.topk(min(n_top, z_NxV.shape[-1]), dim=-1)
    tail_NxV = torch.isfinite(z_NxV)
    tail_NxV.scatter_(1, top.indices, False)
    has_tail_N = tail_NxV.any(dim=-1)
    # The lowest tail logit of each row: its histogram starts at the bin below it.
    low_N = torch.where(tail_NxV, z_NxV, torch.inf).amin(dim=-1).double()
    high_N = torch.where(tail_NxV, z_NxV, -torch.inf).amax(dim=-1).double()
    lo_N = torch.where(has_tail_N, (low_N / TAIL_BIN).floor() * TAIL_BIN, 0.0)

    def bins(z: torch.Tensor) -> torch.Tensor:  # each logit's bin; the clamp catches lo's rounding (and -inf)
        # In place: at (N, V) every new buffer is fresh memory from the system, and touching its
        # pages costs more than the arithmetic.
        return z.to(torch.float64, copy=True).sub_(lo_N[:, None]).div_(TAIL_BIN).floor_().clamp_(min=0).long()
    bin_NxV = bins(z_NxV)  # entries outside the tail (the top, -inf) are counted in no bin below
    # A row's histogram ends at its own highest bin, as a bincount of that row alone would (the bin
    # is monotonic in the logit, so the highest bin is the highest logit's).
    ends_N = torch.where(has_tail_N, bins(high_N[:, None])[:, 0] + 1, 0)
    width = int(ends_N.max())
    # Every row's counts in one bincount: row n's bins are n * (width + 1) + 0 ... width, the last
    # one collecting what is not in its tail (cheaper than selecting the tail out).
    flat = bin_NxV.masked_fill_(~tail_NxV, width).add_(torch.arange(N)[:, None] * (width + 1))
    counts_NxW = torch.bincount(flat.flatten(), minlength=N * (width + 1)).view(N, width + 1)[:, :width]
    ids, logits = top.indices.tolist(), round_list(top.values, LOGIT_DECIMALS)
    counts, ends, los = counts_NxW.tolist(), ends_N.tolist(), lo_N.tolist()
    return [{"ids": ids[n], "logits": logits[n],
             "tail": {"lo": round(los[n], 6), "width": TAIL_BIN, "counts": counts[n][:ends[n]]}}
            for n in range(N)]


def logit_lens(model: GPT, residuals: list[torch.Tensor], chosen: int, label: Callable[[int], str],
               top: int = LENS_TOP, final_logits_V: torch.Tensor | None = None) -> list[dict]:
    """What the model would predict from each residual stream (the embeddings, then after each block):
    the final norm and the output layer applied to it early (nostalgebraist's "logit lens").

    final_logits_V: the model's own logits, which the last residual stream gives by definition;
    passed, they stand for it and the output layer runs one row fewer."""
    rows = residuals if final_logits_V is None else residuals[:-1]
    return logit_lenses(model, [rows], [chosen], label, top,
                        None if final_logits_V is None else final_logits_V[None])[0]


def logit_lenses(model: GPT, residuals: list[list[torch.Tensor]], chosen: list[int], label: Callable[[int], str],
                 top: int = LENS_TOP, final_logits_NxV: torch.Tensor | None = None) -> list[list[dict]]:
    """`logit_lens` for N steps at once: residuals[n] holds step n's streams (each (C,); all steps the
    same count), final_logits_NxV (optional) each step's own logits, which follow its streams' rows.

    Why at once: at one text a step, the output layer is a matrix-vector product bound by reading
    its weights (10 MB for the course's model), so a row per call costs as much as the whole step
    it explains; all steps' rows in one call read the weights once."""
    N = len(residuals)
    with torch.inference_mode():
        parts = []
        if residuals and residuals[0]:
            h_NLxC = torch.stack([r for rows in residuals for r in rows])  # in the model's own dtype
            parts.append(model.lm_head(model.ln_f(h_NLxC)).float().view(N, len(residuals[0]), -1))
        if final_logits_NxV is not None:
            parts.append(final_logits_NxV.float()[:, None])
        probs_NxLxV = torch.cat(parts, dim=1).softmax(dim=-1)
        p_NxLxK, ids_NxLxK = probs_NxLxV.topk(min(top, probs_NxLxV.shape[-1]), dim=-1)
        p_chosen_NxL = probs_NxLxV.gather(2, torch.tensor(chosen, device=probs_NxLxV.device).view(N, 1, 1)
                                          .expand(N, probs_NxLxV.shape[1], 1))[..., 0]
        L, K = p_NxLxK.shape[1:]
        numbers = _round_sig(torch.cat([p_NxLxK.flatten(), p_chosen_NxL.flatten()]), 4)
    ps, pcs, ids = numbers[:N * L * K], numbers[N * L * K:], ids_NxLxK.tolist()

    def entry(n: int, layer: int) -> dict:
        r = (n * L + layer) * K
        return {"top": [{"token": label(i), "id": i, "p": p} for i, p in zip(ids[n][layer], ps[r:r + K])],
                "p_chosen": pcs[n * L + layer]}
    return [[entry(n, layer) for layer in range(L)] for n in range(N)]


@dataclass
class PendingStep:
    """One generated step's tensors, kept until `capture_steps` turns a whole explanation's steps into
    TraceSteps at once."""
    tokens: list[str]
    token_ids: list[int]
    start: int
    attention: list[list[list[float]]]
    finish: str | None
    chosen: int
    logits_V: torch.Tensor   # the model's raw logits
    probs_V: torch.Tensor    # the distribution drawn from
    z_V: torch.Tensor        # the sampler's logits before temperature


def pending_step(step: Step, row: int, label: Callable[[int], str], start: int,
                 sampler_z_V: torch.Tensor | None = None) -> PendingStep:
    """One row of an engine Step (run with capture=True): its plain parts now, its tensors copied
    for `capture_steps`. sampler_z_V: the logits the sampler saw before temperature (see
    `sampler_logits`; default the raw ones)."""
    if step.context is None or step.attn is None:
        raise TypeError("capture_step and pending_step need a Step generated with capture=True")
    context = step.context[row]
    S = len(context)
    logits_V = step.logits_BxV[row].float().clone()
    return PendingStep(
        tokens=[label(i) for i in context], token_ids=list(context), start=start,
        # Real tokens are the last S keys (prompts are left-padded); 5 decimals keep the JSON small.
        attention=[round_list(a[row, :, -S:], 5) for a in step.attn], finish=step.finish[row],
        chosen=int(step.tokens_B[row]), logits_V=logits_V, probs_V=step.probs_BxV[row].float().clone(),
        z_V=logits_V if sampler_z_V is None else sampler_z_V.float().clone())


def capture_step(step: Step, row: int, label: Callable[[int], str], start: int,
                 n_logits: int = N_LOGITS, *, sampler_z_V: torch.Tensor | None = None,
                 lens: list[dict] | None = None, full_vocab_max: int = FULL_VOCAB_MAX) -> TraceStep:
    """One row of an engine Step (run with capture=True) as plain data.

    sampler_z_V: the logits the sampler saw before temperature (see `sampler_logits`; default the
    raw ones), kept as the step's `dist`; lens: the step's logit lens (`logit_lens`).
    """
    out = capture_steps([pending_step(step, row, label, start, sampler_z_V)], label, n_logits, full_vocab_max)[0]
    out.lens = lens
    return out


def capture_steps(pending: list[PendingStep], label: Callable[[int], str], n_logits: int = N_LOGITS,
                  full_vocab_max: int = FULL_VOCAB_MAX) -> list[TraceStep]:
    """Steps as TraceSteps: the candidates (the best by the sampler's logits, the raw ones unless a
    repetition penalty moved some, then the drawn token), entropies and the sampler's distribution,
    computed for all the steps in a few calls over (N, V)."""
    if not pending:
        return []
    logits_NxV = torch.stack([p.logits_V for p in pending])
    probs_NxV = torch.stack([p.probs_V for p in pending])
    z_NxV = torch.stack([p.z_V for p in pending])
    N, V = logits_NxV.shape
    lse_N = logits_NxV.logsumexp(dim=-1)
    chosen_Nx1 = torch.tensor([p.chosen for p in pending])[:, None]
    ids_NxK = torch.cat([z_NxV.topk(min(n_logits, V), dim=-1).indices, chosen_Nx1], dim=1)
    K = ids_NxK.shape[1]
    logits_NxK = logits_NxV.gather(1, ids_NxK)
    # In place from here (the raw logits become log-probs): at (N, V) each new buffer is fresh
    # memory, and touching its pages costs about as much as the arithmetic.
    logp_NxV = logits_NxV.sub_(lse_N[:, None])
    numbers = _round_sig(torch.cat([
        logits_NxK.flatten(), logp_NxV.gather(1, ids_NxK).exp().flatten(),
        probs_NxV.gather(1, ids_NxK).flatten(),
        -logp_NxV.exp().mul_(logp_NxV).sum(dim=-1) / math.log(2),  # entropy, from the log-probs at hand
        entropy_bits(probs_NxV), lse_N]))
    logits, ps, p_samples = (numbers[i * N * K:(i + 1) * N * K] for i in range(3))
    entropy, entropy_sample, lses = (numbers[3 * N * K + i * N:3 * N * K + (i + 1) * N] for i in range(3))
    dists = distributions_data(z_NxV, full_vocab_max)
    out = []
    for n, (p, ids) in enumerate(zip(pending, ids_NxK.tolist())):
        r = slice(n * K, (n + 1) * K)
        candidates = [Candidate(token=label(i), id=i, logit=lg, p=q, p_sample=qs)
                      for i, lg, q, qs in zip(ids, logits[r], ps[r], p_samples[r])]
        out.append(TraceStep(
            tokens=p.tokens, token_ids=p.token_ids, start=p.start, attention=p.attention,
            candidates=candidates[:-1], chosen=candidates[-1], entropy=entropy[n],
            entropy_sample=entropy_sample[n], logsumexp=lses[n], finish=p.finish, dist=dists[n], lens=None))
    return out


def explain(model: GPT, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig, *,
            top: int = 5, info: dict | None = None, n_logits: int = N_LOGITS,
            full_vocab_max: int = FULL_VOCAB_MAX) -> GPTTrace:
    """Generate cfg.max_new_tokens tokens after `prompt`, recording every step: attention, the
    sampler's whole distribution (`distribution_data`) and the logit lens of each layer."""
    cfg.validate()
    ids = encode_prompts(tokenizer, [prompt])
    tracker = TextTracker(tokenizer, ids[0], cfg.stop)
    generator = make_generator(cfg.seed, model.tok_emb.weight.device)
    label = token_labels(tokenizer)
    n_prompt = len(ids[0])
    # The tokens the repetition penalty sees: the prompt as the engine keeps it, then each new one.
    seen = set(ids[0][-model.cfg.context_length:])
    pending: list[PendingStep] = []
    streams: list[list[torch.Tensor]] = []  # per step, its residual streams but the last
    for step in text_steps(model, tokenizer, ids, [tracker], cfg, generator, capture=True):
        assert step.context is not None and step.streams is not None  # capture=True records them
        start = n_prompt + step.index - len(step.context[0])
        # Copies: a view of the prompt step's last row would keep its whole (1, T, C) tensor.
        streams.append([r[0].clone() for r in step.streams[:-1]])
        z_V = sampler_logits(step.logits_BxV[0], seen, cfg.repetition_penalty)
        pending.append(pending_step(step, 0, label, start, sampler_z_V=z_V))
        seen.add(pending[-1].chosen)
    # The tensor work of every step at once: at one text a step, a dozen calls per step over the
    # vocabulary cost more than generating the step did, and the logit lens's rows go through the
    # output layer in one call (`logit_lenses`). The model's own logits stand for the last stream's
    # lens (a test checks that they are what that stream gives).
    steps = capture_steps(pending, label, max(n_logits, top), full_vocab_max)
    if pending:
        lenses = logit_lenses(model, streams, [p.chosen for p in pending], label,
                              final_logits_NxV=torch.stack([p.logits_V for p in pending]))
        for step_data, lens in zip(steps, lenses):
            step_data.lens = lens
    return GPTTrace(
        prompt=prompt, prompt_tokens=[label(i) for i in ids[0]], completion=tracker.text,
        finish_reason=steps[-1].finish if steps else None,
        model=info or model_info(model, tokenizer), top=top, steps=steps,
        # The seed actually used, so an unseeded explanation can still be reproduced.
        sampling={**cfg.to_dict(), "seed": generator.initial_seed()},
    )


# -- whole sequences: encoder, classifier, seq2seq ---------------------------------------------------
def pad_right(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_BxW, mask_BxW True on real tokens): rows padded at the end to the longest."""
    W = max(len(r) for r in rows)
    ids_BxW = torch.tensor([list(r) + [pad_id] * (W - len(r)) for r in rows], dtype=torch.long, device=device)
    mask_BxW = torch.tensor([[True] * len(r) + [False] * (W - len(r)) for r in rows], device=device)
    return ids_BxW, mask_BxW


@dataclass
class Captured:
    """One padded forward pass with attention; `self_rows`/`cross_rows` cut one row's padding away."""
    logits: torch.Tensor                 # (B, T, V) token logits (encoder, decoder), or (B, K) class logits
    self_attn: list[torch.Tensor]        # per (encoder) layer (B, H, S, S)
    cross_attn: list[torch.Tensor]       # per decoder layer (B, H, T, S); [] without a decoder
    src_mask_BxS: torch.Tensor           # True on real source tokens
    tgt_lens: list[int]                  # real target length per row; [] without a decoder

    def self_rows(self, b: int) -> list[torch.Tensor]:
        S = int(self.src_mask_BxS[b].sum())
        return [a[b, :, :S, :S].float().cpu() for a in self.self_attn]  # per layer (H, S, S)

    def cross_rows(self, b: int) -> list[torch.Tensor]:
        S, T = int(self.src_mask_BxS[b].sum()), self.tgt_lens[b]
        return [a[b, :, :T, :S].float().cpu() for a in self.cross_attn]  # per layer (H, T, S)


@torch.no_grad()
def capture_attention(model: torch.nn.Module, src_rows: list[list[int]],
                      tgt_rows: list[list[int]] | None = None, pad_id: int = 0) -> Captured:
    """Run any family's model once on a (padded) batch with attention capture on.

    Seq2Seq needs `tgt_rows` (decoder inputs, starting with the start token) and gives the
    decoder's cross-attention; Encoder/Classifier/GPT give their self-attention. Padded keys are
    hidden by the key mask, so no real position puts weight on them.
    """
    from gptlab.model.encoder import Classifier, Encoder
    from gptlab.model.seq2seq import Seq2Seq
    dev = next(model.parameters()).device
    src_BxS, mask_BxS = pad_right(src_rows, pad_id, dev)
    if isinstance(model, Seq2Seq):
        if tgt_rows is None or len(tgt_rows) != len(src_rows):
            raise ValueError("a seq2seq model needs one target row (decoder input) per source row")
        tgt_BxT, _ = pad_right(tgt_rows, pad_id, dev)  # target padding comes last: causality hides it
        out = model(src_BxS, tgt_BxT, src_mask_BxS=mask_BxS, return_attn=True)
        return Captured(out.logits, out.encoder_attn, out.cross_attn, mask_BxS, [len(t) for t in tgt_rows])
    if isinstance(model, Classifier):
        out = model(src_BxS, key_mask_BxT=mask_BxS, return_attn=True)
    elif isinstance(model, Encoder):
        out = model(src_BxS, key_mask_BxT=mask_BxS, return_attn=True, return_logits=True)
    else:
        out = model(src_BxS, key_mask_BxS=mask_BxS, return_attn=True)
    return Captured(out.logits, out.attn, [], mask_BxS, [])


def _matrices(heads_by_layer: list[torch.Tensor]) -> tuple[list, list]:
    """Per layer (H, rows, cols) -> (L x rows x cols mean over heads, L x H x rows x cols), rounded."""
    return [round_list(h.mean(0)) for h in heads_by_layer], [round_list(h) for h in heads_by_layer]


def _next_tokens(logits_TxV: torch.Tensor, written: list[int], label: Callable[[int], str], top: int) -> list[dict]:
    """Per target row: the probability of the word written there, the top-k and the entropy."""
    probs_TxV, p_TxK, ids_TxK, entropy_T = top_tokens(logits_TxV, top)
    p_written = probs_TxV[torch.arange(len(written)), torch.tensor(written)]
    return [{"p": round(p, 4), "entropy": round(h, 4),
             "top": [{"token": label(i), "id": i, "p": round(q, 4)} for q, i in zip(ps, ids)]}
            for p, h, ps, ids in zip(p_written.tolist(), entropy_T.tolist(), p_TxK.tolist(), ids_TxK.tolist())]


@torch.no_grad()
def explain_translation(model, tok: Tokenizer, text: str, beam: int = 1, layer: Layer = "mean",
                        top: int = 5) -> Seq2SeqTrace:
    """Translate `text`, then re-run the decoder on its own output to read the cross-attention
    each generated word was written with (the decoder is causal, so this equals what it saw
    step by step), and the distribution each word was drawn from."""
    from gptlab.infer.translate import bos_token_id, translate_ids
    ctx = model.cfg.context_length
    src = tok.encode(text)[:ctx]
    if not src:
        raise UserError("nothing to translate: the text is empty")
    ids = translate_ids(model, tok, [text], beam)[0]
    tgt_in = ([bos_token_id(tok)] + ids)[:ctx]
    written = (ids + [tok.eot_id])[:len(tgt_in)]  # row t of the decoder wrote written[t]
    cap = capture_attention(model, [src], [tgt_in], tok.pad_id)
    layers, heads = _matrices(cap.cross_rows(0))
    return Seq2SeqTrace(
        source=text, translation=tok.decode(ids), source_tokens=surface_tokens(tok, text, ctx),
        target_tokens=[tok.id_to_token(i) for i in written], layers=layers, heads=heads, layer=layer,
        next_tokens=_next_tokens(cap.logits[0, :len(written)], written, tok.id_to_token, top),
        model=model_info(model, tok, "seq2seq"))


def resolve_focus(tokens: list[str], focus: str | int | None) -> int:
    """A position, or a word of the sentence (its first occurrence); None = position 0 ([CLS])."""
    if focus is None or focus == "":
        return 0
    s = str(focus)
    if s.lstrip("-").isdigit():
        i = int(s)
        if not -len(tokens) <= i < len(tokens):
            raise UserError(f"--token {i} is outside the sentence's {len(tokens)} tokens (0 is [CLS])")
        return i % len(tokens)
    low = [t.lower() for t in tokens]
    if s.lower() in low:
        return low.index(s.lower())
    raise UserError(f"--token {s!r} is not a token of the sentence; tokens: {' '.join(tokens)}")


def _label_prediction(logits_K: torch.Tensor, labels: list[str] | None, top: int) -> dict:
    _, p_1xK, ids_1xK, entropy_1 = top_tokens(logits_K[None], top)
    return {"labels": [{"label": labels[j] if labels else str(j), "p": round(q, 4)}
                       for q, j in zip(p_1xK[0].tolist(), ids_1xK[0].tolist())],
            "entropy": round(float(entropy_1[0]), 4)}


def _mask_prediction(logits_TxV: torch.Tensor, ids: list[int], tok: Tokenizer, top: int) -> dict:
    from gptlab.data.texts import MASK
    mask_id = tok.token_to_id(MASK)
    positions = [i for i, t in enumerate(ids) if t == mask_id] if mask_id is not None else []
    if not positions:
        return {}
    _, p_MxK, ids_MxK, entropy_M = top_tokens(logits_TxV[positions], top)
    return {"masks": [{"position": pos, "entropy": round(h, 4),
                       "top": [{"token": tok.id_to_token(j), "p": round(q, 4)} for q, j in zip(ps, js)]}
                      for pos, h, ps, js in zip(positions, entropy_M.tolist(), p_MxK.tolist(), ids_MxK.tolist())]}


@torch.no_grad()
def explain_encoder(model, tok: Tokenizer, text: str, focus: str | int | None = None,
                    layer: Layer = "mean", labels: list[str] | None = None,
                    top: int = 3) -> EncoderTrace:
    """Attention of one token ([CLS] by default) over the sentence; with a classifier the
    predicted labels, with a masked-LM encoder the best words for each [MASK]."""
    from gptlab.data.texts import CLS, encode_texts
    from gptlab.model.encoder import Classifier
    ids = encode_texts(tok, [text], model.cfg.context_length)[0]
    if len(ids) < 2:
        raise UserError("nothing to explain: the text is empty")
    tokens = [CLS] + surface_tokens(tok, text, len(ids) - 1)
    i_focus = resolve_focus(tokens, focus)
    cap = capture_attention(model, [ids], pad_id=tok.pad_id)
    kind = "classifier" if isinstance(model, Classifier) else "encoder"
    if kind == "classifier":
        prediction = _label_prediction(cap.logits[0], labels, top)
    else:
        prediction = _mask_prediction(cap.logits[0], ids, tok, top)
    layers, heads = _matrices(cap.self_rows(0))
    return EncoderTrace(kind, text, tokens, i_focus, layers, prediction, layer, heads=heads,
                        model=model_info(model, tok, kind))
