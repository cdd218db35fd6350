"""`gptlab export MODEL --out DIR`: a Hugging Face transformers GPT-2 folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gptlab.cli.common import add_positionals
from gptlab.cli.generate import LoadOptions
from gptlab.cli.options import Section, add_options, read_options
from gptlab.errors import UserError
from gptlab.settings import setting


@dataclass
class ExportView(LoadOptions):
    out: str | None = setting(None, "folder for the Hugging Face model (required; created if missing)")
    overwrite: bool = setting(False, "replace what a non-empty --out holds (never a gptlab model folder)")


def register(sub) -> None:
    p = sub.add_parser("export", help="export a GPT-2-shaped model to the Hugging Face transformers format",
                       description="Write DIR with config.json (model_type gpt2), model.safetensors and the "
                                   "tokenizer, loadable by transformers.AutoModelForCausalLM / AutoTokenizer. "
                                   "The folder is written whole or not at all.")
    add_positionals(p, model_help="gptlab model folder to export")
    add_options(p, [Section("view", ExportView, "export", first=("out", "overwrite"))])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptlab.checkpoint.export import export_hf
    v: ExportView = read_options(args, lambda values: {"view": ExportView()}, "export")["view"]
    if not v.out:
        raise UserError("--out is required: the folder to write the Hugging Face model to")
    out = export_hf(args.model, v.out, overwrite=v.overwrite, max_params=v.max_params)
    print(f"exported to {out}: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
