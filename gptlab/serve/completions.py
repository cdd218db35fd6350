"""POST /v1/completions: the checks on a request, then its answer as one JSON body or as server-sent events.

Every check runs before the request takes a slot or a worker, so a refused request costs no
generation. With the engine on (the default) every choice is one request in the model's decoding
engine (`gptlab.serve.engines`), choice j of a prompt seeded with seed + j, streamed or not; with
--engine off each request decodes alone on a gate worker (the old path, kept to compare against).
A streamed answer waits for its first event before sending headers: a full queue, a bad sampling
setting or a timeout still gets its own status code; later errors travel as an error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gptlab.api import LoadedModel
from gptlab.errors import UserError
from gptlab.serve.engines import ChoicePiece, EngineCall
from gptlab.serve.errors import APIError, error_for
from gptlab.serve.generation import StreamEnd, stream_choice
from gptlab.serve.limits import ClientGone, DeadlineExceeded, consume
from gptlab.serve.schemas import CompletionRequest
from gptlab.serve.state import ServeState

log = logging.getLogger("gptlab.serve")
MAX_STOP = 16
# OpenAI fields gptlab does not implement, with the value that leaves the answer unchanged.
_NEUTRAL = (("logprobs", None), ("best_of", 1), ("presence_penalty", 0.0), ("frequency_penalty", 0.0),
            ("logit_bias", None), ("suffix", None))
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Usage = dict[str, int]


@dataclass
class CompletionPlan:
    """A request that passed every check: what to generate, and what each response (chunk) repeats."""
    model: str
    prompts: list[str]
    n: int                          # completions per prompt
    seed: int | None
    generate_kwargs: dict[str, Any]  # LoadedModel.generate's, without n and seed
    echo: bool
    include_usage: bool             # streamed: end with a chunk that carries the usage
    meta: dict[str, Any]            # id, created, model


def plan_completion(req: CompletionRequest, state: ServeState) -> CompletionPlan:
    """The checked request, or an APIError (400) / ModelNotFound (404) for the first thing wrong with it."""
    settings = state.settings
    name = state.model_name(req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise APIError(400, "prompt is an empty list: send a string or a list of strings", param="prompt")
    for i, p in enumerate(prompts):
        state.check_prompt(p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
    n = req.n or 1
    if n * len(prompts) > settings.max_choices:
        raise APIError(400, f"{len(prompts)} prompt(s) x n={n} asks for {n * len(prompts)} completions, more than "
                            f"this server's limit of {settings.max_choices}: lower n or send fewer prompts", param="n")
    max_tokens = settings.default_max_tokens if req.max_tokens is None else req.max_tokens
    if max_tokens > settings.max_tokens:
        raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {settings.max_tokens}: ask for fewer",
                       param="max_tokens")
    _refuse_unsupported(req)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop takes 1 to {MAX_STOP} non-empty strings", param="stop")
    return CompletionPlan(
        model=name, prompts=prompts, n=n, seed=req.seed,
        generate_kwargs=dict(max_new_tokens=max_tokens, stop=stop or None, **req.sampling_kwargs()),
        echo=bool(req.echo), include_usage=bool(req.stream_options and req.stream_options.include_usage),
        meta={"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name})


def _refuse_unsupported(req: CompletionRequest) -> None:
    # Silently ignoring these would answer a different question than the client asked.
    for field, neutral in _NEUTRAL:
        value = getattr(req, field)
        if value not in (neutral, None, {}, ""):
            hint = "; repetition_penalty (above 1) discourages repeats" if field.endswith("penalty") else ""
            raise APIError(400, f"{field} is not supported by gptlab serve: leave it out{hint}", param=field)


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choices_of(plan: CompletionPlan) -> list[tuple[str, dict[str, Any]]]:
    """(prompt, LoadedModel.generate's kwargs) of every choice, in order: prompt 0's n, then prompt 1's..."""
    # Several choices of one prompt would repeat each other under one seed.
    kwargs = dict(plan.generate_kwargs, stop=list(plan.generate_kwargs.get("stop") or []))
    return [(p, dict(kwargs, seed=None if plan.seed is None else plan.seed + j))
            for p in plan.prompts for j in range(plan.n)]


async def start_engine_call(plan: CompletionPlan, state: ServeState, stream: bool) -> tuple[EngineCall, int]:
    """The request's choices in its model's engine (Busy if it has no room), and its prompt tokens."""
    call = EngineCall(state.gate, state.metrics, plan.model, time.monotonic() + state.settings.timeout_s, stream)

    def submit() -> int:  # loading the model and encoding the prompts block: off the event loop
        lm, engine = state.engines.get(plan.model)
        call.submit(lm, engine, choices_of(plan))
        return sum(len(lm.encode(p)) for p in plan.prompts)

    return call, await run_in_threadpool(submit)


async def engine_events(call: EngineCall, plan: CompletionPlan,
                        prompt_tokens: int) -> AsyncGenerator[ChoicePiece | Usage, None]:
    """The pieces of every choice as the engine makes them (choices interleave), then the usage of all."""
    echo = {i: p for i, (p, _) in enumerate(choices_of(plan))} if plan.echo else {}
    async for piece in call.pieces(echo):
        yield piece
    yield _usage(prompt_tokens, sum(call.n_tokens))


async def complete(plan: CompletionPlan, state: ServeState,
                   client_gone: Callable[[], Awaitable[object]] | None = None) -> dict[str, Any]:
    """The whole answer as one text_completion object; cancelled (ClientGone) when `client_gone()` returns."""
    if state.settings.engine == "on":
        return await _complete_in_engine(plan, state, client_gone)

    def work() -> tuple[list, int]:
        lm = state.registry.get(plan.model)
        prompts = plan.prompts[0] if len(plan.prompts) == 1 else plan.prompts
        completions = lm.generate(prompts, n=plan.n, seed=plan.seed, **plan.generate_kwargs)
        return completions, sum(len(lm.encode(p)) for p in plan.prompts)

    completions, prompt_tokens = await state.gate.run(work, client_gone)
    choices = [{"text": (c.prompt if plan.echo else "") + c.text, "index": i, "logprobs": None,
                "finish_reason": c.finish_reason} for i, c in enumerate(completions)]
    completion_tokens = sum(len(c.token_ids) for c in completions)
    return {**plan.meta, "object": "text_completion", "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens)}


def completion_events(lm: LoadedModel, plan: CompletionPlan) -> Iterator[ChoicePiece | Usage]:
    """Blocking, on a worker: the pieces of every choice, one choice after another, then the usage of all."""
    prompt_tokens = completion_tokens = 0
    for i, prompt in enumerate(plan.prompts):
        prompt_tokens += len(lm.encode(prompt))
        for j in range(plan.n):
            # Several choices of one prompt would repeat each other under one seed.
            seed = None if plan.seed is None else plan.seed + j
            completion_tokens += yield from _choice_pieces(lm, prompt, i * plan.n + j, seed, plan)
    yield _usage(prompt_tokens, completion_tokens)


def _choice_pieces(lm: LoadedModel, prompt: str, index: int, seed: int | None,
                   plan: CompletionPlan) -> Generator[ChoicePiece, None, int]:
    """One choice's pieces, the echoed prompt in front of the first; returns its token count."""
    prefix = prompt if plan.echo else ""
    for piece in stream_choice(lm, prompt, dict(plan.generate_kwargs, seed=seed)):
        if isinstance(piece, StreamEnd):
            if prefix:  # no text came before the end, and the echo is still owed
                yield ChoicePiece(index, prefix)
            yield ChoicePiece(index, "", piece.finish_reason)
            return piece.n_tokens
        yield ChoicePiece(index, prefix + piece)
        prefix = ""
    return 0


async def _complete_in_engine(plan: CompletionPlan, state: ServeState,
                              client_gone: Callable[[], Awaitable[object]] | None) -> dict[str, Any]:
    call, prompt_tokens = await start_engine_call(plan, state, stream=False)
    texts = [""] * (len(plan.prompts) * plan.n)
    reasons = ["length"] * len(texts)

    async def collect() -> None:
        async for piece in call.pieces({}):
            texts[piece.index] += piece.text
            reasons[piece.index] = piece.finish_reason or reasons[piece.index]

    answer = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(client_gone()) if client_gone else None
    try:
        done, _ = await asyncio.wait([f for f in (answer, watcher) if f], return_when=asyncio.FIRST_COMPLETED)
        if answer not in done:  # the client left: nobody reads the answer, so it stops before the next step
            call.cancel()
            state.gate.report("cancelled")
            raise ClientGone()
        answer.result()
    finally:
        for f in (answer, watcher):
            if f is not None and not f.done():
                f.cancel()
            elif f is not None:
                consume(f)  # a watcher that failed (a broken connection) is no error of ours
    choices = [{"text": (p if plan.echo else "") + text, "index": i, "logprobs": None, "finish_reason": reason}
               for i, ((p, _), text, reason) in enumerate(zip(choices_of(plan), texts, reasons))]
    return {**plan.meta, "object": "text_completion", "choices": choices,
            "usage": _usage(prompt_tokens, sum(call.n_tokens))}


async def stream_completion(plan: CompletionPlan, state: ServeState) -> StreamingResponse:
    """The answer as server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    events: AsyncGenerator[ChoicePiece | Usage, None]
    if state.settings.engine == "on":
        call, prompt_tokens = await start_engine_call(plan, state, stream=True)
        events = engine_events(call, plan, prompt_tokens)
    else:
        events = state.gate.stream(lambda: completion_events(state.registry.get(plan.model), plan))
    # Busy, a bad setting (raised when the model's stream starts) or a timeout raises here, before
    # any header is sent, so it still gets its own status code rather than a 200.
    first = await anext(events, None)
    return StreamingResponse(_sse(first, events, plan), media_type="text/event-stream", headers=_SSE_HEADERS)


def _sse_data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _sse(first: ChoicePiece | Usage | None, events: AsyncGenerator[ChoicePiece | Usage, None],
               plan: CompletionPlan) -> AsyncIterator[str]:
    event = first
    try:
        while event is not None:
            if isinstance(event, ChoicePiece):
                choice = {"text": event.text, "index": event.index, "logprobs": None,
                          "finish_reason": event.finish_reason}
                yield _sse_data({**plan.meta, "object": "text_completion", "choices": [choice]})
            elif plan.include_usage:
                yield _sse_data({**plan.meta, "object": "text_completion", "choices": [], "usage": event})
            event = await anext(events, None)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # headers are sent: the error travels as an event, as OpenAI's do
        if not isinstance(exc, (UserError, DeadlineExceeded)):
            log.exception("error while streaming")
        _, message, type_, _ = error_for(exc)
        yield _sse_data({"error": {"message": message, "type": type_}})
    finally:
        await events.aclose()
