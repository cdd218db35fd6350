"""Export a GPT-2-shaped gptlab model to the Hugging Face `transformers` GPT-2 format.

The `small` preset (and any pre-LN, GELU, tied-output, final-LayerNorm model) is GPT-2's
architecture, so export is a renaming of tensors: GPT-2's Conv1D layers store weights as
(in, out), the transpose of nn.Linear. The result loads with
`transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`
without gptlab installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from gptlab.checkpoint import TOKENIZER, atomic_save_tensors, atomic_write_json, load_checkpoint
from gptlab.data.tokenizer import EOT, PAD, UNK
from gptlab.errors import UserError


def check_gpt2_shaped(cfg) -> None:
    wrong = []
    if cfg.norm != "pre":
        wrong.append("norm=post (GPT-2 is pre-LN)")
    if cfg.activation != "gelu":
        wrong.append(f"activation={cfg.activation} (GPT-2 uses GELU)")
    if not cfg.tie_embeddings:
        wrong.append("untied output layer")
    if not cfg.final_norm:
        wrong.append("no final LayerNorm")
    if not cfg.bias:
        wrong.append("no biases")
    if cfg.head_size * cfg.n_head != cfg.d_model:
        wrong.append("head_dim x n_head != d_model")
    if wrong:
        raise UserError(f"this model is not GPT-2 shaped ({'; '.join(wrong)}): only models like the `small` "
                        "preset export to the Hugging Face GPT-2 format")


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    linear = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
    norms = {"ln_attn": "ln_1", "ln_mlp": "ln_2"}
    for i in range(model.cfg.n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in linear.items():
            out[dst + b + ".weight"] = sd[src + a + ".weight"].t().contiguous()  # Conv1D is (in, out)
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
        for a, b in norms.items():
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            out[dst + b + ".bias"] = sd[src + a + ".bias"]
    return out


def gpt2_config(cfg, tok) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
        "activation_function": "gelu_new",  # tanh-approximate GELU, as gptlab's MLP
        "layer_norm_epsilon": cfg.ln_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "initializer_range": 0.02, "tie_word_embeddings": True, "scale_attn_weights": True,
        "bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
    }


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    model, tok, cfg = load_checkpoint(model_dir, "cpu")
    if cfg["kind"] != "gpt":
        raise UserError(f"{model_dir} is a {cfg['kind']} model: only GPTs export to the GPT-2 format")
    check_gpt2_shaped(model.cfg)
    out = Path(out_dir)
    if out.resolve() == Path(model_dir).resolve():
        raise UserError("--out must differ from the model folder: the export writes its own config.json")
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / "model.safetensors", gpt2_state_dict(model), metadata={"format": "pt"})
    shutil.copyfile(Path(model_dir) / TOKENIZER, out / (TOKENIZER + ".tmp"))
    os.replace(out / (TOKENIZER + ".tmp"), out / TOKENIZER)
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.context_length,
        "eos_token": EOT, "bos_token": EOT, "pad_token": PAD, "unk_token": UNK,
        "clean_up_tokenization_spaces": False,
    })
    atomic_write_json(out / "generation_config.json", {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id,
                                                       "pad_token_id": tok.pad_id})
    atomic_write_json(out / "config.json", gpt2_config(model.cfg, tok))
    return out
