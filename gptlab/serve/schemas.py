"""Request bodies of the HTTP API (pydantic), shaped like OpenAI's legacy completions API.

Ranges of the sampling settings are not checked here: `LoadedModel.generate` checks them and its
UserError becomes a 400 with the model's own message. Fields OpenAI clients send and gptlab does
not use are accepted (extra="allow") unless they would change the answer; those get a 400. So does
text that is not Unicode (see `_refuse_invalid_unicode`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# The validation error type of a string that cannot be encoded; the error handler answers it with a 400.
INVALID_UNICODE = "invalid_unicode"


def _first_invalid_string(body: Any) -> str | None:
    """Where in a parsed JSON body the first string (or key) is that UTF-8 cannot encode, as "prompt[1]"."""
    todo: list[tuple[str, Any]] = [("", body)]
    while todo:  # a stack, not recursion: the nesting is the client's to choose
        where, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            for k, v in reversed(value.items()):  # reversed onto the stack: popped in the body's order
                at = f"{where}.{k}" if where else str(k)
                todo += [(at, v), (at, k)]
        elif isinstance(value, list):
            todo += reversed([(f"{where}[{i}]", v) for i, v in enumerate(value)])
    return None


class ModelRequest(BaseModel):
    """What every request body shares: the model it asks, and text that must be Unicode."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _refuse_invalid_unicode(cls, data: Any) -> Any:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); Python decodes it into a str that no
        # tokenizer or response can encode. Refused here, before anything reads it.
        where = _first_invalid_string(data)
        if where is not None:
            raise PydanticCustomError(INVALID_UNICODE, "{param} is not valid Unicode text (it holds a lone "
                                      "surrogate, \\ud800-\\udfff): send text that encodes as UTF-8",
                                      {"param": where.encode("utf-8", "backslashreplace").decode("utf-8")})
        return data

    model: str | None = Field(None, description="a name from GET /v1/models; may be left out when only one model is served")


class Sampling(ModelRequest):
    temperature: float | None = Field(1.0, description="0 is greedy; below 1 sharper, above 1 flatter")
    top_p: float | None = Field(1.0, description="nucleus: keep the smallest set of tokens whose probability reaches top_p")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="same seed, same settings, same text")
    # gptlab extras
    top_k: int | None = Field(0, description="keep only the k most likely tokens (0: all)")
    min_p: float | None = Field(0.0, description="drop tokens less likely than min_p times the most likely one")
    repetition_penalty: float | None = Field(1.0, description="above 1 discourages tokens already present")

    def sampling_kwargs(self) -> dict:
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_k": self.top_k or 0,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "min_p": self.min_p or 0.0,
            "repetition_penalty": 1.0 if self.repetition_penalty is None else self.repetition_penalty,
        }


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(..., description="one prompt or a list (each gets n completions)")
    max_tokens: int | None = Field(None, ge=0, description="new tokens at most (server default 16, capped by --max-tokens)")
    n: int | None = Field(1, ge=1, description="completions per prompt")
    stop: str | list[str] | None = Field(None, description="stop before any of these strings")
    stream: bool | None = Field(False, description="send text pieces as server-sent events")
    stream_options: StreamOptions | None = None
    echo: bool | None = Field(False, description="put the prompt in front of each completion")
    # OpenAI fields gptlab does not implement: accepted at their neutral value only.
    logprobs: int | None = None
    best_of: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict | None = None
    suffix: str | None = None
    user: str | None = None


class ExplainRequest(Sampling):
    prompt: str = Field(..., description="the text the model continues")
    steps: int = Field(4, ge=1, description="tokens to generate and trace")
    top: int = Field(5, ge=1, le=100, description="candidate tokens kept per step")


class CompareRequest(Sampling):
    """POST /v1/compare: `model` writes a continuation of `prompt`; both models then read it."""
    reference: str = Field(..., description="the model to compare against (e.g. the SFT model `model` was aligned from); "
                                            "it must share model's tokenizer")
    prompt: str = Field(..., description="the text both models continue")
    steps: int = Field(12, ge=1, description="tokens to write and compare (at most the server's --max-explain-steps)")
    top: int = Field(5, ge=1, le=100, description="candidates kept per step and model")


# Denoising steps one request may ask for: a 32x32 model takes milliseconds a step, a larger one more.
MAX_IMAGE_STEPS = 200


class ImageRequest(ModelRequest):
    """POST /v1/images: one image from an image model (kind "image"), with each prompt word's
    cross-attention map (DAAM) over it."""
    prompt: str = Field(..., description="what to draw")
    negative_prompt: str = Field("", description="what to steer away from ('' = the empty caption)")
    guidance: float = Field(3.0, description="classifier-free guidance scale: 1 = none, 0 = ignore the prompt")
    steps: int = Field(20, description=f"denoising steps, 1 to {MAX_IMAGE_STEPS}")
    sampler: str = Field("dpm", description="ddpm, ddim or dpm (DPM-Solver++ 2M)")
    frames: int = Field(0, ge=0, le=20, description="filmstrip frames: the clean image predicted at this many steps")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the starting noise: same seed, same image")
