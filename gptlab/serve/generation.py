"""Streaming one completion with what OpenAI's last chunk needs: the finish reason and token count.

`LoadedModel.stream` yields text only. The server also owes the client `finish_reason` and usage,
so it runs the same pieces from the engine's steps (as `gptlab.infer.generate.stream_text` does) and
counts as it goes; tests check the pieces join to `LoadedModel.generate`'s text for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gptlab.api import LoadedModel
from gptlab.infer.generate import TextTracker, check_generative, encode_prompts, text_steps
from gptlab.infer.sampling import SamplingConfig, make_generator


@dataclass
class StreamEnd:
    finish_reason: str      # "stop" or "length"
    n_tokens: int           # sampled ids, an end-of-text that stopped it included (as Completion.token_ids)


def stream_choice(lm: LoadedModel, prompt: str, kwargs: dict) -> Iterator[str | StreamEnd]:
    """Text pieces of one completion, then one StreamEnd. `kwargs` are LoadedModel.stream's."""
    cfg = SamplingConfig(temperature=kwargs.get("temperature", 1.0), top_k=kwargs.get("top_k", 0),
                         top_p=kwargs.get("top_p", 1.0), min_p=kwargs.get("min_p", 0.0),
                         repetition_penalty=kwargs.get("repetition_penalty", 1.0),
                         max_new_tokens=kwargs.get("max_new_tokens", 80), stop=list(kwargs.get("stop") or []),
                         seed=kwargs.get("seed")).validate()
    check_generative(lm.model, lm.kind)
    ids = encode_prompts(lm.tokenizer, [prompt])
    tracker = TextTracker(lm.tokenizer, ids[0], cfg.stop)
    generator = make_generator(cfg.seed, lm.device)
    n_tokens, finish = 0, "length"
    for step in text_steps(lm.model, lm.tokenizer, ids, [tracker], cfg, generator):
        n_tokens += bool(step.active[0])
        finish = step.finish[0] or finish
        piece = tracker.take(final=step.finish[0] is not None)
        if piece:
            yield piece
    yield StreamEnd(finish, n_tokens)
