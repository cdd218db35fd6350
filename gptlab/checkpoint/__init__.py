"""Checkpoints: `model.safetensors` + `config.json` + `tokenizer.json` (+ `train_state.*` for resume).

Nothing here unpickles: weights and tensors are safetensors, everything else is JSON. Every file is
written to a temporary name and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model import GPT, Classifier, Encoder, ModelConfig, Seq2Seq, Seq2SeqConfig
from gptlab.model.align import RewardModel, ValuePolicy
from gptlab.model.config import MAX_PARAMS
from gptlab.model.diffusion import ImageConfig, TextToImage
from gptlab.model.encoder import POOLINGS

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FORMAT_VERSION = 1
# The tensor types gptlab writes (and loads with a cast): anything else is not a gptlab model.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}

def _gpt(cfg: dict) -> torch.nn.Module:
    return GPT(ModelConfig.from_dict(cfg["model"]))


def _encoder(cfg: dict) -> torch.nn.Module:
    return Encoder(ModelConfig.from_dict(cfg["model"]))


def _classifier(cfg: dict) -> torch.nn.Module:
    c = cfg["classifier"]
    return Classifier(ModelConfig.from_dict(cfg["model"]), len(c["labels"]), c.get("pooling", "mean"))


def _seq2seq(cfg: dict) -> torch.nn.Module:
    return Seq2Seq(Seq2SeqConfig.from_dict(cfg["model"]))


def _reward(cfg: dict) -> torch.nn.Module:
    return RewardModel(ModelConfig.from_dict(cfg["model"]))


def _gpt_value(cfg: dict) -> torch.nn.Module:
    r = cfg.get("rollout")
    sizes: list[int] = [n for n in (r.get("rows"), r.get("length")) if isinstance(n, int) and not isinstance(n, bool)
                        and 1 <= n <= 2**20] if isinstance(r, dict) else []
    if len(sizes) != 2:
        raise ValueError(f"a PPO policy's config needs rollout.rows and rollout.length, 1..{2**20} (got {r!r})")
    return ValuePolicy(ModelConfig.from_dict(cfg["model"]), sizes[0], sizes[1])


def _image_config(cfg: dict) -> ImageConfig:
    d = cfg.get("image")
    if not isinstance(d, dict):
        raise ValueError("an image model's config needs an 'image' object (autoencoder, denoiser, schedule)")
    return ImageConfig.from_dict(d)


def _image(cfg: dict) -> torch.nn.Module:
    # "model" is the caption encoder (its vocab_size is the tokenizer's); "image" the rest.
    return TextToImage(ModelConfig.from_dict(cfg["model"]), _image_config(cfg))


# Checkpoint kind (config.json "kind") -> builder of its model from the config dict: every kind
# gptlab writes, in one table, so loading never depends on which modules were imported.
# "reward": a reward model (align reward); "gpt-value": a PPO policy (a GPT with a value head).
KINDS: dict[str, Callable[[dict], torch.nn.Module]] = {
    "gpt": _gpt, "encoder": _encoder, "classifier": _classifier, "seq2seq": _seq2seq,
    "reward": _reward, "gpt-value": _gpt_value, "image": _image,
}


# -- atomic writes ------------------------------------------------------------------------------
def _umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_with(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp), then rename tmp over path; on any failure tmp is removed, path left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        # Some writers (safetensors) create private 0600 files; a model folder is meant to be shared.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _replace_with(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _replace_with(Path(path), lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with tied duplicates dropped (safetensors refuses shared storage), a
    reparametrized tensor as the model computes it (`gptlab.model.label_head`)."""
    from gptlab.model.label_head import computed_state_dict
    seen: dict[int, str] = {}
    out = {}
    for name, t in computed_state_dict(model).items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue
        seen[key] = name
        out[name] = t
    return out


