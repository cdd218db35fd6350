"""Import a Hugging Face GPT-2-family folder (GPT-2, DistilGPT-2, gptlab's own export) as a gptlab GPT.

The folder holds `config.json` (`model_type: gpt2`), `model.safetensors`, and `tokenizer.json` or
`vocab.json` + `merges.txt`. GPT-2 is gptlab's `small` architecture (pre-LN, tanh GELU, tied
output, final LayerNorm), so import is a renaming of tensors: the one table below, which export
reads too. A `pytorch_model.bin` is a pickle (loading one can run code), so it is refused.

Special tokens: a GPT-2 tokenizer has only <|endoftext|>. gptlab's Tokenizer also wants a pad
and an unknown id; both are mapped to <|endoftext|>'s id. Neither changes a result: padding is
always hidden by the key mask (and the pad id is dropped when decoding, as <|endoftext|> is as a
special token anyway), and byte-level BPE has no unknown text. A tokenizer that has gptlab's
[PAD]/[UNK] (one gptlab exported) keeps them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

import gptlab.checkpoint as ckpt
from gptlab.data.tokenizer import EOT, PAD, UNK, Tokenizer, starts_with
from gptlab.errors import UserError
from gptlab.model import GPT, ModelConfig
from gptlab.model.config import MAX_PARAMS

SOURCE = "huggingface"  # config dict "source" of a model read from an HF folder
PICKLES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
VOCAB, MERGES = "vocab.json", "merges.txt"
# GPT-2's activation names whose function is gptlab's: "gelu_new" and "gelu_pytorch_tanh" are both
# the tanh approximation gptlab's MLP uses ("gelu" is the exact erf form, which differs by ~1e-3).
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
# GPT-2's Conv1D layers store weights (in, out), the transpose of nn.Linear's (out, in).
_LINEAR = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
_NORMS = {"ln_attn": "ln_1", "ln_mlp": "ln_2"}
# Buffers some GPT-2 files carry (the causal mask): gptlab builds its own.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def gpt2_names(n_layer: int) -> dict[str, tuple[str, bool]]:
    """gptlab tensor name -> (GPT-2 name without "transformer.", transposed?), for the tied model
    (lm_head.weight is tok_emb.weight). Export and import both read this table."""
    names = {"tok_emb.weight": ("wte.weight", False), "pos_emb.weight": ("wpe.weight", False),
             "ln_f.weight": ("ln_f.weight", False), "ln_f.bias": ("ln_f.bias", False)}
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"h.{i}."
        for a, b in _LINEAR.items():
            names[src + a + ".weight"] = (dst + b + ".weight", True)
            names[src + a + ".bias"] = (dst + b + ".bias", False)
        for a, b in _NORMS.items():
            for p in ("weight", "bias"):
                names[f"{src}{a}.{p}"] = (f"{dst}{b}.{p}", False)
    return names


# -- recognising and reading config.json --------------------------------------------------------
def is_hf_config(raw: Any) -> bool:
    """A transformers config.json (it names a model_type or architectures), not a gptlab one."""
    return isinstance(raw, dict) and "kind" not in raw and ("model_type" in raw or "architectures" in raw)


def _check_supported(raw: dict, where: Path) -> None:
    model_type, archs = raw.get("model_type"), raw.get("architectures") or []
    if model_type != "gpt2":
        raise UserError(f"{where}: model_type {model_type!r} ({', '.join(map(str, archs)) or 'no architectures'}) "
                        "is not supported: gptlab loads GPT-2-family models (model_type gpt2) only")
    refused = {"add_cross_attention": True, "scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True}
    for key, bad in refused.items():
        if raw.get(key, not bad) == bad:
            raise UserError(f"{where}: {key}={bad} is a GPT-2 variant gptlab's attention does not compute: "
                            "only standard GPT-2 models load")
    act = raw.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise UserError(f"{where}: activation_function {act!r} is not one gptlab computes exactly "
                        f"(it has {', '.join(ACTIVATIONS)}): this model's logits would differ")


def model_config_of(raw: dict, where: Path) -> ModelConfig:
    """gptlab's ModelConfig of a GPT-2 config.json (transformers' defaults for keys it omits)."""
    _check_supported(raw, where)
    n_embd = raw.get("n_embd", 768)
    values = {
        "vocab_size": raw.get("vocab_size", 50257), "context_length": raw.get("n_positions", 1024),
        "d_model": n_embd, "n_layer": raw.get("n_layer", 12), "n_head": raw.get("n_head", 12), "head_dim": 0,
        # transformers' n_inner null means 4 x n_embd
        "d_ff": raw.get("n_inner") or (4 * n_embd if isinstance(n_embd, int) else n_embd),
        "dropout": 0.0, "attn_dropout": 0.0,  # gptlab loads for inference: no dropout
        "norm": "pre", "ln_eps": raw.get("layer_norm_epsilon", 1e-5),
        "activation": ACTIVATIONS[raw.get("activation_function", "gelu_new")],
        "tie_embeddings": raw.get("tie_word_embeddings", True), "head_bias": False, "bias": True, "final_norm": True,
    }
    try:
        cfg = ModelConfig.from_dict(values)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}: this GPT-2 config.json describes no model gptlab can build") from None
    return cfg


def gptlab_config(raw: dict, where: Path) -> dict:
    """The gptlab config dict (kind "gpt") of a GPT-2 config.json, marked as coming from Hugging Face."""
    return {"kind": "gpt", "model": model_config_of(raw, where).to_dict(), "source": SOURCE,
            "hf_model_type": raw.get("model_type"), "hf_architectures": raw.get("architectures")}


# -- weights ------------------------------------------------------------------------------------------
def _weights_path(d: Path) -> Path:
    p = d / ckpt.WEIGHTS
    if p.is_file():
        return p
    for name in PICKLES:
        if (d / name).exists():
            raise UserError(f"{d / name} is a pickle, which gptlab never loads (it can run code): convert it to "
                            "model.safetensors, e.g. transformers' save_pretrained(dir, safe_serialization=True)")
    if (d / (ckpt.WEIGHTS + ".index.json")).exists():
        raise UserError(f"{d} holds sharded weights (model.safetensors.index.json): gptlab loads one "
                        "model.safetensors; save it unsharded (save_pretrained(dir, max_shard_size='100GB'))")
    raise UserError(f"{p} is missing: a Hugging Face model folder needs config.json and model.safetensors")


def _hf_name(name: str) -> str | None:
    """A file's tensor name in the table's spelling (no "transformer." prefix); None for a buffer."""
    short = name.removeprefix("transformer.")
    return None if short.endswith(_BUFFERS) else short


def _plan(cfg: ModelConfig) -> dict[str, tuple[str, bool, tuple[int, ...]]]:
    """gptlab name -> (GPT-2 name, transposed?, shape in the file) of every tensor to read."""
    plan = {}
    shapes = ckpt.planned_tensors({"kind": "gpt", "model": cfg.to_dict()})
    for name, (hf, transposed) in gpt2_names(cfg.n_layer).items():
        shape = shapes[name]
        plan[name] = (hf, transposed, shape[::-1] if transposed else shape)
    if not cfg.tie_embeddings:
        plan["lm_head.weight"] = ("lm_head.weight", False, (cfg.vocab_size, cfg.d_model))
    return plan


def check_hf_weights(cfg: ModelConfig, path: Path, max_params: int = MAX_PARAMS) -> int:
    """The parameter count, once the file's header has every tensor `cfg` needs in the right shape
    and type and the count is within `max_params`; a one-line UserError otherwise. Header only."""
    header = {short: v for k, v in ckpt.read_header(path).items() if (short := _hf_name(k)) is not None}
    plan = _plan(cfg)
    for hf, _, shape in plan.values():
        if hf not in header:
            raise UserError(f"{path} has no tensor {hf} (nor transformer.{hf}), which its config.json needs: "
                            "weights and config come from different models")
        dtype, saved = header[hf]
        if saved != shape:
            raise UserError(f"{path}: tensor {hf} has shape {saved}, config.json says {shape}: "
                            "weights and config come from different models")
        if dtype not in ckpt.FLOAT_DTYPES:
            raise UserError(f"{path}: tensor {hf} holds {dtype} values, not floating point: not a GPT-2 model")
    return ckpt.check_param_count(sum(math.prod(shape) for _, _, shape in plan.values()), max_params, path.parent)


def load_hf_weights(model: GPT, path: Path) -> None:
    """Copy the file's tensors (checked by check_hf_weights) into `model`, transposing Conv1D weights."""
    try:
        tensors = {short: t for k, t in load_file(str(path)).items() if (short := _hf_name(k)) is not None}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is truncated or not a safetensors file ({str(e)[:80]}): copy it again") from None
    state = {name: (tensors[hf].t() if transposed else tensors[hf]).float()
             for name, (hf, transposed, _) in _plan(model.cfg).items()}
    model.load_state_dict(state, strict=False)  # strict=False: lm_head.weight is tok_emb.weight when tied


