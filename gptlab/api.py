"""The notebook-facing API: `gptlab.load(path)` returns a model with its tokenizer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import torch

from gptlab.checkpoint import load_checkpoint
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.explain.capture import explain, model_info, token_labels
from gptlab.explain.trace import Trace
from gptlab.infer import diffuse
from gptlab.infer.dtypes import DTYPE_NAMES
from gptlab.infer.generate import Completion, check_generative, encode_prompts, fit_context, generate_text, stream_text
from gptlab.infer.sampling import SamplingConfig, TemperatureTable, temperature_table
from gptlab.model.config import MAX_PARAMS
from gptlab.model.diffusion import TextToImage
from gptlab.model.gpt import GPT
from gptlab.model.layout import column_major_linears
from gptlab.model.quant import quantize_output_layer
from gptlab.settings import check

__all__ = ["LoadedModel", "load", "Completion", "Trace", "TemperatureTable", "default_device"]


# Below this (and above 0) logits / T overflow float32 to inf and the distribution becomes NaN: a
# temperature that small is greedy in all but name, so the error says to use 0.
MIN_TEMPERATURE = 1e-6


def sampling_config(**values: Any) -> SamplingConfig:
    """SamplingConfig(**values), range-checked as the flags are (a seed must fit 64 bits) and validated."""
    cfg = check(SamplingConfig(**values)).validate()
    if 0 < cfg.temperature < MIN_TEMPERATURE:
        raise UserError(f"temperature {cfg.temperature} is too small to compute (below {MIN_TEMPERATURE}): use 0 for greedy")
    return cfg


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class LoadedModel:
    """A trained model, its tokenizer and its config, ready for a notebook or a server."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: dict, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.path = path

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        """The ids the model reads for `text` as a prompt: after <|endoftext|> for a model trained so."""
        return self.tokenizer.encode_prompt(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    # -- sampling (the web server codes against these signatures) -------------------------------------
    def generate(self, prompt: str | list[str], *, max_new_tokens: int = 80, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: list[str] | None = None, n: int = 1, seed: int | None = None) -> list[Completion]:
        """n completions of the prompt (or of each prompt of a list, in order: prompt 0's n first).

        Completion.text is the continuation only; temperature 0 is greedy; see SamplingConfig.
        """
        cfg = sampling_config(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                              stop=list(stop or []), seed=seed)
        model = check_generative(self.model, self.kind)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return generate_text(model, self.tokenizer, prompts, cfg, n=n)

    def stream(self, prompt: str, *, max_new_tokens: int = 80, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
               stop: list[str] | None = None, seed: int | None = None) -> Iterator[str]:
        """Text pieces as they are generated; joined, they equal generate(...)[0].text for the same seed."""
        cfg = sampling_config(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                              stop=list(stop or []), seed=seed)
        model = check_generative(self.model, self.kind)
        return stream_text(model, self.tokenizer, prompt, cfg)

    def explain(self, prompt: str, *, steps: int = 4, top: int = 5, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                stop: list[str] | None = None, seed: int | None = None) -> Trace:
        """Generate `steps` tokens, recording at each what the model attended to and its top candidates.

        In a notebook the Trace displays itself; `.show()`, `.save(path)`, `.save_html(path)`.
        """
        cfg = sampling_config(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, max_new_tokens=steps,
                              stop=list(stop or []), seed=seed)
        if top < 1:
            raise UserError(f"top must be >= 1 (got {top})")
        model = check_generative(self.model, self.kind)
        info = model_info(model, self.tokenizer, self.kind, self.path)
        return explain(model, self.tokenizer, prompt, cfg, top=top, info=info)

    def next_token_logits(self, prompt: str) -> torch.Tensor:
        """The model's raw logits (V,) for the token after `prompt`."""
        model = check_generative(self.model, self.kind)
        ids = fit_context(encode_prompts(self.tokenizer, [prompt]), model.cfg.context_length)[0]
        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            return self.model(x, last_only=True).logits[0, -1].float().cpu()

    def temperature_table(self, prompt: str, temperatures: list[float], top: int = 5) -> TemperatureTable:
        """The next token's top candidates with their probability and the entropy at each temperature."""
        for t in temperatures:
            sampling_config(temperature=t)  # each checked as a sampling temperature is, before the model runs
        return temperature_table(self.next_token_logits(prompt), temperatures, top=top,
                                 label=token_labels(self.tokenizer), prompt=prompt)

    def generate_image(self, prompt: str, **settings: Any) -> diffuse.Generated:
        """Images for `prompt` from a text-to-image model (kind "image", `gptlab image train`):
        .images is a list of (H, W, 3) uint8 arrays. settings: GenerateConfig's fields (guidance,
        steps, sampler, seed, n, negative_prompt, ...), each checked as `gptlab image generate` does."""
        if self.kind != "image":
            raise UserError(f"this is a {self.kind!r} model, which does not draw: generate_image needs one "
                            "from `gptlab image train` (use generate() for text)")
        unknown = sorted(set(settings) - {f.name for f in fields(diffuse.GenerateConfig)} | ({"prompt"} & set(settings)))
        if unknown:
            raise UserError(f"unknown image setting(s) {', '.join(unknown)}: use GenerateConfig's fields, prompt first")
        model = cast(TextToImage, self.model)  # kind "image": what load_checkpoint builds for it
        return diffuse.generate(model, self.tokenizer, diffuse.GenerateConfig(prompt=prompt, **settings))

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"<gptlab {self.kind} model from {self.path}: {n:,} parameters, vocab {self.tokenizer.vocab_size}>"


# Weight formats by name (gptlab/dtypes.py lists the short names). "int8" keeps the model in fp32
# but stores the output layer in int8 (model/quant.py): the layer that dominates the bytes read
# per token when sampling one text at a time.
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "int8": torch.float32}


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype | None:
    """The torch dtype for inference weights named `dtype` on `device` (None: keep the saved fp32)."""
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use {', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}")
    kind = torch.device(device).type
    if DTYPES[dtype] == torch.float16 and kind == "cpu":
        raise UserError("--dtype fp16 is for GPUs: on a CPU use --dtype bf16 (or leave it out for fp32)")
    if dtype == "int8" and kind != "cpu":
        raise UserError("--dtype int8 is for CPUs: on a GPU use --dtype bf16 (or leave it out for fp32)")
    return DTYPES[dtype]


def with_dtype(model: torch.nn.Module, dtype: str | None, device: str = "cpu") -> torch.nn.Module:
    """`model` with its weights in the inference format `dtype` names (see `load`), for `device`;
    a UserError when that device or model cannot take it. May convert in place; returns the model.

    A GPT on a CPU also gets its linear layers' weights stored transposed (model/layout.py): the
    same values, a faster product for the one row a step of sampling one text computes."""
    torch_dtype = resolve_dtype(dtype, device)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if dtype == "int8":
        try:
            quantize_output_layer(model)
        except ValueError as e:
            raise UserError(f"--dtype int8: {e}: leave --dtype out") from None
    if isinstance(model, GPT) and torch.device(device).type == "cpu":
        column_major_linears(model)
    return model


def load(path: str | os.PathLike, device: str | None = None, dtype: str | None = None, *,
         max_params: int = MAX_PARAMS) -> LoadedModel:
    """Load a gptlab model folder (config.json + model.safetensors + tokenizer.json), or a Hugging
    Face GPT-2-family folder (config.json, model.safetensors, tokenizer.json or vocab.json +
    merges.txt; never a pickle), which loads as a gptlab GPT (checkpoint/hf.py).

    dtype: the weights' type for inference: fp32 (default: what explanations and temperature tables
    should show), or bf16 / fp16 for faster sampling (half the bytes per token; logits and sampling
    stay fp32, but the logits carry the lower precision's rounding), or int8: fp32 with an int8
    output layer, the fastest way to sample one text at a time on a CPU (logits within ~1%).
    max_params: refuse a bigger model (counted from config.json and checked against the weights
    file's header before anything is allocated); raise it to load a model that big on purpose.
    """
    dev = device or default_device()
    resolve_dtype(dtype, dev)  # a bad dtype fails before the checkpoint is read
    model, tok, cfg = load_checkpoint(path, dev, max_params=max_params)
    return LoadedModel(with_dtype(model, dtype, dev), tok, cfg, Path(path))
