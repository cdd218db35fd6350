"""`gptlab export MODEL --out DIR`: a Hugging Face transformers GPT-2 folder."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a GPT-2-shaped model to the Hugging Face transformers format",
                       description="Write DIR with config.json (model_type gpt2), model.safetensors and the "
                                   "tokenizer, loadable by transformers.AutoModelForCausalLM / AutoTokenizer.")
    p.add_argument("model", help="gptlab model folder")
    p.add_argument("--out", required=True, help="folder for the Hugging Face model")
    p.set_defaults(func=run)


def run(args) -> int:
    from gptlab.checkpoint.export import export_hf
    out = export_hf(args.model, args.out)
    print(f"exported to {out}: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
