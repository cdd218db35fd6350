"""Capture: run generation with attention capture on and turn each step's tensors into a TraceStep.

Only the predicting position's attention row is taken, from the same cached forward pass that
produced the logits, so explaining costs little more than generating.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch

from gptlab.infer.generate import Step, TextTracker, encode_prompts, text_steps
from gptlab.infer.sampling import SamplingConfig, entropy_bits, make_generator
from gptlab.data.tokenizer import Tokenizer
from gptlab.explain.trace import Candidate, Trace, TraceStep

N_LOGITS = 20  # candidates stored per step (with logits), so a renderer can re-weight by temperature


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
    # Real tokens are the last S keys (prompts are left-padded); 5 decimals keep the JSON small.
    attention = [(torch.round(a[row, :, -S:].double() * 1e5) / 1e5).tolist() for a in step.attn]
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
        model=info or model_info(model, tokenizer), top=top, steps=steps,
        # The seed actually used, so an unseeded explanation can still be reproduced.
        sampling={**cfg.to_dict(), "seed": generator.initial_seed()},
    )