# -- model checkpoints ----------------------------------------------------------------------------
def save_model(out_dir: str | os.PathLike, model: torch.nn.Module, tokenizer: Tokenizer, config: dict) -> None:
    """Write weights, tokenizer and config. `config` must hold at least "kind" and "model"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / WEIGHTS, state_dict_for_save(model), metadata={"format": "pt"})
    tokenizer.save(out / TOKENIZER)
    # config.json goes last: its presence marks a complete model folder.
    atomic_write_json(out / CONFIG, {"format_version": FORMAT_VERSION, **config})


def read_config(model_dir: str | os.PathLike, make: str = "gptlab train") -> dict:
    """The folder's config.json, checked (kind, types and sizes of the model) before anything is
    built from it; `make`: the command that writes such a folder (for the errors)."""
    d = Path(model_dir)
    if not d.exists():
        raise UserError(f"model folder {d} does not exist: train one with `{make} --out {d}` or check the path")
    if not d.is_dir():
        raise UserError(f"{d} is a file, not a model folder: pass the folder holding config.json and model.safetensors")
    p = d / CONFIG
    if not p.is_file():
        raise UserError(f"{d} holds no {CONFIG} file, so it is not a gptlab model folder: train one with `{make} --out {d}`")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): restore it or re-train") from None
    except OSError as e:
        raise UserError(f"cannot read {p} ({e.strerror}): check its permissions") from None
    from gptlab.checkpoint import hf  # here, not at the top: hf imports this package

    if hf.is_hf_config(cfg):  # a Hugging Face GPT-2 folder: its config, as a gptlab "gpt" one
        return hf.gptlab_config(cfg, p)
    if not isinstance(cfg, dict) or "kind" not in cfg or "model" not in cfg:
        raise UserError(f"{p} is not a gptlab config (no 'kind'/'model' keys): is this folder from another tool?")
    check_config(cfg, p)
    return cfg


def check_config(cfg: dict, where: str | os.PathLike = CONFIG) -> None:
    """A UserError naming the first value of a model config that no gptlab model could have."""
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise UserError(f"{where}: format_version {version!r} is not one this gptlab reads "
                        f"(it reads {FORMAT_VERSION}): upgrade gptlab or re-train")
    kind = cfg["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"{where}: unknown model kind {kind!r}: this gptlab knows {', '.join(sorted(KINDS))}; "
                        "upgrade gptlab, or restore the folder's config.json")
    try:
        model_config(cfg).validate()
        if kind == "classifier":
            _check_classifier(cfg.get("classifier"))
        if kind == "image":
            _image_config(cfg).validate()
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{where}: {e}: restore the folder's config.json or re-train") from None


def model_config(cfg: dict) -> ModelConfig:
    """The typed model config of a config dict (ValueError for an unknown key or a wrong type)."""
    return (Seq2SeqConfig if cfg["kind"] == "seq2seq" else ModelConfig).from_dict(cfg["model"])


def _check_classifier(c: object) -> None:
    if not isinstance(c, dict):
        raise ValueError("a classifier's config needs a 'classifier' object with its labels")
    labels = c.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"classifier.labels must be a list of at least 2 label names (got {labels!r})")
    if c.get("pooling", "mean") not in POOLINGS:
        raise ValueError(f"classifier.pooling must be one of {', '.join(POOLINGS)} (got {c.get('pooling')!r})")


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: the model folder is incomplete; re-train or copy it again")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is truncated or not a safetensors file ({str(e)[:80]}): re-train or copy it again") from None
    expected = state_dict_for_save(model)  # tied weights appear once, as they were saved
    check_shapes(path, {n: tuple(v.shape) for n, v in expected.items()}, {n: tuple(v.shape) for n, v in tensors.items()})
    model.load_state_dict(tensors, strict=False)


def build_model(cfg: dict) -> torch.nn.Module:
    kind = cfg["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r} in config.json: this gptlab knows {sorted(KINDS)}; upgrade gptlab?")
    try:
        return KINDS[kind](cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.json describes an impossible model ({e}): fix or re-create it") from None


class _SkipInit(TorchFunctionMode):
    """Skips weight initialisation while a model is built on the meta device: there it changes
    nothing, and its first call would import torch's compiler (~2 s). Thread-local, as modes are."""

    NAMES = frozenset({"normal_", "uniform_", "fill_", "zero_", "zeros_", "ones_", "constant_", "trunc_normal_",
                       "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", "") in self.NAMES:
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def planned_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model of `cfg` saves (tied weights once), worked out on
    torch's "meta" device: nothing is allocated, so a config asking for 10^12 parameters costs
    nothing to refuse."""
    with torch.device("meta"), _SkipInit():
        model = build_model(cfg)
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():  # keep_vars: the tied Parameter itself
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = tuple(t.shape)
    return out


def read_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of each tensor in a safetensors file, from its header alone."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: the model folder is incomplete; re-train or copy it again")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in names}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is truncated or not a safetensors file ({str(e)[:80]}): re-train or copy it again") from None


def check_shapes(path: str | os.PathLike, expected: dict[str, tuple[int, ...]],
                 found: dict[str, tuple[int, ...]]) -> None:
    """The tensors a weights file holds (name -> shape) must be the ones its config.json asks for."""
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    if missing or unexpected:
        raise UserError(f"{path} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                        "it belongs to another model; re-train or restore the matching config.json")
    for n, shape in expected.items():
        if found[n] != shape:
            raise UserError(f"{path}: tensor {n} has shape {found[n]}, config.json says {shape}: "
                            "weights and config come from different models")


def check_weights_file(cfg: dict, path: str | os.PathLike, max_params: int = MAX_PARAMS) -> int:
    """The parameter count of the model `cfg` describes, once its weights file's header agrees
    with it and it is within `max_params`; a UserError otherwise. Reads the header only."""
    header = read_header(path)
    planned = planned_tensors(cfg)
    check_shapes(path, planned, {n: shape for n, (_, shape) in header.items()})
    for n, (dtype, _) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise UserError(f"{path}: tensor {n} holds {dtype} values, not floating point: it is not a gptlab model")
    return check_param_count(sum(math.prod(shape) for shape in planned.values()), max_params, Path(path).parent)


def check_param_count(n_params: int, max_params: int, folder: Path) -> int:
    """n_params, if within the cap; a one-line error naming the flag that lifts it otherwise."""
    if n_params > max_params:
        raise UserError(f"the model in {folder} has {n_params:,} parameters, more than the limit of "
                        f"{max_params:,}: pass --max-params {n_params} (max_params= in Python) if you mean to load it")
    return n_params


def load_tokenizer(model_dir: str | os.PathLike, cfg: dict) -> Tokenizer:
    """The folder's tokenizer.json, whose vocabulary must be the model's: a token id of one would
    be another word (or no word) to the other."""
    p = Path(model_dir) / TOKENIZER
    if not p.is_file():
        raise UserError(f"{p} is missing: the model folder is incomplete; re-train or copy it again")
    tok = Tokenizer.load(p)
    if tok.vocab_size != cfg["model"]["vocab_size"]:
        raise UserError(f"{p} has {tok.vocab_size} tokens but the model's config.json says vocab_size "
                        f"{cfg['model']['vocab_size']}: the tokenizer comes from another model; restore the matching one")
    return tok


def load_checkpoint(model_dir: str | os.PathLike, device: str | torch.device = "cpu", *,
                    max_params: int = MAX_PARAMS) -> tuple[Any, Tokenizer, dict]:
    """Return (model in eval mode, tokenizer, config dict) from a model folder; the model is the
    module of its kind (KINDS), which the caller knows. A Hugging Face GPT-2 folder (see hf.py)
    loads as a "gpt".

    Everything is checked before the model is allocated: the config, the tokenizer's vocabulary,
    the weights file's header against the config, and the size against `max_params`.
    """
    d = Path(model_dir)
    cfg = read_config(d)
    if cfg.get("source") == "huggingface":
        from gptlab.checkpoint.hf import load_hf  # here, not at the top: hf imports this package

        return load_hf(d, cfg, device, max_params=max_params)
    tok = load_tokenizer(d, cfg)
    check_weights_file(cfg, d / WEIGHTS, max_params)
    model = build_model(cfg)
    load_weights(model, d / WEIGHTS)
    model.to(device).eval()
    return model, tok, cfg