# -- tokenizer ----------------------------------------------------------------------------------------
class GPT2Tokenizer(Tokenizer):
    """gptlab's Tokenizer over a GPT-2 tokenizer, which has <|endoftext|> as its only special token:
    pad and unk are its id too (see the module's docstring for why that changes no result)."""

    # Not Tokenizer.__init__: it requires [PAD] and [UNK], which GPT-2's vocabulary lacks.
    def __init__(self, hf: HFTokenizer, where: Path):
        eot_id = hf.token_to_id(EOT)
        if eot_id is None:
            raise UserError(f"{where}: the tokenizer has no {EOT} token, which every GPT-2 tokenizer has: "
                            "is it from another model?")
        self.hf, self.kind = hf, "bpe"
        self.pad_id = self.unk_id = self.eot_id = eot_id
        # GPT-2's own tokenizer adds nothing; a gptlab export carries its start token in tokenizer.json.
        self.starts_with_eot = starts_with(hf, eot_id)


def _read_hf_tokenizer(d: Path) -> tuple[HFTokenizer, Path]:
    p = d / ckpt.TOKENIZER
    if p.is_file():
        try:
            return HFTokenizer.from_file(str(p)), p
        except Exception as e:  # the Rust side raises a plain Exception with a parse message
            raise UserError(f"{p} is not a readable tokenizer.json ({str(e).splitlines()[0][:120]}): copy it again") from None
    vocab, merges = d / VOCAB, d / MERGES
    if not (vocab.is_file() and merges.is_file()):
        raise UserError(f"{d} has no tokenizer: a Hugging Face GPT-2 folder needs tokenizer.json, "
                        f"or {VOCAB} and {MERGES}")
    try:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise UserError(f"{vocab} / {merges} are not a readable BPE vocabulary ({str(e).splitlines()[0][:120]})") from None
    # GPT-2's byte-level BPE: its pre-tokenizer regex, no prefix space, bytes back to text on decode.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if hf.token_to_id(EOT) is not None:  # as transformers does: <|endoftext|> in text is the token
        hf.add_special_tokens([AddedToken(EOT, special=True)])
    return hf, vocab


