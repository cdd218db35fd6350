"""Continuous batching: one loop owns a model and a fixed set of KV-cache slots, and decodes every
request it holds together, one token each per step (Orca's iteration-level scheduling; llama.cpp's
server slots). Token ids only: no text, no asyncio, no HTTP (the server's bridge is gptlab/serve/engines.py).

A request arrives with its prompt ids, its own SamplingConfig and its own seeded generator. Between
steps the loop admits waiting requests into free slots (its prompt is computed on its own, batch 1,
and its keys/values copied into the slot, or a short prompt is fed through the batched steps one
id per step; either way the prompt's keys, values and logits are kept (up to a quarter of the slot
cache's size), so a prompt seen again, as a class sends the same one, costs a copy), then one
forward pass (`GPT.decode` on a `SlotCache`) runs every slot's newest token at that slot's own
position, and each request samples its next id with the pure functions of `gptlab.infer.sampling`.
A slot is freed at end-of-text, a stop (the request's `stop_fn`), max_new_tokens, or a
cancellation, which takes effect before the next step.
Requests beyond the slots wait in a bounded queue; past it `submit` raises EngineFull.

Determinism per request: a request's tokens do not depend on who shares its batch. Its prompt is
always computed alone or in its own row (a kept prompt holds the bits that computing it again the
same way would give), and every decoding step has the same shapes whatever the load: all `slots`
rows (free ones compute a dummy token) over all `max_len` key positions, masked per row. A CPU
matmul's result for one row can differ in its last bits between batch 1 and batch 32 (another
kernel, another summation order: measured 1e-7 to 1e-6 on the logits), which can flip a sampled
token; with fixed shapes the kernels and their order are the same every step, and a row's bits
depend only on that row's inputs (tests/test_serve_engine.py checks alone == under load, bit for
bit). The price is that a step costs a full batch even when one request is running, except on a
CPU in fp32 (`infer/native.py`), where each live row is one C call whose bits depend on that row
alone, so a step costs its live rows only. A sequence that
outgrows its slot (or the context) continues on its own, re-running its last context_length tokens
each step (the same sliding window as `generate_steps`), still batch 1.

`call(fn)` runs a function on the loop's thread between steps: the server runs explanation traces
(which capture attention, so they use the model's plain forward) there, so they never race the
decoding steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from gptlab.infer import native
from gptlab.infer.sampling import SamplingConfig, draw, make_generator, process_logits
from gptlab.model.gpt import GPT
from gptlab.model.layers import KVCache, SlotCache

log = logging.getLogger("gptlab.engine")
# Prompts up to this many ids are fed one id per step through the batch (their rows are computed
# anyway); longer ones are computed at once, alone. Fed, a 6-id prompt costs 6 rows of batched steps
# instead of a batch-1 forward that costs a third of a batch-32 step of a small model (measured). With
# every prompt new, serve_load.py --distinct-prompts gave 0.39-0.42x offline's tokens/s when every
# prompt was computed alone, 0.46-0.51x with short ones fed.
INGEST_MAX = 16
# A request's uniform numbers are drawn this many at a time from its own generator (see _Live.uniform).
UNIFORM_CHUNK = 32
T = TypeVar("T")


class EngineFull(Exception):
    """Every slot is busy and the waiting queue is full: refuse (the server answers 429)."""


class EngineClosed(Exception):
    """The engine was shut down (its model unloaded) before the request finished."""


@dataclass
class EngineRequest:
    """One sequence to decode. The callbacks run on the engine's thread and must be quick.

    on_token(id): each new id, as it is sampled (an end-of-text that ends it included), after stop_fn saw it.
    on_finish(reason, error): exactly once per submitted request: "stop" (end-of-text or stop_fn),
    "length" (max_new_tokens), "cancelled", or "error" with the exception (the request failed; the
    engine goes on with the others).
    stop_fn(id) -> True ends the request with "stop" after that id (the text side's stop strings).
    """
    prompt_ids: list[int]
    cfg: SamplingConfig
    on_token: Callable[[int], None]
    on_finish: Callable[[str, BaseException | None], None]
    stop_fn: Callable[[int], bool] | None = None
    generator: torch.Generator | None = None     # default: seeded with cfg.seed on the model's device
    on_start: Callable[[], None] | None = None   # the request got its slot (left the queue)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop it: no forward pass runs for it after the step in progress (its slot is freed)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass(eq=False)  # compared by identity: it holds tensors
class _Live:
    """A request holding a slot."""
    req: EngineRequest
    slot: int
    hist: list[int]                        # prompt (as fitted to the context) + new ids
    generator: torch.Generator
    pos: int = 0                           # next position of the slot to feed: hist[pos] goes there
    in_slot: bool = True                   # False: outgrew the slot; recomputes its window alone
    n_new: int = 0
    fresh_1xV: torch.Tensor | None = None  # just admitted: its prompt's next-token logits, not sampled yet
    own_generator: bool = True             # made by the engine: nobody else draws from it
    keep_prompt: bool = False              # fed through its slot: keep the prompt once it is in
    _uniforms: list[float] = field(default_factory=list)

    def uniform(self) -> float:
        """The request's next uniform number: `torch.rand((1, 1), generator=g)` (fp32, the draw of
        `sample`), taken UNIFORM_CHUNK at a time from a generator only this request uses: one call
        gives the same numbers as that many single draws (checked in tests/test_serve_engine.py)."""
        if not self._uniforms:
            n = UNIFORM_CHUNK if self.own_generator else 1
            self._uniforms = torch.rand((n,), generator=self.generator, device=self.generator.device,
                                        dtype=torch.float32).tolist()[::-1]
        return self._uniforms.pop()


class Engine:
    """The decoding loop of one model on its own thread; see the module's doc."""

    def __init__(self, model: GPT, *, slots: int, queue: int, eot_id: int | None, max_len: int | None = None,
                 name: str = "engine", prompt_cache_bytes: int | None = None):
        if slots < 1 or queue < 0:
            raise ValueError(f"slots must be >= 1 and queue >= 0 (got {slots}, {queue})")
        self.model = model
        # The one-token step with the model's tensors bound once: the engine's model does not change.
        self.decode = model.decoder()
        # On a CPU in fp32, the live rows alone, one C call each (infer/native.py); None: the batch above.
        self.native_step = native.slot_decoder(model)
        self.slots = slots
        self.capacity = slots + queue
        self.eot_id = eot_id
        cfg = model.cfg
        p = model.tok_emb.weight
        self.device = p.device
        self.max_len = min(max_len or cfg.context_length, cfg.context_length)
        self.cache = SlotCache(cfg.n_layer, slots, cfg.n_head, self.max_len, cfg.head_size, device=p.device, dtype=p.dtype)
        self._keys_1xS = torch.arange(self.max_len, device=p.device)[None]
        self._pos = [0] * slots                 # each slot's `pos` (free slots: 0), copied to cache.pos_B per batched step
        self._ids = [0] * slots                 # each slot's input id of the step
        self._seen_BxV = torch.zeros(slots, cfg.vocab_size, dtype=torch.bool, device=p.device)  # ids in each text
        self._live: list[_Live | None] = [None] * slots
        self._waiting: deque[EngineRequest] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cv = threading.Condition()
        self._in_flight = 0                     # submitted and not finished (waiting or in a slot)
        self._closed = False
        self.steps = 0                          # batched decoding steps run (for tests and metrics)
        # Prompts' keys, values and next-token logits kept for reuse (vLLM's automatic prefix caching,
        # for whole prompts), least recently used dropped first past prompt_cache_bytes. Default: a
        # quarter of the slot cache (~70 prompts of 10 ids for `small` at 32 slots); with the whole
        # slot cache's size, serve_load.py --distinct-prompts grew the server's RSS by 8% (limit 10%).
        # A fed prompt is kept from its slot once its last id is in, a long one from its batch-1
        # prefill: a prompt always takes the same way (by its length), so a kept one gives the bits
        # that computing it again would.
        self._prompts: OrderedDict[tuple[int, ...], tuple[KVCache, torch.Tensor, int]] = OrderedDict()
        self._prompt_bytes = 0
        kv = self.cache.k_LxBxHxSxD
        self.prompt_cache_bytes = 2 * kv.numel() * kv.element_size() // 4 if prompt_cache_bytes is None else prompt_cache_bytes
        self.prompt_hits = 0                    # prompts whose prefill was kept from an earlier request
        self._thread = threading.Thread(target=self._run, name=f"gptlab-{name}", daemon=True)
        self._thread.start()

    # -- what other threads call ------------------------------------------------------------------
    def submit(self, *reqs: EngineRequest) -> None:
        """Queue the requests, all or none (EngineFull past slots + queue, EngineClosed after close()).
        Their settings are validated here, before any comes near a batch."""
        for req in reqs:
            req.cfg.validate()
            if not req.prompt_ids:
                raise ValueError("a prompt has no tokens: start an empty prompt with end-of-text")
        with self._cv:
            if self._closed:
                raise EngineClosed()
            if self._in_flight + len(reqs) > self.capacity:
                raise EngineFull()
            self._in_flight += len(reqs)
            self._waiting.extend(reqs)
            self._cv.notify()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine's thread between two steps; its result (or exception) in the Future."""
        fut: Future[T] = Future()
        with self._cv:
            if self._closed:
                fut.set_exception(EngineClosed())
                return fut
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(live is not None for live in self._live)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the loop; requests still waiting or running finish with "error" (EngineClosed)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._next_round():
                    pass
        finally:
            self._fail_everything(EngineClosed())

    def _next_round(self) -> bool:
        with self._cv:
            while not (self._closed or self._waiting or self._calls or any(self._live)):
                self._cv.wait()
            if self._closed:
                return False
            calls = list(self._calls)
            self._calls.clear()
        for fn, fut in calls:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)
        self._drop_cancelled()  # frees slots for the waiting
        self._admit()
        self._drop_cancelled()  # cancelled while its prompt was computed: no step for it
        if any(live is not None for live in self._live):
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - the batch failed (out of memory...): fail its requests, go on
                log.exception("a decoding step failed; its requests are ended")
                for live in self._live:
                    if live is not None:
                        self._end(live, "error", e)
        return True

    def _drop_cancelled(self) -> None:
        for live in self._live:
            if live is not None and live.req.cancelled:
                self._end(live, "cancelled")
        with self._cv:  # a queue of requests whose clients left must not keep others out
            gone = [r for r in self._waiting if r.cancelled]
            if gone:
                self._waiting = deque(r for r in self._waiting if not r.cancelled)
        for req in gone:
            self._finish(req, "cancelled")

    def _admit(self) -> None:
        for slot in range(self.slots):
            if self._live[slot] is not None:
                continue
            with self._cv:
                if not self._waiting:
                    return
                req = self._waiting.popleft()
            try:
                self._start(req, slot)
            except Exception as e:  # noqa: BLE001 - this request's failure, not the engine's
                live = self._live[slot]
                if live is not None:
                    self._end(live, "error", e)
                else:
                    self._finish(req, "error", e)

    def _start(self, req: EngineRequest, slot: int) -> None:
        """Put `req` in `slot`. A prompt kept from an earlier request is copied into the slot; else a
        short prompt is fed through the batched steps one id per step, in a row that is computed
        anyway (with the native step, where a row costs a C call fed or not, all its ids now, one
        call each: the same bits); a longer one is computed alone (batch 1) and copied into the
        slot. Copied, its logits wait for this round's sampling. Which way a prompt is computed
        depends only on its length."""
        if req.on_start is not None:
            req.on_start()
        cfg, C = req.cfg, self.model.cfg.context_length
        if cfg.max_new_tokens == 0:
            self._finish(req, "length")
            return
        hist = list(req.prompt_ids[-C:])
        generator = req.generator if req.generator is not None else make_generator(cfg.seed, self.device)
        live = _Live(req, slot, hist, generator, own_generator=req.generator is None)
        self._seen_BxV[slot] = False
        self._seen_BxV[slot, torch.tensor(hist, device=self.device)] = True
        kept = self._prompts.get(tuple(hist)) if len(hist) < self.max_len else None
        if kept is not None:
            self._prompts.move_to_end(tuple(hist))
            self.prompt_hits += 1
            self.cache.fill(slot, kept[0])
            live.pos, live.fresh_1xV = len(hist), kept[1]
        elif len(hist) <= INGEST_MAX and len(hist) < self.max_len:
            self.cache.clear(slot)
            if self.native_step is None:
                live.keep_prompt = True  # kept by _logits once its last id is in
            else:
                # The C step costs a row per id whether fed or not: feed the whole prompt now, id by
                # id (the bits a fed prompt gets), so its first token does not wait len(hist) steps.
                buf_BxV = torch.zeros(self.slots, self.model.cfg.vocab_size)
                self.native_step(self.cache, [slot] * len(hist), hist, list(range(len(hist))), buf_BxV)
                live.pos, live.fresh_1xV = len(hist), buf_BxV[slot:slot + 1].clone()
                self._keep(hist, self.cache.take(slot, len(hist)), live.fresh_1xV)
        elif len(hist) < self.max_len:  # room for at least one new position in the slot
            ids_1xT = torch.tensor([hist], dtype=torch.long, device=self.device)
            prefill = self.model.new_cache(1, max_len=len(hist))
            live.fresh_1xV = self.model(ids_1xT, cache=prefill, last_only=True).logits[:, -1].float()
            self.cache.fill(slot, prefill)
            live.pos = len(hist)
            self._keep(hist, prefill, live.fresh_1xV)
        else:
            live.in_slot = False
            ids_1xT = torch.tensor([hist], dtype=torch.long, device=self.device)
            live.fresh_1xV = self.model(ids_1xT, last_only=True).logits[:, -1].float()
        self._pos[slot] = live.pos
        self._live[slot] = live

    def _keep(self, prompt: list[int], cache: KVCache, logits_1xV: torch.Tensor) -> None:
        """Keep a prompt's batch-1 cache and next-token logits, dropping the least recently used past
        prompt_cache_bytes."""
        size = sum(t.numel() * t.element_size() for t in (cache.k_LxBxHxSxD, cache.v_LxBxHxSxD, logits_1xV))
        if size > self.prompt_cache_bytes or tuple(prompt) in self._prompts:
            return
        self._prompts[tuple(prompt)] = (cache, logits_1xV, size)
        self._prompt_bytes += size
        while self._prompt_bytes > self.prompt_cache_bytes:
            self._prompt_bytes -= self._prompts.popitem(last=False)[1][2]

    def _step(self) -> None:
        """One new id for every live request: the logits of all slots (see `_logits`), then sampling."""
        logits_BxV, lives = self._logits([live for live in self._live if live is not None])
        if not lives:
            return
        tokens = self._sample(lives, logits_BxV)
        slots_N = torch.tensor([live.slot for live in lives], device=self.device)
        self._seen_BxV[slots_N, torch.tensor(tokens, device=self.device)] = True
        for live, t in zip(lives, tokens):
            try:
                self._emit(live, t)
            except Exception as e:  # noqa: BLE001 - one request's failure (its stop_fn, its sink): end it alone
                self._end(live, "error", e)

    def _logits(self, lives: list[_Live]) -> tuple[torch.Tensor, list[_Live]]:
        """(slots, V) next-token logits, row = slot, and the requests whose row holds their next id's
        logits: one batched forward over every slot (fixed shapes, see the module's doc) for those
        in their slot (a request still feeding its prompt samples nothing yet); the prompt's logits
        for those computed alone or kept; a batch-1 window for those that outgrew their slot."""
        decoding = [live for live in lives if live.in_slot and live.fresh_1xV is None]
        ready = [live for live in lives if not (live.in_slot and live.fresh_1xV is None)]
        if decoding:
            for live in decoding:
                self._ids[live.slot] = live.hist[live.pos]
            if self.native_step is not None:  # each live row alone: the same bits, at the cost of its rows
                logits_BxV = torch.zeros(self.slots, self.model.cfg.vocab_size)
                slots = [live.slot for live in decoding]
                self.native_step(self.cache, slots, [self._ids[s] for s in slots], [self._pos[s] for s in slots],
                                 logits_BxV)
            else:
                ids_B = torch.tensor(self._ids, dtype=torch.long, device=self.device)
                self.cache.pos_B.copy_(torch.tensor(self._pos))  # the batched step reads positions here
                # Free slots attend to their position 0 only, so no row is all-masked.
                mask_BxS = self._keys_1xS <= self.cache.pos_B[:, None]
                logits_BxV = self.decode(ids_B, self.cache.pos_B, self.cache, mask_BxS).float()
            self.steps += 1
            for live in decoding:
                live.pos += 1
                self._pos[live.slot] = live.pos
                if live.pos == len(live.hist):  # the prompt is in: this row predicts its next id
                    ready.append(live)
                    if live.keep_prompt:
                        live.keep_prompt = False
                        self._keep(live.hist, self.cache.take(live.slot, live.pos), logits_BxV[live.slot:live.slot + 1].clone())
                if live.pos >= self.max_len:
                    self._leave_slot(live)
        else:
            logits_BxV = torch.zeros(self.slots, self.model.cfg.vocab_size, device=self.device)
        C = self.model.cfg.context_length
        for live in ready:
            if live.fresh_1xV is not None:
                logits_BxV[live.slot] = live.fresh_1xV[0]
                live.fresh_1xV = None
            elif not live.in_slot and live not in decoding:
                window_1xT = torch.tensor([live.hist[-C:]], dtype=torch.long, device=self.device)
                logits_BxV[live.slot] = self.model(window_1xT, last_only=True).logits[0, -1].float()
        return logits_BxV, [live for live in lives if live in ready]

    def _sample(self, lives: list[_Live], logits_BxV: torch.Tensor) -> list[int]:
        """Each live request's next id, with its own settings and generator, as `sample` picks it at
        batch 1. Over all slot rows at once (fixed shapes again: a row's result does not depend on the
        others'): the greedy rows by one argmax, the rows that only scale by a temperature by one
        softmax and one draw (dividing by a column of temperatures gives the bits of dividing by each
        row's own). Rows with filters or a repetition penalty run the pure functions of `sampling`
        once per distinct setting; top-p, whose search widens for the hardest row of a batch, per row.
        The random numbers come from each request's generator, one per id, as `sample` draws them."""
        chosen: dict[int, int] = {}
        greedy = [live for live in lives if _plain(live.req.cfg) and live.req.cfg.temperature == 0]
        scaled = [live for live in lives if _plain(live.req.cfg) and live.req.cfg.temperature > 0]
        if greedy:
            best = logits_BxV.argmax(dim=-1).tolist()
            for live in greedy:
                chosen[live.slot] = best[live.slot]
        if scaled:
            temps, us = [1.0] * self.slots, [0.5] * self.slots
            for live in scaled:
                temps[live.slot], us[live.slot] = live.req.cfg.temperature, live.uniform()
            temp_Bx1 = torch.tensor(temps, dtype=logits_BxV.dtype, device=self.device)[:, None]
            probs_BxV = (logits_BxV / temp_Bx1).softmax(dim=-1)
            u_Bx1 = torch.tensor(us, dtype=probs_BxV.dtype, device=self.device)[:, None]
            picked = draw(probs_BxV, u_Bx1=u_Bx1).tolist()
            for live in scaled:
                chosen[live.slot] = picked[live.slot]
        groups: dict[tuple, list[_Live]] = {}
        for live in lives:
            c = live.req.cfg
            if _plain(c):
                continue
            # Rows with the same settings share one call; top-p rows each get their own (slot in the key).
            key: tuple = (c.temperature, c.top_k, c.top_p, c.min_p, c.repetition_penalty, live.slot if c.top_p < 1.0 else -1)
            groups.setdefault(key, []).append(live)
        for members in groups.values():
            cfg = members[0].req.cfg
            rows = logits_BxV if len(members) > 1 or cfg.top_p == 1.0 else logits_BxV[members[0].slot:members[0].slot + 1]
            seen = self._seen_BxV if rows.shape[0] == self.slots else self._seen_BxV[members[0].slot:members[0].slot + 1]
            probs_RxV = process_logits(rows, cfg, seen).softmax(dim=-1)
            at = (lambda live: live.slot) if rows.shape[0] == self.slots else (lambda live: 0)
            if cfg.temperature == 0:
                picked = probs_RxV.argmax(dim=-1).tolist()
            else:
                u = [0.5] * rows.shape[0]
                for live in members:
                    u[at(live)] = live.uniform()
                picked = draw(probs_RxV, u_Bx1=torch.tensor(u, dtype=probs_RxV.dtype, device=self.device)[:, None]).tolist()
            for live in members:
                chosen[live.slot] = picked[at(live)]
        return [chosen[live.slot] for live in lives]

    def _leave_slot(self, live: _Live) -> None:
        # Its next id would need a key position the slot does not have: from now on it recomputes
        # its window alone. Its slot row keeps computing a dummy token at position 0 until freed.
        live.in_slot = False
        self._pos[live.slot] = 0

    def _emit(self, live: _Live, t: int) -> None:
        """Hand out `live`'s new id `t`, and end the request if it finishes here."""
        live.hist.append(t)
        live.n_new += 1
        # stop_fn first: the text side decodes the id there, and its on_token then sends that text.
        stop = t == self.eot_id or (live.req.stop_fn is not None and live.req.stop_fn(t))
        live.req.on_token(t)
        if stop:
            self._end(live, "stop")
        elif live.n_new >= live.req.cfg.max_new_tokens:
            self._end(live, "length")

    def _end(self, live: _Live, reason: str, error: BaseException | None = None) -> None:
        if self._live[live.slot] is live:
            self._live[live.slot] = None
            self._pos[live.slot] = 0
        self._finish(live.req, reason, error)

    def _finish(self, req: EngineRequest, reason: str, error: BaseException | None = None) -> None:
        with self._cv:
            self._in_flight -= 1
        try:
            req.on_finish(reason, error)
        except Exception:  # noqa: BLE001 - a broken sink must not stop the loop
            log.exception("a request's on_finish failed")

    def _fail_everything(self, error: BaseException) -> None:
        with self._cv:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for live in self._live:
            if live is not None:
                self._end(live, "error", error)
        for req in waiting:
            self._finish(req, "error", error)
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)


def _plain(cfg: SamplingConfig) -> bool:
    """Sampling that is a temperature alone (or greedy): no filter, no repetition penalty."""
    return cfg.top_k == 0 and cfg.top_p == 1.0 and cfg.min_p == 0.0 and cfg.repetition_penalty == 1.0


def wait_idle(engine: Engine, timeout: float = 30.0) -> bool:
    """True once nothing is waiting or running (for tests and benchmarks; polls every millisecond)."""
    deadline = time.monotonic() + timeout
    while engine.in_flight:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
