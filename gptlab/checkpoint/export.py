"""Export a GPT-2-shaped gptlab model to the Hugging Face `transformers` GPT-2 format.

The `small` and `fast` presets (and any pre-LN, GELU, final-LayerNorm model whose output layer is
tied or has no bias) are GPT-2's architecture, so export is a renaming of tensors: GPT-2's Conv1D
layers store weights as (in, out), the transpose of nn.Linear. The result loads with
`transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`
without gptlab installed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Regex, decoders
from tokenizers import Tokenizer as HFTokenizer

from gptlab.checkpoint import (
    CONFIG,
    TOKENIZER,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    model_config,
    read_config,
)
from gptlab.checkpoint.hf import gpt2_names
from gptlab.data.tokenizer import EOT, PAD, UNK, Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT
from gptlab.model.config import MAX_PARAMS
from gptlab.settings import check_writable


def check_gpt2_shaped(cfg) -> None:
    wrong = []
    if cfg.norm != "pre":
        wrong.append("norm=post (GPT-2 is pre-LN)")
    if cfg.activation != "gelu":
        wrong.append(f"activation={cfg.activation} (GPT-2 uses GELU)")
    if not cfg.tie_embeddings and cfg.bias and cfg.head_bias:
        wrong.append("a bias on the untied output layer (GPT-2's has none)")
    if not cfg.final_norm:
        wrong.append("no final LayerNorm")
    if not cfg.bias:
        wrong.append("no biases")
    if cfg.head_size * cfg.n_head != cfg.d_model:
        wrong.append("head_dim x n_head != d_model")
    if wrong:
        raise UserError(f"this model is not GPT-2 shaped ({'; '.join(wrong)}): only models like the `small` and `fast` "
                        "presets export to the Hugging Face GPT-2 format")


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under GPT-2's names (hf.gpt2_names: the table import reads too)."""
    sd = model.state_dict()
    out = {}
    for name, (hf_name, transposed) in gpt2_names(model.cfg.n_layer).items():
        t = sd[name]
        out["transformer." + hf_name] = t.t().contiguous() if transposed else t  # Conv1D is (in, out)
    if not model.cfg.tie_embeddings:  # GPT2LMHeadModel's lm_head is an nn.Linear: (out, in) as ours
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def gpt2_config(cfg, tok) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
        "activation_function": "gelu_new",  # tanh-approximate GELU, as gptlab's MLP
        "layer_norm_epsilon": cfg.ln_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_embeddings, "scale_attn_weights": True,
        "bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
    }


def _is_gptlab_model(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "kind" in cfg and "model" in cfg


def check_target(model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, an --out that would destroy something: the
    model itself (or a folder holding it), another gptlab model, or files not asked to be replaced."""
    check_writable(out_dir, "--out", folder=True)
    src, out = Path(model_dir).resolve(), Path(out_dir).resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise UserError(f"--out {out_dir} would overwrite the model being exported ({model_dir}): "
                        "pick a folder outside it")
    if out.is_dir() and any(out.iterdir()):
        if _is_gptlab_model(out):
            raise UserError(f"--out {out_dir} holds a gptlab model, which export never replaces: pick another folder")
        if not overwrite:
            raise UserError(f"--out {out_dir} is not empty: pass --overwrite to replace what it holds, "
                            "or pick a new or empty folder")


def _write_tokenizer(path: Path, tok: Tokenizer) -> None:
    """The model's tokenizer.json, made to decode a continuation as `transformers` pipelines use it.

    A pipeline returns the prompt + the decoded new tokens. Word-level tokens have no spaces of their
    own (gptlab joins them with one), so without a decoder `germany :` + `mosel` reads `germany :mosel`;
    here every word decodes with its leading space, as gptlab's completions start with one.
    """
    hf = HFTokenizer.from_str(tok.hf.to_str())
    if tok.kind == "word":
        hf.decoder = decoders.Sequence([decoders.Replace(Regex("^"), " "), decoders.Fuse()])
    atomic_write_text(path, hf.to_str(pretty=True))


def _write_folder(folder: Path, model_dir: Path, model: GPT, tok: Tokenizer) -> None:
    cfg = model.cfg
    atomic_save_tensors(folder / "model.safetensors", gpt2_state_dict(model), metadata={"format": "pt"})
    _write_tokenizer(folder / TOKENIZER, tok)
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.context_length,
        "eos_token": EOT, "bos_token": EOT, "pad_token": PAD, "unk_token": UNK,
        "clean_up_tokenization_spaces": False,
    })
    atomic_write_json(folder / "generation_config.json", {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id,
                                                          "pad_token_id": tok.pad_id})
    atomic_write_json(folder / "config.json", gpt2_config(cfg, tok))


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, replacing what was there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # the previous folder goes back: a failed export changes nothing
        raise
    shutil.rmtree(old, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of `path` that does not exist yet (what mkdir(parents=True) creates)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
              max_params: int = MAX_PARAMS) -> Path:
    """Write the Hugging Face GPT-2 folder of a gptlab GPT at `out_dir`, whole or not at all: it is
    written beside `out_dir` under a temporary name and renamed into place when complete."""
    cfg = read_config(model_dir)
    check_target(model_dir, out_dir, overwrite)
    if cfg["kind"] != "gpt":
        raise UserError(f"{model_dir} is a {cfg['kind']} model: only GPTs export to the GPT-2 format")
    check_gpt2_shaped(model_config(cfg))
    model, tok, _ = load_checkpoint(model_dir, "cpu", max_params=max_params)
    out = Path(out_dir).absolute()
    created = _first_missing(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    try:
        tmp.mkdir()
        _write_folder(tmp, Path(model_dir), model, tok)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return Path(out_dir)
