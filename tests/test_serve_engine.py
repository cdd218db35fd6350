"""The continuous-batching engine (gptlab/infer/engine.py) and `gptlab serve` on top of it.

Invariants: a slot cache computes what a full recompute does; a request's tokens are the same alone
and under load (bit for bit, not "close"); a cancelled request runs no step after the one in
progress and frees its slot; stop strings and max_tokens hold per request inside one batch; a full
queue answers 429; bad settings never reach a batch; one failing request leaves the others intact;
/metrics counts what was served; models past the memory cap are unloaded least recently used first.

Tests that need requests to share a batch pause the engine between steps (`paused`) while they
submit, instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from gptlab.errors import UserError
from gptlab.infer import native
from gptlab.infer.engine import INGEST_MAX, UNIFORM_CHUNK, Engine, EngineClosed, EngineFull, EngineRequest, wait_idle
from gptlab.infer.generate import generate_steps
from gptlab.infer.sampling import SamplingConfig
from gptlab.model import GPT
from gptlab.model.config import tiny
from gptlab.model.layers import SlotCache

WAIT_S = 30


@pytest.fixture(params=["native", "torch"])
def step_path(request) -> Iterator[str]:
    """An engine built inside the block decodes its live rows by the C step (infer/native.py, where a
    compiler is found) or, under native.off(), every slot in one batched torch step."""
    with contextlib.nullcontext() if request.param == "native" else native.off():
        yield request.param


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(50)).eval()


class Run:
    """One request's ids and end, as the engine reports them."""

    def __init__(self, prompt: list[int], stop_after: int | None = None, fail_at: int | None = None,
                 cancel_at: int | None = None, **sampling):
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.cancel_at = cancel_at

        def stop_fn(t: int) -> bool:
            if fail_at is not None and len(self.tokens) + 1 == fail_at:
                raise RuntimeError("injected failure")
            return stop_after is not None and len(self.tokens) + 1 >= stop_after

        self.req = EngineRequest(prompt, SamplingConfig(**sampling), on_token=self._on_token,
                                 on_finish=self._on_finish, stop_fn=stop_fn)

    def _on_token(self, t: int) -> None:
        self.tokens.append(t)
        if self.cancel_at is not None and len(self.tokens) == self.cancel_at:
            self.req.cancel()

    def _on_finish(self, reason: str, error: BaseException | None) -> None:
        self.reason, self.error = reason, error
        self.done.set()

    def wait(self) -> Run:
        assert self.done.wait(WAIT_S), "the request never finished"
        return self


@contextlib.contextmanager
def paused(engine: Engine) -> Iterator[None]:
    """The engine's thread waits between two steps until the block ends."""
    go, there = threading.Event(), threading.Event()
    engine.call(lambda: (there.set(), go.wait(WAIT_S)))
    assert there.wait(WAIT_S)
    try:
        yield
    finally:
        go.set()


