"""Measuring what a trained model learned: next-word distributions against the truth, template
validity and diversity of samples. Used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import math
from collections import Counter

import torch


@torch.no_grad()
def candidate_probs(lm, prompt: str, candidates: list[str]) -> dict[str, float]:
    """P(candidate | prompt) for whole words or phrases, as the product of their tokens' probabilities.

    A word-level model gives each single-word candidate its next-token probability; a BPE model
    (or a multi-word name) multiplies the conditional probabilities of the candidate's tokens.
    """
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    ctx = model.cfg.context_length
    base = tok.encode_prompt(prompt)
    out = {}
    for cand in candidates:
        full = tok.encode_prompt(prompt + " " + cand)
        suffix = full[len(base):] if full[:len(base)] == base else tok.encode(" " + cand)
        seq = (base + suffix)[-ctx:]
        logp = torch.log_softmax(model(torch.tensor([seq], device=device)).logits[0].float(), -1)
        start = len(seq) - len(suffix)
        total = sum(float(logp[start - 1 + i, t]) for i, t in enumerate(suffix))
        out[cand] = math.exp(total)
    return out


def tv_distance(p_model: dict[str, float], p_true: dict[str, float]) -> float:
    """Total-variation distance; the model's mass outside the true support counts fully."""
    keys = set(p_model) | set(p_true)
    inside = sum(abs(p_model.get(k, 0.0) - p_true.get(k, 0.0)) for k in keys)
    outside = max(0.0, 1.0 - sum(p_model.values()))
    return 0.5 * (inside + outside)


def province_tv(lm, catalog, country: str = "germany") -> tuple[float, dict[str, float], dict[str, float]]:
    """TV between the model's P(province | `wine review : country :`) and the catalog's truth."""
    truth = catalog.p_province(country, normalized=True)
    model = candidate_probs(lm, f"wine review : {country} :", list(truth))
    return tv_distance(model, truth), model, truth


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over a set of texts (Li et al. 2016)."""
    grams: Counter = Counter()
    for t in texts:
        w = t.split()
        grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def parse_template(text: str) -> tuple[str, str, str, str] | None:
    """(country, province, variety, description) of a `wine review : c : p : v : ...` line, or None."""
    parts = [p.strip() for p in text.split(" : ", 4)]
    if len(parts) < 5 or parts[0] != "wine review":
        return None
    return parts[1], parts[2], parts[3], parts[4]


def template_valid(text: str, provinces_by_country: dict[str, set[str]], varieties: set[str]) -> bool:
    """A known country, a province of that country, a known variety, and a non-empty description."""
    parsed = parse_template(text)
    if parsed is None:
        return False
    c, p, v, d = parsed
    return c in provinces_by_country and p in provinces_by_country[c] and v in varieties and bool(d)


def template_counts(records: list[str]) -> tuple[dict[str, Counter], set[str], int]:
    """From records in the wine template: province counts per country, the varieties seen, and how
    many records parsed. A model trained on these records is measured against them (`gptlab eval`)."""
    provinces: dict[str, Counter] = {}
    varieties: set[str] = set()
    parsed = 0
    for r in records:
        t = parse_template(r)
        if t is None:
            continue
        parsed += 1
        provinces.setdefault(t[0], Counter())[t[1]] += 1
        varieties.add(t[2])
    return provinces, varieties, parsed
