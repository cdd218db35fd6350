"""The HTTP server of `gptlab serve`: an OpenAI-shaped completions API, an explain endpoint and the page.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/completions (optionally streamed as
server-sent events in OpenAI's chunk format), POST /v1/explain (the explanation trace as JSON),
GET /healthz, and the page at /. Every error, ours or the framework's, is JSON shaped like
OpenAI's: {"error": {"message": ..., "type": ...}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab import __version__
from gptlab.errors import UserError
from gptlab.serve.generation import StreamEnd, stream_choice
from gptlab.serve.limits import BodyLimit, Busy, DeadlineExceeded, Gate, install_deadline_hook
from gptlab.serve.registry import ModelBroken, ModelNotFound, ModelRegistry
from gptlab.serve.schemas import CompletionRequest, ExplainRequest
from gptlab.serve.settings import ServeSettings

log = logging.getLogger("gptlab.serve")
STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere; the policy makes that a guarantee, not a habit.
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
MAX_STOP = 16


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param


def error_response(status: int, message: str, type: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": type}
    if param:
        err["param"] = param
    return JSONResponse({"error": err}, status_code=status, headers=headers)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _error_for(exc: BaseException) -> tuple[int, str, str, dict | None]:
    """(status, message, type, headers) of an exception raised while answering."""
    if isinstance(exc, APIError):
        return exc.status, exc.message, exc.type, None
    if isinstance(exc, UserError):
        return 400, str(exc), "invalid_request_error", None
    if isinstance(exc, ModelNotFound):
        return 404, f"model {exc.args[0]!r} is not served here: GET /v1/models lists the models", "not_found", None
    if isinstance(exc, ModelBroken):
        return 500, str(exc), "model_error", None
    if isinstance(exc, Busy):
        return 429, "the server is busy (every worker and queue place is taken): retry in a moment", "server_busy", {"Retry-After": "1"}
    if isinstance(exc, DeadlineExceeded):
        return 504, "the request took longer than the server's limit: ask for fewer tokens or retry later", "timeout", None
    return 500, "internal error while answering; the server log has the details", "server_error", None


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: a filtered-out logit (-inf) becomes null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def create_app(models_dir, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving every gptlab model folder under `models_dir` (or that folder itself)."""
    settings = settings or ServeSettings()
    try:
        settings.validate()
    except ValueError as e:
        raise UserError(f"bad server setting: {e}") from None
    registry = ModelRegistry(models_dir, device=settings.device, dtype=settings.dtype, max_loaded=settings.max_loaded,
                             on_load=lambda lm: install_deadline_hook(lm.model))
    gate = Gate(settings.workers, settings.queue, settings.timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        gate.shutdown()

    app = FastAPI(
        title="gptlab serve", version=__version__, lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the page must work offline.
        docs_url=None, redoc_url=None,
        description="Completions from small gptlab transformers in OpenAI's API shape, explanation "
                    "traces of what the model saw, and a page to try both.",
    )
    app.state.settings, app.state.registry, app.state.gate = settings, registry, gate
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    # -- errors: one JSON shape for all ---------------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}: the API is under /v1 (see /openapi.json)"
        return error_response(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "http_error"),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts, param = [], None
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                return error_response(422, f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')}): "
                                           "send a JSON object", "invalid_request_error")
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            param = param or (loc[0] if loc else None)
            parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
        return error_response(422, "invalid request: " + "; ".join(parts), "invalid_request_error", param)

    for cls in (APIError, UserError, ModelNotFound, ModelBroken, Busy, DeadlineExceeded):
        @app.exception_handler(cls)
        async def known_error(request: Request, exc: Exception):
            status, message, type_, headers = _error_for(exc)
            return error_response(status, message, type_, getattr(exc, "param", None), headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        status, message, type_, headers = _error_for(exc)
        return error_response(status, message, type_, headers=headers)

    # -- helpers ---------------------------------------------------------------------------------
    def model_name(requested: str | None) -> str:
        if requested:
            registry.path_of(requested)  # ModelNotFound -> 404 before taking a worker
            return requested
        names = registry.names()
        if len(names) == 1:
            return names[0]
        raise APIError(400, f"model is required: pick one of {names[:20]} (GET /v1/models)" if names
                       else f"no models in {registry.root.name}/: train one with `gptlab train --out {registry.root.name}/NAME`",
                       param="model")

    def check_prompt(prompt: str, param: str = "prompt") -> None:
        if len(prompt) > settings.max_prompt_chars:
            raise APIError(400, f"{param} has {len(prompt)} characters, more than this server's limit of "
                                f"{settings.max_prompt_chars}: shorten it", param=param)

    # -- routes ----------------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness, load and limits")
    async def healthz():
        return {"status": "ok", "version": __version__, "in_flight": gate.in_flight,
                "capacity": gate.capacity, "limits": settings.public()}

    def model_card(name: str) -> dict:
        info = registry.info(name)
        return {"id": name, "object": "model", "created": info.get("created", 0), "owned_by": "gptlab",
                "gptlab": {k: v for k, v in info.items() if k not in ("id", "created")}}

    @app.get("/v1/models", summary="The models served (OpenAI shape)")
    async def list_models():
        cards = await run_in_threadpool(lambda: [model_card(n) for n in registry.names()])
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model:path}", summary="One model (OpenAI shape)")
    async def get_model(model: str):
        return await run_in_threadpool(model_card, model)

    @app.post("/v1/completions", summary="Complete prompts (OpenAI shape; stream=true for server-sent events)")
    async def completions(req: CompletionRequest):
        name = model_name(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt is an empty list: send a string or a list of strings", param="prompt")
        for i, p in enumerate(prompts):
            check_prompt(p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        n = req.n or 1
        if n * len(prompts) > settings.max_choices:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={n} asks for {n * len(prompts)} completions, more than "
                                f"this server's limit of {settings.max_choices}: lower n or send fewer prompts", param="n")
        max_tokens = settings.default_max_tokens if req.max_tokens is None else req.max_tokens
        if max_tokens > settings.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {settings.max_tokens}: ask for fewer",
                           param="max_tokens")
        for field, neutral in (("logprobs", None), ("best_of", 1), ("presence_penalty", 0.0),
                               ("frequency_penalty", 0.0), ("logit_bias", None), ("suffix", None)):
            value = getattr(req, field)
            if value not in (neutral, None, {}, ""):
                hint = "; repetition_penalty (above 1) discourages repeats" if field.endswith("penalty") else ""
                raise APIError(400, f"{field} is not supported by gptlab serve: leave it out{hint}", param=field)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):
            raise APIError(400, f"stop takes 1 to {MAX_STOP} non-empty strings", param="stop")
        kwargs = dict(max_new_tokens=max_tokens, stop=stop or None, **req.sampling_kwargs())
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await stream_completions(name, prompts, n, req.seed, kwargs, bool(req.echo), include_usage, meta)

        def work():
            lm = registry.get(name)
            comps = lm.generate(prompts[0] if len(prompts) == 1 else prompts, n=n, seed=req.seed, **kwargs)
            return comps, sum(len(lm.encode(p)) for p in prompts)

        comps, prompt_tokens = await gate.run(work)
        choices = [{"text": (c.prompt if req.echo else "") + c.text, "index": i, "logprobs": None,
                    "finish_reason": c.finish_reason} for i, c in enumerate(comps)]
        completion_tokens = sum(len(c.token_ids) for c in comps)
        return {**meta, "object": "text_completion", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def stream_completions(name, prompts, n, seed, kwargs, echo, include_usage, meta):
        def events():
            """Blocking, on a worker: ("text", index, piece), ("end", index, finish_reason), ("usage", dict)."""
            lm = registry.get(name)
            prompt_tokens = completion_tokens = 0
            for i, prompt in enumerate(prompts):
                prompt_tokens += len(lm.encode(prompt))
                for j in range(n):
                    index = i * n + j
                    # Several choices of one prompt would repeat each other under one seed.
                    choice_seed = None if seed is None else seed + j
                    prefix = prompt if echo else ""
                    pieces = stream_choice(lm, prompt, dict(kwargs, seed=choice_seed))
                    for piece in pieces:
                        if isinstance(piece, StreamEnd):
                            completion_tokens += piece.n_tokens
                            if prefix:
                                yield ("text", index, prefix)
                            yield ("end", index, piece.finish_reason)
                        else:
                            yield ("text", index, prefix + piece)
                            prefix = ""
            yield ("usage", {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens})

        agen = gate.stream(events)
        # Wait for the first event before answering: a full queue, a bad setting (raised when the
        # model's stream starts) or a timeout still gets its proper status code, not a 200.
        try:
            first = await agen.__anext__()
        except StopAsyncIteration:
            first = None

        def chunk(index: int, text: str, finish: str | None) -> str:
            body = {**meta, "object": "text_completion",
                    "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        async def sse():
            event = first
            try:
                while event is not None:
                    if event[0] == "text":
                        yield chunk(event[1], event[2], None)
                    elif event[0] == "end":
                        yield chunk(event[1], "", event[2])
                    elif event[0] == "usage" and include_usage:
                        yield f"data: {json.dumps({**meta, 'object': 'text_completion', 'choices': [], 'usage': event[1]})}\n\n"
                    try:
                        event = await agen.__anext__()
                    except StopAsyncIteration:
                        event = None
                yield "data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # headers are sent: the error travels as an event, as OpenAI's do
                if not isinstance(exc, (UserError, DeadlineExceeded)):
                    log.exception("error while streaming")
                _, message, type_, _ = _error_for(exc)
                yield f"data: {json.dumps({'error': {'message': message, 'type': type_}})}\n\n"
            finally:
                await agen.aclose()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/explain", summary="Generate a few tokens and return what the model saw at each step")
    async def explain(req: ExplainRequest):
        name = model_name(req.model)
        check_prompt(req.prompt)
        if req.steps > settings.max_explain_steps:
            raise APIError(400, f"steps {req.steps} is over this server's limit of {settings.max_explain_steps}",
                           param="steps")

        def work():
            trace = registry.get(name).explain(req.prompt, steps=req.steps, top=req.top, seed=req.seed,
                                               **req.sampling_kwargs())
            d = _finite(trace.to_dict())
            d["model"] = {**d.get("model", {}), "path": name}  # the name, not where it lies on the server's disk
            return d

        return JSONResponse(await gate.run(work))

    # -- the page --------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