def load(engine: Engine, n: int, seed: int = 100) -> list[Run]:
    """n other requests of assorted prompts, lengths and settings."""
    g = torch.Generator().manual_seed(seed)
    runs = []
    for i in range(n):
        prompt = torch.randint(0, 50, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
        runs.append(Run(prompt, max_new_tokens=int(torch.randint(1, 40, (1,), generator=g)), seed=i,
                        temperature=[0.0, 0.7, 1.0, 1.5][i % 4], top_p=[1.0, 0.9][i % 2], repetition_penalty=[1.0, 1.3][i % 3 == 0]))
    engine.submit(*[r.req for r in runs])
    return runs


# -- the model's slot cache ------------------------------------------------------------------------
def test_slot_cache_decoding_equals_full_recompute(model):
    """Rows at different positions in one SlotCache step give each row's logits of a full forward."""
    torch.manual_seed(1)
    seqs = [torch.randint(0, 50, (n,)).tolist() for n in (3, 9, 5)]
    cfg = model.cfg
    cache = SlotCache(cfg.n_layer, 4, cfg.n_head, cfg.context_length, cfg.head_size)
    with torch.inference_mode():
        for b, s in enumerate(seqs):                     # prefill all but the last id, each alone
            c = model.new_cache(1, len(s) - 1)
            model(torch.tensor([s[:-1]]), cache=c)
            cache.fill(b, c)
        ids = torch.tensor([s[-1] for s in seqs] + [0])  # row 3: a free slot
        mask = torch.arange(cfg.context_length)[None] <= cache.pos_B[:, None]
        logits = model.decode(ids, cache.pos_B.clone(), cache, mask)
        for b, s in enumerate(seqs):
            full = model(torch.tensor([s])).logits[0, -1]
            torch.testing.assert_close(logits[b], full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one new position per row"):
        cache.update(0, torch.zeros(4, cfg.n_head, 2, cfg.head_size), torch.zeros(4, cfg.n_head, 2, cfg.head_size))


# -- determinism --------------------------------------------------------------------------------------
def test_a_rows_logits_do_not_depend_on_the_other_rows_or_its_slot(model):
    """The engine's reason for fixed shapes: at a fixed batch and key length, one row's logits are the
    same bits whatever the other rows hold and whichever slot it sits in (batch 1 would differ)."""
    cfg, B, S = model.cfg, 8, model.cfg.context_length
    mine = [3, 1, 4, 1, 5, 9]

    def logits_of(slot: int, others: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(slot)
        cache = SlotCache(cfg.n_layer, B, cfg.n_head, S, cfg.head_size)
        with torch.inference_mode():
            for b in range(B):
                seq = mine[:-1] if b == slot else torch.randint(0, 50, (int(torch.randint(1, 20, (1,), generator=g)),),
                                                                generator=g).tolist()
                if b == slot or others:
                    c = model.new_cache(1, len(seq))
                    model(torch.tensor([seq]), cache=c)
                    cache.fill(b, c)
            ids = torch.randint(0, 50, (B,), generator=g) if others else torch.zeros(B, dtype=torch.long)
            ids[slot] = mine[-1]
            mask = torch.arange(S)[None] <= cache.pos_B[:, None]
            return model.decode(ids, cache.pos_B.clone(), cache, mask)[slot]

    first = logits_of(0, others=False)
    for slot, others in ((0, True), (5, True), (7, False)):
        assert torch.equal(logits_of(slot, others), first), (slot, others)


@pytest.mark.parametrize("sampling", [dict(temperature=1.0, seed=7), dict(temperature=0.8, top_p=0.9, top_k=20, seed=3),
                                      dict(temperature=0.0), dict(temperature=1.2, repetition_penalty=1.3, seed=11)])
@pytest.mark.parametrize("prompt", [[1, 2, 3, 4, 5], list(range(3, 23))], ids=["short", "long"])
def test_same_seed_same_tokens_alone_and_under_load(model, sampling, prompt, step_path):
    # 60 new tokens: past the tiny model's context of 32, so the sliding window is covered too.
    engine = Engine(model, slots=8, queue=64, eot_id=None)
    assert (engine.native_step is None) == (step_path == "torch" or native.status() != "on")
    try:
        alone = Run(prompt, max_new_tokens=60, **sampling)
        engine.submit(alone.req)
        alone.wait()
        with paused(engine):
            before = load(engine, 5)
            loaded = Run(prompt, max_new_tokens=60, **sampling)
            engine.submit(loaded.req)
            after = load(engine, 20, seed=200)  # these wait for slots and enter as others leave
        loaded.wait()
        assert len(alone.tokens) == 60 and loaded.reason == alone.reason == "length"
        assert loaded.tokens == alone.tokens
        assert all(r.wait().reason == "length" and r.error is None for r in before + after)
    finally:
        engine.close()


@pytest.mark.parametrize("long", [False, True], ids=["fed", "computed-alone"])
def test_a_kept_prompt_gives_the_tokens_a_computed_one_gives(model, long, step_path):
    """A prompt seen again is copied from what the engine kept (no step feeds it, no forward computes
    it) and gives the same tokens; past prompt_cache_bytes the least recently used is dropped."""
    runs: list[Run] = []

    def ask(prompt: list[int]) -> list[int]:
        runs.append(Run(prompt, max_new_tokens=12, temperature=1.0, seed=3))
        engine.submit(runs[-1].req)
        return runs[-1].wait().tokens

    n = INGEST_MAX + 2 if long else 3
    one, two, three = ([k + i % 40 for i in range(n)] for k in (1, 2, 3))
    per_id = 2 * model.cfg.n_layer * model.cfg.n_head * model.cfg.head_size * 4  # fp32 keys + values
    per_prompt = n * per_id + model.cfg.vocab_size * 4                          # + its logits row
    engine = Engine(model, slots=2, queue=4, eot_id=None, prompt_cache_bytes=2 * per_prompt)
    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))  # GPT.forward, not GPT.decode
    try:
        first = ask(one)
        steps, n_forwards = engine.steps, len(forwards)
        assert (engine.prompt_hits, n_forwards) == (0, int(long))
        assert ask(one) == first and engine.prompt_hits == 1
        assert engine.steps - steps == 11 and len(forwards) == n_forwards  # 12 tokens: the first from the kept logits
        second = ask(two)              # two prompts fill the cap: both kept
        assert ask(one) == first and engine.prompt_hits == 2
        ask(three)                     # `two`, the least recently used, is dropped
        assert ask(two) == second and engine.prompt_hits == 2   # computed again (and `one` dropped)
        assert ask(three) and engine.prompt_hits == 3
    finally:
        hook.remove()
        engine.close()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_engine_tokens_are_generate_steps_tokens_for_a_seed(model, temperature, step_path):
    """The engine samples as `generate_steps` does at batch 1: same generator draws (taken UNIFORM_CHUNK
    at a time: these cross a chunk), same pure functions (the logits differ at most
    in their last bits, which does not move these tokens), with other settings in the batch."""
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=UNIFORM_CHUNK + 8, seed=5)
    ref = [int(s.tokens_B[0]) for s in generate_steps(model, [[1, 2, 3]], cfg)]
    engine = Engine(model, slots=4, queue=4, eot_id=None)
    try:
        with paused(engine):
            run = Run([1, 2, 3], max_new_tokens=UNIFORM_CHUNK + 8, temperature=temperature, seed=5)
            others = [Run([4, 5], max_new_tokens=30, temperature=t, seed=1) for t in (1.3, 0.0)]
            engine.submit(run.req, *[r.req for r in others])
        assert run.wait().tokens == ref
    finally:
        engine.close()