def load_hf_tokenizer(d: Path, cfg: ModelConfig) -> Tokenizer:
    """The folder's tokenizer, as a gptlab Tokenizer whose ids all fit the model's vocabulary."""
    hf, where = _read_hf_tokenizer(d)
    kind = "bpe" if isinstance(hf.model, models.BPE) else "word"
    has_gptlab_specials = all(hf.token_to_id(t) is not None for t in (PAD, UNK, EOT))
    tok = Tokenizer(hf, kind) if has_gptlab_specials else GPT2Tokenizer(hf, where)
    # Some models pad their embedding beyond the tokenizer (ids never produced): more tokens than
    # the model has rows would index past its embedding.
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"{where} has {tok.vocab_size} tokens but config.json says vocab_size {cfg.vocab_size}: "
                        "the tokenizer comes from another model")
    return tok


# -- the whole folder ------------------------------------------------------------------------------------
def load_hf(model_dir: str | os.PathLike, cfg: dict, device: str | torch.device = "cpu", *,
            max_params: int = MAX_PARAMS) -> tuple[GPT, Tokenizer, dict]:
    """(GPT in eval mode, tokenizer, cfg) of an HF GPT-2 folder whose config `read_config` made.
    Everything is checked (tokenizer, weights header, size) before the model is allocated."""
    d = Path(model_dir)
    mc = ModelConfig.from_dict(cfg["model"])
    path = _weights_path(d)
    tok = load_hf_tokenizer(d, mc)
    check_hf_weights(mc, path, max_params)
    model = GPT(mc)
    load_hf_weights(model, path)
    model.to(device).eval()
    return model, tok, cfg
