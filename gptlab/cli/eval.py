"""`gptlab eval MODEL`: what the model learned, against the distributions of the data it learned from.

On the built-in corpus gptlab knows the generator's exact probabilities; on any other data the
reference is that data's own training split, never the built-in catalog.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from typing import Any

from gptlab.cli.common import add_device_arg, add_positionals, resolve_device
from gptlab.cli.generate import MAX_SAMPLES, LoadOptions
from gptlab.cli.options import Section, add_options, read_options
from gptlab.settings import SEED_MAX, setting


@dataclass
class EvalView(LoadOptions):
    data: str = setting("", "the data the model was trained on, when it is no longer where training read it "
                            "(default: the path in the model's config.json)")
    country: str = setting("", "country for the province check (default: germany when the data has it, else its "
                               "most common country)")
    samples: int = setting(100, "samples for template validity and distinct-2 (0 = none)", min=0, max=MAX_SAMPLES)
    temperature: float = setting(1.0, "sampling temperature", min=0)
    seed: int = setting(0, "sampling seed", min=0, max=SEED_MAX)
    val_records: int = setting(2000, "held-out records the loss is measured on (0 = the whole validation split)", min=0)
    exact: bool = setting(True, "also compute the exact probability that a sample keeps the template, summed over "
                                "every country, province and variety (seconds on the built-in corpus, half a "
                                "minute on the Kaggle data); samples only estimate it")


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure a GPT against the data it was trained on: held-out loss, next-word "
                                    "distribution, template validity and diversity of samples",
                       description="Measure a trained GPT against its own data: the held-out loss and perplexity "
                                   "on the validation records it never trained on; the total-variation distance of "
                                   "its P(province | country) from the truth (the built-in generator's exact "
                                   "probabilities, or the training split's own frequencies for any other data); and "
                                   "samples checked against the countries, provinces and varieties of that data.")
    add_positionals(p)
    add_device_arg(p)
    add_options(p, [Section("view", EvalView, "evaluation", aliases={"temperature": ["-T"]},
                            first=("data", "country", "samples", "temperature", "seed"))])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptlab import api
    from gptlab.errors import UserError

    v: EvalView = read_options(args, lambda values: {"view": EvalView()}, "eval")["view"]
    lm = api.load(args.model, device=resolve_device(args.device), max_params=v.max_params)
    if lm.kind != "gpt":
        raise UserError(f"{args.model} is a {lm.kind} model; gptlab eval measures GPTs")
    ref = _reference(lm.config, v)
    print(f"gptlab eval {args.model}: trained on {ref.source}")
    if ref.val:
        nll, n = _heldout(lm, ref.val, v.val_records)
        print(f"held-out loss {nll:.3f} nats per token, perplexity {math.exp(nll):.2f}  "
              f"({n:,} tokens of {min(len(ref.val), v.val_records or len(ref.val)):,} validation records never trained "
              "on; perplexity = e^loss, how many equally likely words the model is torn between on average)")
    if ref.provinces is None:
        if v.country:
            raise UserError(f"--country {v.country} cannot be checked: {ref.why}")
        print(f"no distribution check: {ref.why}")
    else:
        _province_table(lm, ref, v)
    if v.samples:
        _samples(lm, ref, v)
    if v.exact and ref.provinces is not None and v.temperature > 0:
        _template_mass(lm, ref, v)
    return 0


@dataclass
class Reference:
    source: str
    val: list[str]                                   # validation records (held-out loss)
    train: list[str]                                 # training records (the data's own distinct-2)
    provinces: dict[str, dict[str, float]] | None    # P(province | country) used as the truth
    varieties: set[str]
    exact: bool                                      # the generator's own probabilities, not frequencies
    weight: dict[str, float] = field(default_factory=dict)  # how common each country is
    why: str = ""


def _reference(config: dict[str, Any], v: EvalView) -> Reference:
    """The truth the model is measured against: what it was trained on, read again."""
    from gptlab.data import DataConfig, WineCatalog, load_corpus, normalize_text, split_records
    from gptlab.errors import UserError
    from gptlab.infer.quality import template_counts

    saved = config.get("data")
    if saved is None and not v.data:
        return Reference("data gptlab does not know (the model folder records none)", [], [], None, set(), False, {},
                         "pass --data FILE with the data it was trained on")
    dcfg = DataConfig(**{**(saved or {}), **({"data": v.data} if v.data else {})})
    try:
        corpus = load_corpus(dcfg)
    except UserError as e:
        if v.data:
            raise
        raise UserError(f"cannot read the data this model was trained on ({e}): pass --data FILE") from None
    train_idx, val_idx = split_records(corpus.records, dcfg.val_fraction, dcfg.seed)
    train = [corpus.records[i] for i in train_idx]
    val = [corpus.records[i] for i in val_idx]
    if dcfg.data == "builtin":
        catalog = WineCatalog()
        provinces = {c: catalog.p_province(c, normalized=True) for c in catalog.countries(normalized=True)}
        varieties = {normalize_text(name).strip() for name in catalog.varieties()}
        return Reference(corpus.source, val, train, provinces, varieties, exact=True,
                         weight=catalog.countries(normalized=True))
    counts, varieties, parsed = template_counts(train)
    if not parsed:
        return Reference(corpus.source, val, train, None, set(), False, {},
                         "its records do not follow `wine review : country : province : variety : ...`")
    provinces = {c: {p: k / sum(ps.values()) for p, k in ps.items()} for c, ps in counts.items()}
    return Reference(corpus.source, val, train, provinces, varieties, exact=False,
                     weight={c: float(sum(ps.values())) for c, ps in counts.items()})


def _heldout(lm, records: list[str], limit: int) -> tuple[float, int]:
    from gptlab.training.batches import encode_records
    from gptlab.training.tasks.causal_lm import heldout_nll

    ctx = lm.model.cfg.context_length
    seqs = encode_records(lm.tokenizer, records[:limit] if limit else records, ctx)
    lm.model.eval()
    nll, n = heldout_nll(lm.model, seqs, 64, lm.tokenizer.pad_id, ctx, device=lm.device)
    return nll / max(n, 1), n


def _province_table(lm, ref: Reference, v: EvalView) -> None:
    from gptlab.errors import UserError
    from gptlab.infer.quality import candidate_probs, tv_distance

    assert ref.provinces is not None
    country = v.country or ("germany" if "germany" in ref.provinces else max(ref.weight, key=ref.weight.__getitem__))
    if country not in ref.provinces:
        raise UserError(f"unknown country {country!r}: the data has {', '.join(sorted(ref.provinces)[:30])}")
    truth = ref.provinces[country]
    model_p = candidate_probs(lm, f"wine review : {country} :", list(truth))
    what = "truth" if ref.exact else "data"
    print(f"P(province | wine review : {country} :)   model   {what}")
    for k in sorted(truth, key=lambda k: truth[k], reverse=True)[:25]:
        print(f"  {k:<28} {model_p[k]:6.3f}  {truth[k]:6.3f}")
    if len(truth) > 25:
        print(f"  ({len(truth) - 25} rarer provinces not shown)")
    print(f"  {'(anything else)':<28} {max(0.0, 1 - sum(model_p.values())):6.3f}  {0.0:6.3f}")
    against = ("the built-in generator's exact probabilities" if ref.exact else
               "the training split's own frequencies, not any other corpus's")
    print(f"total-variation distance {tv_distance(model_p, truth):.3f}  (half the summed gaps between the columns: "
          f"0 = the same distribution, 1 = nothing in common; against {against})")


def _template_mass(lm, ref: Reference, v: EvalView) -> None:
    from gptlab.infer.quality import template_mass

    assert ref.provinces is not None
    m = template_mass(lm, {c: set(ps) for c, ps in ref.provinces.items()}, ref.varieties, temperature=v.temperature)
    pruned = f", {m.pruned:.4f} in branches too rare to follow" if m.pruned >= 0.0005 else ""
    print(f"P(a sample at T={v.temperature} keeps the template) = {m.kept:.4f} exactly  (lost {m.lost_country:.4f} at "
          f"the country, {m.lost_province:.4f} at the province, {m.lost_variety:.4f} at the variety{pruned}; "
          "the sum over every country, province and variety of the data, which samples only estimate)")


def _samples(lm, ref: Reference, v: EvalView) -> None:
    from gptlab.infer.quality import distinct_n, template_valid

    done = lm.generate("wine review :", n=v.samples, temperature=v.temperature, seed=v.seed)
    texts = ["wine review : " + c.text.strip() for c in done]
    if ref.provinces is not None:
        provs = {c: set(ps) for c, ps in ref.provinces.items()}
        ok = sum(template_valid(t, provs, ref.varieties) for t in texts)
        print(f"samples at T={v.temperature}: {ok}/{len(texts)} keep the template  (a country of the data, a province "
              "of that country and a variety of the data, then a description)")
    d2 = distinct_n([t.split(" : ", 4)[-1] for t in texts])
    line = f"distinct-2 {d2:.3f}"
    if ref.train:
        # distinct-n falls as texts are added, so the data's figure is taken on as many records as samples.
        real = random.Random(v.seed).sample(ref.train, min(len(texts), len(ref.train)))
        line += f" (the data's own: {distinct_n([r.split(' : ', 4)[-1] for r in real]):.3f})"
    print(line + "  (distinct word pairs / all word pairs in the descriptions: how varied the text is; "
                 "near the data's own figure is right, far below it means repetition)")