def test_uniform_numbers_drawn_at_once_are_the_single_draws():
    """The engine takes a request's uniform numbers UNIFORM_CHUNK at a time: the same numbers, in the
    same order, as one `torch.rand((1, 1))` per token (what `sample` draws), over two chunks."""
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    at_once = [u for _ in range(2) for u in torch.rand((UNIFORM_CHUNK,), generator=g1).tolist()]
    one_by_one = [torch.rand((1, 1), generator=g2)[0, 0].item() for _ in range(2 * UNIFORM_CHUNK)]
    assert at_once == one_by_one


# -- ends, per request, inside a shared batch ---------------------------------------------------------
def test_stop_eot_max_tokens_and_cancel_hold_per_request_in_one_batch(model):
    engine = Engine(model, slots=6, queue=0, eot_id=None)
    try:
        with paused(engine):
            runs = {
                "long": Run([1, 2], max_new_tokens=25, seed=1),
                "short": Run([3], max_new_tokens=3, seed=2),
                "stop": Run([4, 5, 6], max_new_tokens=25, stop_after=4, seed=3),
                "cancel": Run([7], max_new_tokens=25, cancel_at=2, seed=4),
                "zero": Run([8], max_new_tokens=0, seed=5),
            }
            engine.submit(*[r.req for r in runs.values()])
            with pytest.raises(EngineFull):   # 6 slots, no queue: a sixth and seventh request do not fit
                engine.submit(Run([1]).req, Run([2]).req)
        got = {k: r.wait() for k, r in runs.items()}
        assert (len(got["long"].tokens), got["long"].reason) == (25, "length")
        assert (len(got["short"].tokens), got["short"].reason) == (3, "length")
        assert (len(got["stop"].tokens), got["stop"].reason) == (4, "stop")
        # Cancelled in its second token's callback: no step ran for it after that one.
        assert (len(got["cancel"].tokens), got["cancel"].reason) == (2, "cancelled")
        assert (got["zero"].tokens, got["zero"].reason) == ([], "length")
        assert wait_idle(engine) and engine.active == 0 and engine.in_flight == 0
    finally:
        engine.close()


