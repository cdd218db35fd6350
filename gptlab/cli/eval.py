"""`gptlab eval MODEL`: what the model learned, against the truth where gptlab knows it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gptlab.cli.common import add_device_arg, add_positionals, resolve_device
from gptlab.cli.generate import MAX_SAMPLES, LoadOptions
from gptlab.cli.options import Section, add_options, read_options
from gptlab.settings import SEED_MAX, setting


@dataclass
class EvalView(LoadOptions):
    country: str = setting("germany", "country for the province check")
    samples: int = setting(50, "samples for template validity and distinct-2 (0 = none)", min=0, max=MAX_SAMPLES)
    temperature: float = setting(1.0, "sampling temperature", min=0)
    seed: int = setting(0, "sampling seed", min=0, max=SEED_MAX)


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: next-word distribution vs the built-in corpus's truth, "
                                    "template validity and diversity of samples",
                       description="Measure a trained GPT. On the built-in wine corpus gptlab knows the true "
                                   "P(province | country), so it reports the total-variation distance of the "
                                   "model's next-word distribution from it; on any wine model it samples and "
                                   "checks the template.")
    add_positionals(p)
    add_device_arg(p)
    add_options(p, [Section("view", EvalView, "evaluation", aliases={"temperature": ["-T"]},
                            first=("country", "samples", "temperature", "seed"))])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptlab import api
    from gptlab.data import WineCatalog, normalize_text
    from gptlab.errors import UserError
    from gptlab.infer.quality import distinct_n, province_tv, template_valid

    v: EvalView = read_options(args, lambda values: {"view": EvalView()}, "eval")["view"]
    catalog = WineCatalog()
    if v.country not in catalog.countries():  # checked before the model is read
        raise UserError(f"unknown country {v.country!r}: the built-in catalog has {', '.join(sorted(catalog.countries()))}")
    lm = api.load(args.model, device=resolve_device(args.device), max_params=v.max_params)
    if lm.kind != "gpt":
        raise UserError(f"{args.model} is a {lm.kind} model; gptlab eval measures GPTs")
    tv, model_p, true_p = province_tv(lm, catalog, v.country)
    print(f"P(province | wine review : {v.country} :)   model   truth")
    for k in sorted(true_p, key=lambda k: true_p[k], reverse=True):
        print(f"  {k:<28} {model_p[k]:6.3f}  {true_p[k]:6.3f}")
    print(f"  {'(anything else)':<28} {max(0.0, 1 - sum(model_p.values())):6.3f}  {0.0:6.3f}")
    print(f"total-variation distance: {tv:.3f}")
    if v.samples:
        done = lm.generate("wine review :", n=v.samples, temperature=v.temperature, seed=v.seed)
        texts = ["wine review : " + c.text.strip() for c in done]
        provs = {c: set(catalog.p_province(c, normalized=True)) for c in catalog.countries(normalized=True)}
        varieties = {normalize_text(name).strip() for name in catalog.varieties()}
        ok = sum(template_valid(t, provs, varieties) for t in texts)
        print(f"samples at T={v.temperature}: {ok}/{len(texts)} keep the template with a known country, "
              f"a province of it and a known variety; distinct-2 {distinct_n([t.split(' : ', 4)[-1] for t in texts]):.3f}")
    return 0
