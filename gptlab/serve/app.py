"""The HTTP server of `gptlab serve`: an OpenAI-shaped completions API, an explain endpoint and the page.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/completions (optionally streamed as
server-sent events in OpenAI's chunk format), POST /v1/explain (the explanation trace as JSON),
POST /v1/compare (two models on one text: each step's candidates under both and the KL between
them), POST /v1/images (an image model's picture and each prompt word's cross-attention map),
GET /healthz, GET /metrics (Prometheus), and the page at /. Every error, ours or the framework's, is JSON shaped like
OpenAI's: {"error": {"message": ..., "type": ...}} (see `gptlab.serve.errors`). Requests for a host
name that is not this server's get a 421 before any route (`gptlab.serve.hosts`), and a generation
whose client disconnects stops at its next step (`gptlab.serve.limits`).

The routes are module-level functions on one router; what they share (settings, models, workers,
engines, metrics) is the `ServeState` that `create_app` puts on `app.state.serve`.

Completions run in each model's decoding engine (continuous batching, gptlab/infer/engine.py). An
explanation trace takes a gate worker, which hands it to the model's engine thread and waits: it
runs there between two decoding steps, so it never races the batch (and, while it runs, the
batch waits; traces are capped at --max-explain-steps). A comparison needs both models' engines
between steps at once: it enters them in name order, so two comparisons never wait on each other in
a circle. Image models have no engine: an image is made on a gate worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from gptlab import __version__
from gptlab.api import LoadedModel, sampling_config
from gptlab.errors import UserError
from gptlab.explain.capture_image import explain_image
from gptlab.explain.compare import compare, same_vocabulary
from gptlab.infer.diffuse import GenerateConfig, check_request
from gptlab.infer.generate import check_generative
from gptlab.infer.sampling import SamplingConfig
from gptlab.model.diffusion import TextToImage
from gptlab.serve.completions import complete, plan_completion, stream_completion
from gptlab.serve.engines import Engines
from gptlab.serve.errors import APIError, add_error_handlers, error_for
from gptlab.serve.hosts import HostAllowlist, HostCheck
from gptlab.serve.limits import BodyLimit, Gate, GateHook, disconnect_of, install_deadline_hook
from gptlab.serve.metrics import Metrics
from gptlab.serve.registry import ModelRegistry
from gptlab.serve.schemas import MAX_IMAGE_STEPS, CompareRequest, CompletionRequest, ExplainRequest, ImageRequest
from gptlab.serve.settings import ServeSettings
from gptlab.serve.state import ServeState, serve_state

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere; the policy makes that a guarantee, not a habit.
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"

State = Annotated[ServeState, Depends(serve_state)]
T = TypeVar("T")
api = APIRouter()


def create_app(models_dir: str | os.PathLike, settings: ServeSettings | None = None, *,
               on_gate_event: GateHook | None = None, listen_host: str | None = None) -> FastAPI:
    """The FastAPI app serving every gptlab model folder under `models_dir` (or that folder itself).

    `on_gate_event` is handed to the app's `Gate`: it hears each request being admitted, starting
    on a worker, finishing there, and cancelled when its client leaves (for metrics, or tests that
    must not sleep). `listen_host`: the address the server listens on; unless it is a wildcard
    (0.0.0.0, ::), requests naming it in their Host header are answered, besides localhost ones and
    `settings.allowed_hosts`.
    """
    settings = settings or ServeSettings()
    try:
        settings.validate()
    except ValueError as e:
        raise UserError(f"bad server setting: {e}") from None
    registry = ModelRegistry(models_dir, device=settings.device, dtype=settings.dtype, max_loaded=settings.max_loaded,
                             on_load=_hook_deadlines,
                             max_memory=int(settings.max_memory_mb * 2**20))
    engines = Engines(registry, settings)
    registry.size_of, registry.on_unload = engines.size_of, engines.unload
    gate = Gate(settings.workers, settings.queue, settings.timeout_s, on_gate_event)
    state = ServeState(settings, registry, gate, engines,
                       Metrics(engines.load, lambda: gate.in_flight + engines.in_flight))
    app = FastAPI(
        title="gptlab serve", version=__version__, lifespan=_lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; the page must work offline.
        docs_url=None, redoc_url=None,
        description="Completions from small gptlab transformers in OpenAI's API shape, explanation "
                    "traces of what the model saw, and a page to try both.",
    )
    app.state.serve = state
    # The same objects under their own names: the CLI and code embedding the app read them.
    app.state.settings, app.state.registry, app.state.gate = state.settings, state.registry, state.gate
    app.state.engines, app.state.metrics = state.engines, state.metrics
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: a request for another host reads no body and reaches no route.
    app.add_middleware(HostCheck, allowlist=HostAllowlist(settings.allowed_hosts, listen_host))
    add_error_handlers(app)
    app.include_router(api)
    _add_page(app)
    return app


def _hook_deadlines(lm: LoadedModel) -> None:
    install_deadline_hook(lm.model)
    if isinstance(lm.model, TextToImage):  # image generation calls the denoiser step by step, never the model's forward
        install_deadline_hook(lm.model.denoiser)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.serve.gate.shutdown()
    app.state.serve.engines.close()


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Cache-Control": "no-cache"})

    # The step view (trace_view.js/.css) is the explanation stack's own, shared with the trace HTML
    # and the notebook: served from gptlab.explain's folder, never copied.
    app.mount("/static", StaticFiles(directory=STATIC, packages=[("gptlab.explain", "static")]), name="static")


# -- routes ------------------------------------------------------------------------------------------
# FastAPI would turn a return annotation into a response model (validating and re-serializing every
# body, and changing the schema); `response_model=None` sends what the handler built, as it is.
@api.get("/healthz", summary="Liveness, load and limits", response_model=None)
async def healthz(state: State) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "in_flight": state.in_flight,
            "capacity": state.gate.capacity, "limits": state.settings.public()}


@api.get("/metrics", summary="Requests, queue depth, tokens generated, time to first token, slots in use "
        "(Prometheus text format)", response_model=None)
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


@api.get("/v1/models", summary="The models served (OpenAI shape)", response_model=None)
async def list_models(state: State) -> dict[str, Any]:
    cards = await run_in_threadpool(lambda: [state.model_card(n) for n in state.registry.names()])
    return {"object": "list", "data": cards}


@api.get("/v1/models/{model:path}", summary="One model (OpenAI shape)", response_model=None)
async def get_model(model: str, state: State) -> dict[str, Any]:
    return await run_in_threadpool(state.model_card, model)


@api.post("/v1/completions", summary="Complete prompts (OpenAI shape; stream=true for server-sent events)",
          response_model=None)
async def completions(req: CompletionRequest, state: State, request: Request) -> dict[str, Any] | StreamingResponse:
    status = 200
    try:
        plan = plan_completion(req, state)
        if req.stream:  # Starlette cancels a stream whose client left, which stops its generation
            return await stream_completion(plan, state)
        return await complete(plan, state, disconnect_of(request.receive))
    except Exception as e:
        status = error_for(e)[0]
        raise
    finally:
        state.metrics.requests.labels("completions", str(status)).inc()


@api.post("/v1/explain", summary="Generate a few tokens and return what the model saw at each step",
          response_model=None)
async def explain(req: ExplainRequest, state: State, request: Request) -> JSONResponse:
    name = state.model_name(req.model)
    state.check_prompt(req.prompt)
    if req.steps > state.settings.max_explain_steps:
        raise APIError(400, f"steps {req.steps} is over this server's limit of {state.settings.max_explain_steps}",
                       param="steps")
    trace = await state.gate.run(lambda: _on_engine(state, name, lambda: _explain_trace(state, name, req)),
                                 disconnect_of(request.receive))
    return JSONResponse(trace)


def _on_engine(state: ServeState, name: str, fn: Callable[[], T]) -> T:
    """Blocking, on a worker: `fn()` on the model's engine thread between two steps (engine on)."""
    return state.engines.run(name, fn) if state.settings.engine == "on" else fn()


