"""Capture: run generation with attention capture on and turn each step's tensors into a TraceStep.

Only the predicting position's attention row is taken, from the same cached forward pass that
produced the logits, so explaining costs little more than generating.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch

from ..generate import Step, TextTracker, encode_prompts, text_steps
from ..sampling import SamplingConfig, entropy_bits, make_generator
from ..tokenizer import Tokenizer
from .trace import Candidate, Trace, TraceStep

N_LOGITS = 20  # candidates stored per step (with logits), so a renderer can re-weight by temperature


def _sig(x: float) -> float:
    """6 significant digits: enough for display and re-weighting, and the JSON stays readable."""
    return float(f"{x:.6g}")


def token_labels(tokenizer: Tokenizer) -> Callable[[int], str]:
    """id -> display text (a BPE token keeps its leading space; special tokens show by name)."""
    @lru_cache(maxsize=None)
    def label(i: int) -> str:
        return tokenizer.decode([i], skip_special=False) or tokenizer.id_to_token(i)  # decode drops [PAD]
    return label


def capture_step(step: Step, row: int, label: Callable[[int], str], start: int,
                 n_logits: int = N_LOGITS) -> TraceStep:
    """One row of an engine Step (run with capture=True) as plain data."""
    context = step.context[row]
    S = len(context)
    # Real tokens are the last S keys (prompts are left-padded); round to keep the JSON small.
    attention = [(torch.round(a[row, :, -S:].double() * 1e5) / 1e5).tolist() for a in step.attn]
    logits_V = step.logits_BxV[row]
    probs_V = step.probs_BxV[row]
    lse = torch.logsumexp(logits_V.double(), dim=-1)
    top_logits, top_ids = logits_V.topk(min(n_logits, logits_V.shape[-1]))

    def candidate(i: int, logit: float) -> Candidate:
        return Candidate(token=label(i), id=i, logit=_sig(logit), p=_sig(float((logit - lse).exp())),
                         p_sample=_sig(float(probs_V[i])))

    chosen = int(step.tokens_B[row])
    return TraceStep(
        tokens=[label(i) for i in context], token_ids=list(context), start=start, attention=attention,
        candidates=[candidate(i, lg) for i, lg in zip(top_ids.tolist(), top_logits.tolist())],
        chosen=candidate(chosen, float(logits_V[chosen])),
        entropy=_sig(float(entropy_bits(logits_V.double().softmax(-1)))),
        entropy_sample=_sig(float(entropy_bits(probs_V))),
        logsumexp=_sig(float(lse)), finish=step.finish[row],
    )


def model_info(model: torch.nn.Module, tokenizer: Tokenizer, kind: str = "gpt", path=None) -> dict:
    cfg = model.cfg
    return {"kind": kind, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "context_length": cfg.context_length,
            "tokenizer": tokenizer.kind, "path": None if path is None else str(path)}


def explain(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig, *,
            top: int = 5, info: dict | None = None, n_logits: int = N_LOGITS) -> Trace:
    """Generate cfg.max_new_tokens tokens after `prompt`, recording every step."""
    cfg.validate()
    ids = encode_prompts(tokenizer, [prompt])
    tracker = TextTracker(tokenizer, ids[0], cfg.stop)
    generator = make_generator(cfg.seed, model.tok_emb.weight.device)
    label = token_labels(tokenizer)
    steps = []
    n_prompt = len(ids[0])
    for step in text_steps(model, tokenizer, ids, [tracker], cfg, generator, capture=True):
        start = n_prompt + step.index - len(step.context[0])
        steps.append(capture_step(step, 0, label, start, max(n_logits, top)))
    return Trace(
        prompt=prompt, prompt_tokens=[label(i) for i in ids[0]], completion=tracker.text,
        finish_reason=steps[-1].finish if steps else None,
        model=info or model_info(model, tokenizer), sampling=cfg.to_dict(), top=top, steps=steps,
    )