def test_end_of_text_ends_a_request(model):
    engine = Engine(model, slots=2, queue=0, eot_id=None)
    try:
        first = Run([1, 2], max_new_tokens=10, temperature=0.0)
        engine.submit(first.req)
        eot = first.wait().tokens[2]
    finally:
        engine.close()
    engine = Engine(model, slots=2, queue=0, eot_id=eot)  # the greedy third id now ends the text
    try:
        run = Run([1, 2], max_new_tokens=10, temperature=0.0)
        engine.submit(run.req)
        assert run.wait().reason == "stop" and run.tokens[-1] == eot and len(run.tokens) <= 3
    finally:
        engine.close()


def test_a_cancelled_request_frees_its_slot_within_one_step(model):
    engine = Engine(model, slots=1, queue=1, eot_id=None)
    try:
        gone = Run([1, 2, 3], max_new_tokens=30, cancel_at=1, seed=1)
        nxt = Run([4], max_new_tokens=5, seed=2)
        with paused(engine):
            engine.submit(gone.req, nxt.req)
        assert gone.wait().reason == "cancelled" and len(gone.tokens) == 1
        assert nxt.wait().reason == "length" and len(nxt.tokens) == 5   # it got the only slot
    finally:
        engine.close()


def test_bad_settings_never_enter_and_a_failing_request_leaves_the_others(model):
    engine = Engine(model, slots=4, queue=4, eot_id=None)
    try:
        with pytest.raises(UserError, match="top-p"):
            engine.submit(Run([1], top_p=0.0).req)
        assert engine.in_flight == 0
        alone = Run([5, 6], max_new_tokens=12, seed=9)
        engine.submit(alone.req)
        alone.wait()
        with paused(engine):
            bad = Run([1, 2], max_new_tokens=12, fail_at=3, seed=1)
            good = Run([5, 6], max_new_tokens=12, seed=9)
            engine.submit(bad.req, good.req)
        assert bad.wait().reason == "error" and "injected" in str(bad.error) and len(bad.tokens) == 2
        assert good.wait().reason == "length" and good.tokens == alone.tokens
        later = Run([5, 6], max_new_tokens=12, seed=9)
        engine.submit(later.req)
        assert later.wait().tokens == alone.tokens   # the engine goes on
        assert engine.call(lambda: 1 / 0).exception(WAIT_S) is not None and engine.call(lambda: 42).result(WAIT_S) == 42
    finally:
        engine.close()
    with pytest.raises(EngineClosed):
        engine.submit(Run([1]).req)


# -- the server ----------------------------------------------------------------------------------------
pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gptlab.serve import ServeSettings, create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from conftest import GateWatch  # noqa: E402
from serve_harness import make_model  # noqa: E402

