"""`gptlab eval MODEL`: what the model learned, against the truth where gptlab knows it."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: next-word distribution vs the built-in corpus's truth, "
                                    "template validity and diversity of samples",
                       description="Measure a trained GPT. On the built-in wine corpus gptlab knows the true "
                                   "P(province | country), so it reports the total-variation distance of the "
                                   "model's next-word distribution from it; on any wine model it samples and "
                                   "checks the template.")
    p.add_argument("model", help="model folder (holds config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--country", default="germany", help="country for the province check (default: germany)")
    p.add_argument("--samples", type=int, default=50, help="samples for template validity and distinct-2 (default: 50)")
    p.add_argument("-T", "--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptlab import load
    from gptlab.data import WineCatalog, normalize_text
    from gptlab.errors import UserError
    from gptlab.infer.quality import distinct_n, province_tv, template_valid

    if args.samples < 0:
        raise UserError(f"--samples must be >= 0 (got {args.samples})")
    lm = load(args.model)
    if lm.kind != "gpt":
        raise UserError(f"{args.model} is a {lm.kind} model; gptlab eval measures GPTs")
    catalog = WineCatalog()
    if args.country not in catalog.countries():
        raise UserError(f"unknown country {args.country!r}: the built-in catalog has {', '.join(sorted(catalog.countries()))}")
    tv, model_p, true_p = province_tv(lm, catalog, args.country)
    print(f"P(province | wine review : {args.country} :)   model   truth")
    for k in sorted(true_p, key=lambda k: true_p[k], reverse=True):
        print(f"  {k:<28} {model_p[k]:6.3f}  {true_p[k]:6.3f}")
    print(f"  {'(anything else)':<28} {max(0.0, 1 - sum(model_p.values())):6.3f}  {0.0:6.3f}")
    print(f"total-variation distance: {tv:.3f}")
    if args.samples:
        done = lm.generate("wine review :", n=args.samples, temperature=args.temperature, seed=args.seed)
        texts = ["wine review : " + c.text.strip() for c in done]
        provs = {c: set(catalog.p_province(c, normalized=True)) for c in catalog.countries(normalized=True)}
        varieties = {normalize_text(v).strip() for v in catalog.varieties()}
        ok = sum(template_valid(t, provs, varieties) for t in texts)
        print(f"samples at T={args.temperature}: {ok}/{len(texts)} keep the template with a known country, "
              f"a province of it and a known variety; distinct-2 {distinct_n([t.split(' : ', 4)[-1] for t in texts]):.3f}")
    return 0
