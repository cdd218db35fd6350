"""The server's side of the decoding engines (gptlab/infer/engine.py): one per loaded model, and the
bridge from their thread to the event loop.

`Engines.get` gives a model with its engine, made at the model's first request and closed when the
registry unloads the model. `EngineCall` puts a completion's choices into an engine and hands their
text back to the event loop as `ChoicePiece`s: the engine's thread decodes each new id into text
(`TextTracker`, which also finds stop strings) and posts the piece with `call_soon_threadsafe`.
Explanation traces run on the engine's thread too, between two decoding steps (`Engines.run`):
they capture attention through the model's plain forward, and must not interleave with the batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gptlab.api import LoadedModel, sampling_config
from gptlab.errors import UserError
from gptlab.infer.engine import Engine, EngineFull, EngineRequest
from gptlab.infer.generate import TextTracker, check_generative, encode_prompts
from gptlab.serve.limits import Busy, DeadlineExceeded, Gate, under_current_job
from gptlab.serve.metrics import EngineLoad, Metrics
from gptlab.serve.registry import ModelRegistry, weight_bytes
from gptlab.serve.settings import ServeSettings

T = TypeVar("T")


@dataclass(frozen=True)
class ChoicePiece:
    """Text of choice `index` as it comes; the last piece of a choice has its finish reason (and often no text)."""
    index: int
    text: str
    finish_reason: str | None = None


class Engines:
    def __init__(self, registry: ModelRegistry, settings: ServeSettings):
        self.registry = registry
        self.settings = settings
        self._engines: dict[str, tuple[LoadedModel, Engine]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[LoadedModel, Engine]:
        """The model and its engine (blocking: may load the model). UserError for a model that does not generate."""
        lm = self.registry.get(name)
        with self._lock:
            hit = self._engines.get(name)
            if hit is not None and hit[0] is lm:
                return hit
            engine = Engine(check_generative(lm.model, lm.kind), slots=self.settings.slots, queue=self.settings.queue,
                            eot_id=lm.tokenizer.eot_id, name=name)
            self._engines[name] = (lm, engine)
        if hit is not None:  # the folder changed and the registry loaded it again
            hit[1].close(timeout=0)
        return lm, engine

    def unload(self, name: str, lm: LoadedModel) -> None:
        """The registry dropped `lm`: stop its engine (what it still runs ends with EngineClosed, a 503)."""
        with self._lock:
            hit = self._engines.get(name)
            if hit is None or hit[0] is not lm:
                return
            del self._engines[name]
        hit[1].close(timeout=0)

    def run(self, name: str, fn: Callable[[], T]) -> T:
        """Blocking, on a gate worker: `fn()` on the model's engine thread between two steps, under this
        worker's job (so its deadline and its client's leaving stop it at its next forward pass)."""
        _, engine = self.get(name)
        return engine.call(under_current_job(fn)).result()

    def size_of(self, lm: LoadedModel) -> int:
        """What a loaded model costs: its weights, plus the slot cache its engine will hold and a
        quarter of that again for the prompts it keeps (Engine.prompt_cache_bytes)."""
        kv = 0
        try:
            model = check_generative(lm.model, lm.kind)
        except UserError:
            pass  # no engine for it
        else:
            cfg, itemsize = model.cfg, next(model.parameters()).element_size()
            kv = 2 * cfg.n_layer * self.settings.slots * cfg.n_head * cfg.context_length * cfg.head_size * itemsize
            kv += kv // 4
        return weight_bytes(lm) + kv

    def load(self) -> list[EngineLoad]:
        with self._lock:
            engines = list(self._engines.items())
        return [(name, e.slots, e.active, e.waiting) for name, (_, e) in engines]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(e.in_flight for _, e in self._engines.values())

    def close(self) -> None:
        with self._lock:
            engines = [e for _, e in self._engines.values()]
            self._engines.clear()
        for e in engines:
            e.close(timeout=0)


class EngineCall:
    """The choices of one completion request in a model's engine, read on the event loop as pieces.

    Every choice's settings are checked (UserError, a 400) before any enters the engine; if the
    engine cannot take them all, none stays (Busy, a 429). `cancel()` (the client left, the
    deadline passed, the stream was closed) ends every choice before the engine's next step.
    """

    def __init__(self, gate: Gate, metrics: Metrics, model: str, deadline: float, stream: bool = True):
        self.gate = gate
        self.stream = stream                # False: each choice's text comes whole, at its end (fewer wake-ups)
        self.metrics = metrics
        self.model = model
        self.deadline = deadline            # time.monotonic() by which the answer must be done
        self.arrived = time.monotonic()
        self.requests: list[EngineRequest] = []
        self.n_tokens: list[int] = []
        self._queue: asyncio.Queue[tuple[str, int, str, str | None, BaseException | None]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._open = 0                      # choices not finished
        self._started = False

    def submit(self, lm: LoadedModel, engine: Engine, choices: list[tuple[str, dict[str, Any]]]) -> None:
        """Blocking (encodes the prompts): put (prompt, LoadedModel.generate's kwargs) choices in `engine`."""
        cfgs = [sampling_config(**kwargs) for _, kwargs in choices]   # all checked before any is queued
        check_generative(lm.model, lm.kind)
        ids_by_prompt = {p: encode_prompts(lm.tokenizer, [p])[0] for p in dict.fromkeys(p for p, _ in choices)}
        for i, ((prompt, _), cfg) in enumerate(zip(choices, cfgs)):
            ids = ids_by_prompt[prompt]
            tracker = TextTracker(lm.tokenizer, ids, cfg.stop)
            self.requests.append(EngineRequest(ids, cfg, on_token=self._on_token(i, tracker),
                                               on_finish=self._on_finish(i, tracker), stop_fn=tracker.push,
                                               on_start=self._on_start))
            self.n_tokens.append(0)
        self._open = len(self.requests)
        # Under the lock, so the engine's thread reports "started" or "finished" only after "admitted".
        with self._lock:
            try:
                engine.submit(*self.requests)
            except EngineFull:
                raise Busy() from None
            self.gate.report("admitted")

    # -- on the engine's thread --------------------------------------------------------------------
    def _post(self, *item) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _on_start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self.gate.report("started")

    def _on_token(self, index: int, tracker: TextTracker) -> Callable[[int], None]:
        def on_token(token_id: int) -> None:
            if not any(self.n_tokens):
                self.metrics.ttft.labels(self.model).observe(time.monotonic() - self.arrived)
            self.n_tokens[index] += 1
            self.metrics.tokens.labels(self.model).inc()
            piece = tracker.take() if self.stream else ""
            if piece:
                self._post("piece", index, piece, None, None)
        return on_token

    def _on_finish(self, index: int, tracker: TextTracker) -> Callable[[str, BaseException | None], None]:
        def on_finish(reason: str, error: BaseException | None) -> None:
            self._post("end", index, tracker.take(final=True), reason, error)
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    self.gate.report("finished")
        return on_finish

    # -- on the event loop -------------------------------------------------------------------------
    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()

    async def pieces(self, echo: dict[int, str]) -> AsyncIterator[ChoicePiece]:
        """Each choice's text as it comes, `echo[i]` in front of choice i's first piece; a choice's last
        piece carries its finish reason. DeadlineExceeded past the deadline; a failed choice's error."""
        owed = dict(echo)
        open_ = len(self.requests)
        try:
            while open_:
                try:
                    kind, index, text, reason, error = await asyncio.wait_for(
                        self._queue.get(), max(self.deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    raise DeadlineExceeded() from None
                if kind == "end":
                    open_ -= 1
                    if error is not None:
                        raise error
                    if reason == "cancelled":
                        raise DeadlineExceeded()  # only a deadline cancels while someone reads
                text = owed.pop(index, "") + text
                if kind == "piece" or text:
                    yield ChoicePiece(index, text)
                if kind == "end":
                    yield ChoicePiece(index, "", reason)
        finally:
            self.cancel()