PROMPT = "wine review : germany : mosel"
HOST = "http://localhost"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for i, name in enumerate(("wine", "other", "third")):
        make_model(root / name, seed=i)
    return root


def app_of(models_dir: Path, on_gate_event=None, **settings):
    return create_app(models_dir, ServeSettings(**{"max_tokens": 64, **settings}), on_gate_event=on_gate_event)


async def post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST, timeout=WAIT_S) as c:
        return list(await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies)))


def body(**kw) -> dict:
    return {"model": "wine", "prompt": PROMPT, "max_tokens": 12, "seed": 1, **kw}


def batched(app, engine: Engine, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once; the engine starts on them only when all have entered it (one batch)."""
    with ThreadPoolExecutor(1) as pool, paused(engine):
        answers = pool.submit(asyncio.run, post_all(app, bodies))
        choices = sum(b.get("n", 1) for b in bodies)
        deadline = time.monotonic() + WAIT_S
        while engine.in_flight < choices and not answers.done():
            assert time.monotonic() < deadline, f"{engine.in_flight} of {choices} choices reached the engine"
            time.sleep(0.005)
    return answers.result(WAIT_S)


def test_http_same_seed_alone_and_under_load_and_n_choices(models_dir):
    app = app_of(models_dir, slots=8)
    with TestClient(app, base_url=HOST) as c:
        alone = c.post("/v1/completions", json=body(max_tokens=20, temperature=1.2)).json()
        engine = app.state.engines.get("wine")[1]
        others = [body(prompt=p, seed=i, max_tokens=5 + 3 * i, temperature=0.9)
                  for i, p in enumerate(["wine review", "a crisp , dry", "dark berries", "italy : tuscany"] * 3)]
        task = batched(app, engine, [body(max_tokens=20, temperature=1.2)] + others)
        loaded = task[0].json()
        assert loaded["choices"][0]["text"] == alone["choices"][0]["text"]
        assert loaded["usage"] == alone["usage"] and all(r.status_code == 200 for r in task)
        # n choices: choice j is the n=1 completion with seed + j, streamed or not.
        many = c.post("/v1/completions", json=body(n=3, seed=4)).json()["choices"]
        for j in range(3):
            assert many[j]["text"] == c.post("/v1/completions", json=body(seed=4 + j)).json()["choices"][0]["text"]
        streamed = c.post("/v1/completions", json=body(n=3, seed=4, stream=True, echo=True))
        texts = ["", "", ""]
        for block in streamed.text.split("\n\n"):
            if block.startswith("data: {"):
                for ch in httpx.Response(200, content=block[6:]).json()["choices"]:
                    texts[ch["index"]] += ch["text"]
        assert texts == [PROMPT + m["text"] for m in many]


def test_http_stop_strings_and_max_tokens_per_request_in_one_batch(models_dir):
    app = app_of(models_dir, slots=8)
    with TestClient(app, base_url=HOST) as c:
        ref = c.post("/v1/completions", json=body(max_tokens=30, temperature=0.0)).json()["choices"][0]["text"]
        words = ref.split()
        stop = words[3] if len(words) > 3 else words[-1]
        bodies = [body(max_tokens=30, temperature=0.0, stop=[stop]), body(max_tokens=2, temperature=0.0),
                  body(max_tokens=30, temperature=0.0), body(max_tokens=7, temperature=0.0, seed=3)]
        engine = app.state.engines.get("wine")[1]
        rs = batched(app, engine, bodies)
        cut, two, whole, seven = (r.json() for r in rs)
        assert cut["choices"][0]["finish_reason"] == "stop" and stop not in cut["choices"][0]["text"]
        assert ref.startswith(cut["choices"][0]["text"])
        assert two["usage"]["completion_tokens"] == 2 and two["choices"][0]["finish_reason"] == "length"
        assert seven["usage"]["completion_tokens"] == 7
        assert whole["choices"][0]["text"] == ref


def test_full_queue_is_429_and_the_waiting_ones_finish(models_dir):
    watch = GateWatch()
    app = app_of(models_dir, watch, slots=1, queue=1)
    with TestClient(app, base_url=HOST) as c:
        engine = app.state.engines.get("wine")[1]

        async def scenario():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=HOST) as ac:
                with paused(engine):
                    waiting = [asyncio.create_task(ac.post("/v1/completions", json=body())) for _ in range(2)]
                    await asyncio.to_thread(watch.wait, "admitted", 2)
                    refused = await ac.post("/v1/completions", json=body())
                    refused_stream = await ac.post("/v1/completions", json=body(stream=True))
                    health = (await ac.get("/healthz")).json()
                return refused, refused_stream, health, await asyncio.gather(*waiting)

        refused, refused_stream, health, done = asyncio.run(scenario())
        for r in (refused, refused_stream):
            assert r.status_code == 429 and r.json()["error"]["type"] == "server_busy" and r.headers["retry-after"] == "1"
        assert health["in_flight"] == 2
        assert [r.status_code for r in done] == [200, 200]
        watch.wait("finished", 2)
        assert c.get("/healthz").json()["in_flight"] == 0


def test_bad_sampling_is_400_before_the_batch(models_dir):
    app = app_of(models_dir)
    with TestClient(app, base_url=HOST) as c:
        assert c.post("/v1/completions", json=body()).status_code == 200
        engine = app.state.engines.get("wine")[1]
        steps = engine.steps
        for bad in (dict(temperature=-1), dict(top_p=0), dict(min_p=1.5), dict(repetition_penalty=0),
                    dict(top_k=-1), dict(n=2, temperature=1e-9)):
            r = c.post("/v1/completions", json=body(**bad))
            assert r.status_code == 400, (bad, r.text)
            r = c.post("/v1/completions", json=body(stream=True, **bad))
            assert r.status_code == 400, (bad, r.text)
        assert engine.steps == steps and engine.in_flight == 0


def test_deadline_is_504_and_frees_the_slot(models_dir):
    watch = GateWatch()
    app = app_of(models_dir, watch, slots=1, queue=2, timeout_s=0.5)
    with TestClient(app, base_url=HOST) as c:
        engine = app.state.engines.get("wine")[1]
        with paused(engine):  # nothing is generated before the deadline, however fast the machine
            r = c.post("/v1/completions", json=body(max_tokens=64))
            s = c.post("/v1/completions", json=body(max_tokens=64, stream=True))
        for x in (r, s):
            assert x.status_code == 504 and x.json()["error"]["type"] == "timeout"
        watch.wait("finished", 2)
        assert engine.in_flight == 0 and engine.active == 0
        assert c.post("/v1/completions", json=body(max_tokens=2)).status_code == 200


def test_a_client_that_leaves_stops_its_generation_within_one_step(models_dir):
    """A non-streamed request whose client disconnects during its first step: no step runs after
    that one (which was still feeding its prompt: nothing sampled), and its slot is free. With the
    native step the whole prompt is fed when the request enters its slot: the client leaves during
    that, and no decoding step runs at all."""
    from test_serve_hardening import asgi_post  # the ASGI conversation uvicorn has, disconnect included

    watch = GateWatch()
    app = app_of(models_dir, watch, slots=1, queue=0)
    lm, engine = app.state.engines.get("wine")
    in_step, cancelled = threading.Event(), threading.Event()

    def hold_first_step(*args) -> None:  # the token embedding is a step's first layer
        in_step.set()
        cancelled.wait(WAIT_S)            # the step goes on once the request is cancelled

    hold = lm.model.tok_emb.register_forward_hook(hold_first_step)

    async def scenario():
        left = asyncio.Event()
        answer = asyncio.ensure_future(asgi_post(app, "/v1/completions", body(max_tokens=64, temperature=0.0),
                                                 client_left=left))
        await asyncio.to_thread(in_step.wait, WAIT_S)
        left.set()
        await asyncio.to_thread(watch.wait, "cancelled")
        cancelled.set()
        gone = await answer
        await asyncio.to_thread(watch.wait, "finished")
        return gone

    gone = asyncio.run(scenario())
    hold.remove()
    assert gone[0] == 499
    assert app.state.metrics.tokens.labels("wine")._value.get() == 0   # noqa: SLF001 - the counter's value
    assert engine.active == 0 and engine.in_flight == 0 and engine.steps == (0 if engine.native_step else 1)
    assert asyncio.run(post_all(app, [body(max_tokens=3)]))[0].status_code == 200
    engine.close()


def test_explain_runs_on_the_engine_thread(models_dir):
    app = app_of(models_dir)
    with TestClient(app, base_url=HOST) as c:
        lm, engine = app.state.engines.get("wine")
        threads = []
        hook = lm.model.register_forward_hook(lambda *a: threads.append(threading.current_thread().name))
        r = c.post("/v1/explain", json={"model": "wine", "prompt": PROMPT, "steps": 2, "seed": 1})
        hook.remove()
        assert r.status_code == 200 and threads and set(threads) == {"gptlab-wine"}


def test_metrics_endpoint(models_dir):
    app = app_of(models_dir)
    with TestClient(app, base_url=HOST) as c:
        usage = c.post("/v1/completions", json=body(max_tokens=5, n=2)).json()["usage"]
        assert c.post("/v1/completions", json=body(temperature=-1)).status_code == 400
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    for name in ("gptlab_requests_total", "gptlab_queue_depth", "gptlab_generated_tokens_total",
                 "gptlab_time_to_first_token_seconds_bucket", "gptlab_slots_in_use", "gptlab_slots", "gptlab_in_flight"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name

    def value(line: str) -> float:
        m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
        assert m, line
        return float(m.group(1))

    assert value('gptlab_generated_tokens_total{model="wine"}') == usage["completion_tokens"]
    assert value('gptlab_requests_total{route="completions",status="200"}') == 1
    assert value('gptlab_requests_total{route="completions",status="400"}') == 1
    assert value('gptlab_time_to_first_token_seconds_count{model="wine"}') == 1  # one request, its first token
    assert value('gptlab_slots_in_use{model="wine"}') == 0
    # Each app has its own registry: a second one starts from zero.
    with TestClient(app_of(models_dir), base_url=HOST) as c2:
        assert 'gptlab_generated_tokens_total{model="wine"}' not in c2.get("/metrics").text


def test_least_recently_used_model_is_unloaded_under_the_memory_cap(models_dir):
    probe = app_of(models_dir, slots=2)
    size = probe.state.engines.size_of(probe.state.registry.get("wine"))
    app = app_of(models_dir, slots=2, max_memory_mb=2.5 * size / 2**20)
    registry = app.state.registry
    with TestClient(app, base_url=HOST) as c:
        def ask(name: str) -> None:
            assert c.post("/v1/completions", json=body(model=name, max_tokens=2)).status_code == 200

        ask("wine")
        first_engine = app.state.engines.get("wine")[1]
        ask("other")
        assert registry.loaded() == ["wine", "other"]
        ask("third")                                    # two fit: the least recently used goes
        assert registry.loaded() == ["other", "third"]
        ask("other")
        ask("wine")
        assert registry.loaded() == ["other", "wine"]
        assert sorted(name for name, *_ in app.state.engines.load()) == ["other", "wine"]
        assert first_engine._closed                      # noqa: SLF001 - its engine was stopped with it
    tight = app_of(models_dir, slots=2, max_memory_mb=0.5 * size / 2**20)
    with TestClient(tight, base_url=HOST) as c:
        r = c.post("/v1/completions", json=body(max_tokens=2))
        assert r.status_code == 500 and "--max-memory-mb" in r.json()["error"]["message"]