def _on_engines(state: ServeState, names: list[str], fn: Callable[[], T]) -> T:
    """Blocking, on a worker: `fn()` while every named model's engine waits between two steps. Each
    engine's thread hands on to the next one's, in name order (a lock order: comparisons that name
    the same two models never hold one engine each, waiting for the other)."""
    for name in reversed(sorted(set(names))):
        fn = partial(_on_engine, state, name, fn)
    return fn()


@api.post("/v1/compare", summary="Two models on one text: each step's top candidates under both and the KL "
          "between their next-token distributions", response_model=None)
async def compare_models(req: CompareRequest, state: State, request: Request) -> JSONResponse:
    name, ref = state.model_name(req.model), state.model_name(req.reference)
    state.check_prompt(req.prompt)
    if req.steps > state.settings.max_explain_steps:
        raise APIError(400, f"steps {req.steps} is over this server's limit of {state.settings.max_explain_steps}",
                       param="steps")
    if name != ref and state.settings.max_loaded < 2:
        raise APIError(400, "this server keeps one model in memory (--max-loaded 1) and a comparison needs two: "
                            "serve with --max-loaded 2 or more", param="reference")
    cfg = sampling_config(max_new_tokens=req.steps, seed=req.seed, **req.sampling_kwargs())
    result = await state.gate.run(lambda: _on_engines(state, [name, ref], lambda: _comparison(state, name, ref, req, cfg)),
                                  disconnect_of(request.receive))
    return JSONResponse(_finite(result))


