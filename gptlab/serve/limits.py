"""Bounded concurrency, per-request deadlines and a body-size cap for the server.

Generation is CPU-bound torch, so it runs on a fixed pool of worker threads while the event loop
keeps answering. A request is admitted only while fewer than `workers + queue` are in flight
(else 429), and it carries a deadline. The deadline is enforced twice: the waiting coroutine gives
up with a 504, and a forward pre-hook on the model raises inside the worker thread at the next
forward pass, so an abandoned generation frees its worker instead of running to max_tokens. The
same hook stops the generation of a client that went away (`Gate.run`'s `client_gone`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import torch
from starlette.exceptions import HTTPException
from starlette.types import Receive

T = TypeVar("T")
log = logging.getLogger("gptlab.serve")

# A request's moments in the gate: admitted (on the event loop), started and finished (on its worker),
# and cancelled (on the event loop, when its client went away: its worker stops at its next step).
GateEvent = Literal["admitted", "started", "finished", "cancelled"]
GateHook = Callable[[GateEvent], None]


class Busy(Exception):
    """Every worker is busy and the queue is full (429)."""


class DeadlineExceeded(Exception):
    """The request ran past its deadline (504)."""


class Cancelled(Exception):
    """The client went away; the worker stops at the next forward pass."""


class ClientGone(Exception):
    """Raised to the route whose client disconnected before its answer was ready: nobody reads the answer."""


class Job:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded()

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


_current = threading.local()  # the Job a worker thread is running, read by the forward hook


def _forward_pre_hook(module, args):
    job = getattr(_current, "job", None)
    if job is not None:
        job.check()


_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # models that have the hook (once each)


def install_deadline_hook(model: torch.nn.Module) -> None:
    """Make every forward pass of `model` check the calling thread's job (no-op outside a job).

    A GPT's one-token steps (`GPT.decode`: plain generation and explanations after the prompt) do
    not go through the model's own call but through its token embedding's, which gets the hook too.
    """
    for module in (model, getattr(model, "tok_emb", None)):
        if isinstance(module, torch.nn.Module) and module not in _HOOKED:
            module.register_forward_pre_hook(_forward_pre_hook)
            _HOOKED.add(module)


class Gate:
    """Admission (429 past capacity), a thread pool for generation, and deadlines (504).

    `on_event`, if given, is told each GateEvent as it happens, on the thread it happens on; by
    "finished" the request no longer counts in `in_flight`. It is the one way to watch the gate
    without polling it: metrics, or a test that must act the moment a worker is busy instead of
    sleeping and hoping. It must be quick; an exception from it is logged, never raised.
    """

    def __init__(self, workers: int, queue: int, timeout_s: float, on_event: GateHook | None = None):
        self.workers = workers
        self.capacity = workers + queue
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gptlab-serve")
        self._lock = threading.Lock()
        self.in_flight = 0  # admitted and not yet finished in its worker thread

    def _notify(self, event: GateEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            # An observer must not break the accounting: an admitted request is always released.
            log.exception("the gate's on_event hook failed on %r", event)

    def report(self, event: GateEvent) -> None:
        """Tell `on_event` about a request that runs elsewhere (a model's engine): the same four
        moments, so whoever watches the gate watches every request."""
        self._notify(event)

    def _admit(self) -> Job:
        with self._lock:
            if self.in_flight >= self.capacity:
                raise Busy()
            self.in_flight += 1
        self._notify("admitted")
        return Job(time.monotonic() + self.timeout_s)

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _in_worker(self, job: Job, fn: Callable[[], T]) -> T:
        # The slot is held until the thread is done, not until the client stops waiting, so a
        # timed-out generation still counts against capacity while it winds down.
        try:
            job.check()  # it may have waited in the queue past its deadline
            self._notify("started")
            _current.job = job
            with torch.no_grad():
                return fn()
        finally:
            _current.job = None
            self._release()
            self._notify("finished")

    async def run(self, fn: Callable[[], T], client_gone: Callable[[], Awaitable[object]] | None = None) -> T:
        """Run blocking `fn` on a worker; Busy, DeadlineExceeded, ClientGone or fn's own exception.

        `client_gone()`, if given, returns once the client has disconnected (see `disconnect_of`);
        the generation is then cancelled at its next forward pass and its worker freed.
        """
        job = self._admit()
        fut = asyncio.get_running_loop().run_in_executor(self.executor, self._in_worker, job, fn)
        watcher = asyncio.ensure_future(client_gone()) if client_gone else None
        try:
            # asyncio.wait cancels neither future on a timeout: the worker's must run to its `finally`
            # (cancelled while still queued, it would never release its place in the gate).
            done, _ = await asyncio.wait([f for f in (fut, watcher) if f], timeout=job.remaining(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                return fut.result()
            self._cancel(job, "cancelled" if watcher in done else None)
            raise ClientGone() if watcher in done else DeadlineExceeded()
        except asyncio.CancelledError:  # the task answering the client was cancelled (server shutting down)
            self._cancel(job, "cancelled")
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                if watcher.done():  # it failed (a broken connection): that too means nobody is listening
                    consume(watcher)
            if not fut.done():
                fut.add_done_callback(consume)

    def _cancel(self, job: Job, event: GateEvent | None) -> None:
        job.cancelled.set()
        if event:
            self._notify(event)

    async def stream(self, make_iter: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
        """Run the blocking iterator from `make_iter` on one worker and yield its items here.

        Admission happens at the first `__anext__`, so Busy (and errors raised before the first
        item) reach the caller before it has sent any response.
        """
        job = self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def produce() -> None:
            try:
                for item in make_iter():
                    job.check()
                    loop.call_soon_threadsafe(items.put_nowait, ("item", item))
                loop.call_soon_threadsafe(items.put_nowait, ("end", None))
            except BaseException as e:  # noqa: BLE001 - not swallowed: the consumer re-raises it
                loop.call_soon_threadsafe(items.put_nowait, ("error", e))

        fut = loop.run_in_executor(self.executor, self._in_worker, job, produce)
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(items.get(), job.remaining())
                except asyncio.TimeoutError:
                    raise DeadlineExceeded() from None
                if kind == "end":
                    break
                if kind == "error":
                    raise value
                yield value
        finally:
            # Normal end, error, timeout or a client that went away: stop the worker either way.
            job.cancelled.set()
            if not fut.done():
                fut.add_done_callback(consume)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def under_current_job(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, to run on another thread (a model's engine), under the job of the worker calling this:
    the forward hook there stops it at the deadline or when its client leaves, as on the worker."""
    job = getattr(_current, "job", None)

    def run() -> T:
        _current.job = job
        try:
            return fn()
        finally:
            _current.job = None

    return run


def consume(fut: asyncio.Future) -> None:
    # The worker's exception (Cancelled, DeadlineExceeded) is expected once nobody waits for it:
    # retrieving it keeps asyncio from logging "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


def disconnect_of(receive: Receive) -> Callable[[], Awaitable[None]]:
    """`client_gone` for `Gate.run` from a request's ASGI `receive`: returns when the client disconnects.

    Once the route has read the body, the server's next message is the disconnect (uvicorn sends it
    when the connection closes), so waiting on `receive` costs nothing until then.
    """
    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # more body than the route read: not ours to use

    return gone


class BodyTooLarge(HTTPException):
    """Raised from `receive`, inside the app, so the app's HTTPException handler answers 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, too_large_message(max_bytes))


def too_large_message(max_bytes: int) -> str:
    return (f"request body is larger than {max_bytes} bytes: send a shorter prompt "
            "(the server's --max-body-bytes sets the limit)")


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({"error": {
            "message": too_large_message(self.max_bytes),
            "type": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
