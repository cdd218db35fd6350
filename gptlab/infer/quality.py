"""Measuring what a trained model learned: next-word distributions against the truth, template
validity and diversity of samples. Used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch


def candidate_probs(lm, prompt: str, candidates: list[str]) -> dict[str, float]:
    """P(candidate | prompt) for whole words or phrases, as the product of their tokens' probabilities.

    A word-level model gives each single-word candidate its next-token probability; a BPE model
    (or a multi-word name) multiplies the conditional probabilities of the candidate's tokens.
    """
    logp, _ = continuation_logprobs(lm, prompt, candidates, distinct=False)
    return {cand: math.exp(lp) for cand, lp in logp.items()}


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


@torch.no_grad()
def continuation_logprobs(lm, prefix: str, candidates: list[str], *, temperature: float = 1.0,
                          distinct: bool = True, batch: int = 256) -> tuple[dict[str, float], dict[str, float]]:
    """For each candidate: log P(' cand' | prefix) at a temperature, and the log-probability that
    end-of-text comes right after it; from batched forwards over right-padded sequences.

    distinct: for sums over names, which a sampled text matches as words: two candidates the
    tokenizer encodes alike count once (the first), and one with an out-of-vocabulary word is left
    out (it decodes to the unknown token, which no name matches). False scores every candidate.
    """
    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    ctx = model.cfg.context_length
    base = tok.encode_prompt(prefix)
    unk = getattr(tok, "unk_id", None)
    kept: list[tuple[str, list[int], int]] = []  # (candidate, ids of prefix + candidate, ids of the candidate)
    seen: set[tuple[int, ...]] = set()
    for cand in candidates:
        full = tok.encode_prompt(f"{prefix} {cand}")
        suffix = full[len(base):] if full[:len(base)] == base else tok.encode(" " + cand)
        key = tuple(suffix)
        if distinct and (not suffix or key in seen or (unk is not None and unk in key)):
            continue
        seen.add(key)
        seq = (base + suffix)[-ctx:]
        kept.append((cand, seq, len(suffix)))
    logp: dict[str, float] = {}
    logp_end: dict[str, float] = {}
    for i in range(0, len(kept), batch):
        chunk = kept[i:i + batch]
        width = max(len(seq) for _, seq, _ in chunk)
        x_BxT = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long)
        for j, (_, seq, _) in enumerate(chunk):
            x_BxT[j, :len(seq)] = torch.tensor(seq)
        # Right padding: a causal model's positions before the padding never see it.
        h_BxTxC = model(x_BxT.to(device), return_hidden=True, return_logits=False).hidden
        # The output layer and softmax only where they are read: the n + 1 positions that predict
        # each candidate's ids and what follows it (with a large vocabulary, most of the work).
        row_N = torch.cat([torch.full((n + 1,), j) for j, (_, _, n) in enumerate(chunk)])
        pos_N = torch.cat([torch.arange(len(seq) - n - 1, len(seq)) for _, seq, n in chunk])
        lp_NxV = torch.log_softmax(model.lm_head(h_BxTxC[row_N.to(device), pos_N.to(device)]).float() / temperature,
                                   -1).cpu()
        at = 0
        for cand, seq, n in chunk:
            targets = torch.tensor(seq[len(seq) - n:])
            logp[cand] = float(lp_NxV[at:at + n].gather(1, targets[:, None]).sum())
            logp_end[cand] = float(lp_NxV[at + n, tok.eot_id])
            at += n + 1
    return logp, logp_end


@dataclass
class TemplateMass:
    """How much of a model's probability keeps the wine template (see `template_mass`)."""
    kept: float          # P(a known country, a province of it, a known variety, then a description)
    lost_country: float  # P(the first field is not a known country)
    lost_province: float  # P(a known country, then no province of it)
    lost_variety: float  # P(country and province right, then no known variety or no description)
    pruned: float        # probability in branches below min_mass, not followed (counted as lost)


def template_mass(lm, provinces_by_country: dict[str, set[str]], varieties: set[str], *,
                  temperature: float = 1.0, min_mass: float = 1e-5) -> TemplateMass:
    """The exact probability that a sample from `wine review :` keeps the template, which 100
    samples only estimate to +-3 points: the sum over the tree country -> province -> variety of the
    model's probabilities of each name followed by ` :`, times the chance that a description (not
    end-of-text) follows. Branches with less than `min_mass` are not followed, so `kept` is a lower
    bound short of the truth by at most `pruned`. One batched forward per (country, province) over
    all varieties: seconds for the built-in corpus, ~30 s for the Kaggle data's ~400 pairs."""
    prompt = "wine review :"
    country_lp, _ = continuation_logprobs(lm, prompt, [f"{c} :" for c in sorted(provinces_by_country)],
                                          temperature=temperature)
    kept = lost_province = lost_variety = pruned = 0.0
    for c_colon, lp_c in country_lp.items():
        p_c = math.exp(lp_c)
        if p_c < min_mass:
            pruned += p_c
            continue
        country = c_colon[:-2]
        prefix = f"{prompt} {country} :"
        prov_lp, _ = continuation_logprobs(lm, prefix, [f"{p} :" for p in sorted(provinces_by_country[country])],
                                           temperature=temperature)
        lost_province += p_c * (1.0 - sum(math.exp(v) for v in prov_lp.values()))
        for p_colon, lp_p in prov_lp.items():
            p_cp = p_c * math.exp(lp_p)
            if p_cp < min_mass:
                pruned += p_cp
                continue
            var_lp, end_lp = continuation_logprobs(lm, f"{prefix} {p_colon}", [f"{v} :" for v in sorted(varieties)],
                                                   temperature=temperature)
            ok = sum(math.exp(lp) * (1.0 - math.exp(end_lp[v])) for v, lp in var_lp.items())
            kept += p_cp * ok
            lost_variety += p_cp * (1.0 - ok)
    lost_country = 1.0 - sum(math.exp(v) for v in country_lp.values())
    return TemplateMass(kept, max(lost_country, 0.0), max(lost_province, 0.0), max(lost_variety, 0.0), pruned)