def _comparison(state: ServeState, name: str, ref: str, req: CompareRequest, cfg: SamplingConfig) -> dict[str, Any]:
    """Blocking, on the engines' threads: `Comparison.to_dict()` of `name` against `ref`."""
    lm, ref_lm = state.registry.get(name), state.registry.get(ref)
    model, ref_model = check_generative(lm.model, lm.kind), check_generative(ref_lm.model, ref_lm.kind)
    same_vocabulary(lm.tokenizer, ref_lm.tokenizer, f"reference {ref!r}")
    return compare(model, ref_model, lm.tokenizer, req.prompt, cfg, req.steps, req.top, names=(name, ref)).to_dict()


@api.post("/v1/images", summary="An image from an image model, with each prompt word's cross-attention map (DAAM)",
          response_model=None)
async def images(req: ImageRequest, state: State, request: Request) -> JSONResponse:
    name = state.model_name(req.model)
    state.check_prompt(req.prompt)
    state.check_prompt(req.negative_prompt, "negative_prompt")
    if req.guidance < 0 or not math.isfinite(req.guidance):
        raise APIError(400, f"guidance {req.guidance} is not a scale: use 0 (ignore the prompt), 1 (no guidance) or "
                            "more (3 is a good start)", param="guidance")
    if not 1 <= req.steps <= MAX_IMAGE_STEPS:
        raise APIError(400, f"steps {req.steps}: denoising takes 1 to {MAX_IMAGE_STEPS} steps on this server "
                            "(20 is a good start)", param="steps")
    g = GenerateConfig(prompt=req.prompt, negative_prompt=req.negative_prompt, guidance=req.guidance, steps=req.steps,
                       sampler=req.sampler, seed=req.seed)
    check_request(g)  # the command's own checks (the sampler's name, the guidance's upper bound)
    result = await state.gate.run(lambda: _image(state, name, g, req.frames), disconnect_of(request.receive))
    return JSONResponse(_finite(result))


def _image(state: ServeState, name: str, g: GenerateConfig, frames: int) -> dict[str, Any]:
    """Blocking, on a worker: the image, its trace (per-word maps, filmstrip) and the time it took."""
    lm = state.registry.get(name)
    if not isinstance(lm.model, TextToImage):
        raise APIError(400, f"model {name!r} is a {lm.kind} model: /v1/images draws with an image model (from "
                            "`gptlab image train`); GET /v1/models lists each model's kind", param="model")
    try:
        trace, out = explain_image(lm.model, lm.tokenizer, g, frames=frames, path=name)
    except ModuleNotFoundError as e:  # diffusers is the `image` extra; a text-only install lacks it
        raise APIError(501, f"this server cannot draw: {e.name} is not installed (pip install 'gptlab[image]')",
                       "not_implemented") from None
    return {"object": "image", "model": name, "image": trace.image, "seconds": round(out.seconds, 4),
            "trace": trace.to_dict()}


def _explain_trace(state: ServeState, name: str, req: ExplainRequest) -> dict[str, Any]:
    """Blocking, on a worker: the trace as JSON-ready data."""
    trace = state.registry.get(name).explain(req.prompt, steps=req.steps, top=req.top, seed=req.seed,
                                             **req.sampling_kwargs())
    trace_dict = _finite(trace.to_dict())
    trace_dict["model"] = {**trace_dict.get("model", {}), "path": name}  # the name, not where it lies on disk
    return trace_dict


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: a filtered-out logit (-inf) becomes null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
