"""The distribution a GPT step was (or would be) drawn from, from a trace's stored `dist`: the
sampler's pipeline of `gptlab.infer.sampling.process_logits` (temperature, then top-k, top-p,
min-p), redone in plain Python on the saved logits, so a renderer can show the true probabilities
at any temperature and grey out the words a filter removed. No torch here.

`static/trace_view.js` is the same algorithm for the browser; tests hold both to the sampler's own numbers.

A step's `dist` is either {"logits": [V floats]} (every logit, by token id) or, for a large
vocabulary, {"ids": [N], "logits": [N], "tail": {"lo", "width", "counts"}}: the top N logits and a
histogram of the others. Both become `Group`s: a group is `count` tokens that share one logit (a
single token, or a histogram bin at its middle), sorted best first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Group:
    logit: float          # the sampler's logit before temperature (after any repetition penalty)
    count: int = 1        # tokens in the group: 1, or a histogram bin's
    id: int | None = None  # the token; None for a bin of "all other words"
    p_t: float = 0.0      # each token's probability at the temperature, before the filters
    p: float = 0.0        # each kept token's probability as drawn (after the filters)
    kept: int = 1         # how many of the group's tokens the filters kept


def groups_of(dist: dict) -> list[Group]:
    """The stored logits as groups, best first (ties in id order, as a stable sort leaves them)."""
    if "ids" in dist:
        groups = [Group(lg, 1, i) for i, lg in zip(dist["ids"], dist["logits"])]
        tail = dist.get("tail") or {}
        lo, width = tail.get("lo", 0.0), tail.get("width", 1.0)
        groups += [Group(lo + (b + 0.5) * width, c, None) for b, c in enumerate(tail.get("counts", [])) if c]
    else:
        groups = [Group(lg, 1, i) for i, lg in enumerate(dist["logits"]) if lg is not None]
    groups.sort(key=lambda g: -g.logit)
    return groups


def apply_sampling(groups: list[Group], temperature: float, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0) -> list[Group]:
    """Fill in p_t, p and kept of each group (in place; returned for chaining), as the sampler would."""
    if not groups:
        return groups
    if temperature == 0:  # greedy: the best token only
        for k, g in enumerate(groups):
            g.kept = 1 if k == 0 else 0
            g.p_t = g.p = 1.0 if k == 0 else 0.0
        return groups
    z = [g.logit / temperature for g in groups]
    e = [math.exp(x - z[0]) for x in z]
    total = math.fsum(g.count * x for g, x in zip(groups, e))
    for g, x in zip(groups, e):
        g.p_t, g.kept = x / total, g.count
    vocab = sum(g.count for g in groups)
    if 0 < top_k < vocab:  # keep logits >= the k-th largest (ties with it stay, as in top_k_filter)
        before, kth = 0, z[-1]
        for g, x in zip(groups, z):
            if before < top_k <= before + g.count:
                kth = x
                break
            before += g.count
        before = 0
        for g, x in zip(groups, z):
            g.kept = (1 if x >= kth else 0) if g.id is not None else max(0, min(g.count, top_k - before))
            before += g.count
    if top_p < 1.0:  # drop a token once the tokens ranked before it reach p; the best always stays
        kept_mass = math.fsum(g.kept * x for g, x in zip(groups, e))
        mass_before, first = 0.0, True
        for g, x in zip(groups, e):
            if not g.kept:
                continue
            each, n = x / kept_mass, g.kept
            if mass_before >= top_p:
                g.kept = 1 if first else 0
            elif g.id is None:  # a bin: its tokens are kept while the mass before each is below p
                g.kept = min(n, math.ceil((top_p - mass_before) / each))
            first = False
            mass_before += n * each
    if min_p > 0.0:  # drop logits below the best kept one + log(min_p), at this temperature
        best = next(x for g, x in zip(groups, z) if g.kept)
        for g, x in zip(groups, z):
            if x < best + math.log(min_p):
                g.kept = 0
    drawn = math.fsum(g.kept * x for g, x in zip(groups, e))
    for g, x in zip(groups, e):
        g.p = x / drawn if g.kept else 0.0
    return groups


def distribution(dist: dict, temperature: float, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0) -> list[Group]:
    """The groups of a step's `dist` with their probabilities under these sampling settings."""
    return apply_sampling(groups_of(dist), temperature, top_k, top_p, min_p)
