"""Capture, for every family: run the model with attention capture on (the models' `return_attn`:
self-attention per layer, and the decoder's cross-attention for seq2seq) and turn the tensors
into a Trace of plain lists (gptlab.explain.trace), with top-k candidates and entropy where the
model predicts tokens or labels.

- GPT: `explain` generates and records each step (`capture_step`): the predicting position's
  attention row, taken from the same cached forward pass that produced the logits, so explaining
  costs little more than generating.
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
from gptlab.infer.sampling import SamplingConfig, entropy_bits, make_generator

if TYPE_CHECKING:
    from gptlab.model.config import ModelConfig
    from gptlab.model.gpt import GPT

N_LOGITS = 20        # candidates stored per GPT step (with logits), so a renderer can re-weight by temperature
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
def capture_step(step: Step, row: int, label: Callable[[int], str], start: int,
                 n_logits: int = N_LOGITS) -> TraceStep:
    """One row of an engine Step (run with capture=True) as plain data."""
    if step.context is None or step.attn is None:
        raise TypeError("capture_step needs a Step generated with capture=True")
    context = step.context[row]
    S = len(context)
    # Real tokens are the last S keys (prompts are left-padded); 5 decimals keep the JSON small.
    attention = [round_list(a[row, :, -S:], 5) for a in step.attn]
    logits_V = step.logits_BxV[row]
    probs_V = step.probs_BxV[row]
    lse = logits_V.logsumexp(dim=-1)
    logp_V = logits_V - lse
    ids_K = torch.cat([logits_V.topk(min(n_logits, logits_V.shape[-1])).indices, step.tokens_B[row:row + 1]])
    K = len(ids_K)
    numbers = _round_sig(torch.cat([
        logits_V[ids_K], logp_V[ids_K].exp(), probs_V[ids_K],
        -(logp_V.exp() * logp_V).sum(dim=-1, keepdim=True) / math.log(2),  # entropy, from the log-probs at hand
        entropy_bits(probs_V)[None], lse[None]]))
    logits, ps, p_samples = numbers[:K], numbers[K:2 * K], numbers[2 * K:3 * K]
    entropy, entropy_sample, lse = numbers[3 * K:]
    candidates = [Candidate(token=label(i), id=i, logit=lg, p=p, p_sample=q)
                  for i, lg, p, q in zip(ids_K.tolist(), logits, ps, p_samples)]
    return TraceStep(
        tokens=[label(i) for i in context], token_ids=list(context), start=start, attention=attention,
        candidates=candidates[:-1], chosen=candidates[-1], entropy=entropy, entropy_sample=entropy_sample,
        logsumexp=lse, finish=step.finish[row],
    )


def explain(model: GPT, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig, *,
            top: int = 5, info: dict | None = None, n_logits: int = N_LOGITS) -> GPTTrace:
    """Generate cfg.max_new_tokens tokens after `prompt`, recording every step."""
    cfg.validate()
    ids = encode_prompts(tokenizer, [prompt])
    tracker = TextTracker(tokenizer, ids[0], cfg.stop)
    generator = make_generator(cfg.seed, model.tok_emb.weight.device)
    label = token_labels(tokenizer)
    steps = []
    n_prompt = len(ids[0])
    for step in text_steps(model, tokenizer, ids, [tracker], cfg, generator, capture=True):
        assert step.context is not None  # capture=True records it
        start = n_prompt + step.index - len(step.context[0])
        steps.append(capture_step(step, 0, label, start, max(n_logits, top)))
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
