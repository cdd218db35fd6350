"""`gptlab serve`'s HTTP API in-process (FastAPI's TestClient), on tiny random models.

Covers the OpenAI shapes (models, completions, streamed completions), explanation traces, the page,
every limit (max_tokens, prompt length, choices, body size 413, queue 429, timeout 504, model names
that try to leave the models folder) and that every error is JSON and the server keeps serving.
"""

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gptlab.checkpoint import CONFIG, WEIGHTS  # noqa: E402
from gptlab.explain.trace import VERSION
from gptlab.serve import ServeSettings, create_app  # noqa: E402
from gptlab.serve.limits import Gate  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from conftest import GateWatch, json_error  # noqa: E402
from serve_harness import make_model  # noqa: E402

PROMPT = "wine review : germany : mosel"
# Starlette's TestClient sends `Host: testserver`. The server answers only for names that mean this
# machine unless told otherwise, as these apps are (tests/test_serve_hardening.py checks the default).
TEST_HOST = "testserver"


def serve_settings(**limits) -> ServeSettings:
    return ServeSettings(allowed_hosts=[TEST_HOST], **limits)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model(root / "wine")
    make_model(root / "runs" / "epoch1", seed=1)        # nested one level: "runs/epoch1"
    (root / "broken").mkdir()                             # config.json but no weights: listed, fails to load
    (root / "broken" / CONFIG).write_text((root / "wine" / CONFIG).read_text())
    (root / ".hidden").mkdir()
    make_model(root / ".hidden" / "m")
    outside = tmp_path_factory.mktemp("outside")
    make_model(outside / "secret")
    os.symlink(outside / "secret", root / "escape")       # a symlink out of the models folder
    return root


@pytest.fixture(scope="module")
def client(models_dir):
    app = create_app(models_dir, serve_settings(max_tokens=64, max_prompt_chars=200, max_choices=4,
                                               max_explain_steps=6, max_body_bytes=4000, workers=2, queue=2))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def complete(client, **body):
    body = {"model": "wine", "prompt": PROMPT, "max_tokens": 8, "seed": 1, **body}
    return client.post("/v1/completions", json=body)


def sse_events(text: str) -> list:
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events




# -- shapes ---------------------------------------------------------------------------------------
def test_healthz_and_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["limits"]["max_tokens"] == 64 and "device" not in h["limits"]
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/models", "/v1/completions", "/v1/explain", "/healthz"):
        assert p in paths


def test_models_lists_folders_inside_only(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["broken", "runs/epoch1", "wine"]   # not the symlink out, not the hidden folder
    wine = next(m for m in data["data"] if m["id"] == "wine")
    assert wine["object"] == "model" and wine["owned_by"] == "gptlab"
    assert wine["gptlab"]["kind"] == "gpt" and wine["gptlab"]["context_length"] == 32
    assert client.get("/v1/models/runs/epoch1").json()["id"] == "runs/epoch1"
    json_error(client.get("/v1/models/escape"), 404)


def test_completion_shape_usage_and_determinism(client):
    r = complete(client)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and d["model"] == "wine" and d["id"].startswith("cmpl-")
    (choice,) = d["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    u = d["usage"]
    assert u["prompt_tokens"] == 6 and 1 <= u["completion_tokens"] <= 8
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert complete(client).json()["choices"][0]["text"] == choice["text"]   # same seed, same text
    # The server returns exactly what the library gives.
    lm = client.app.state.registry.get("wine")
    assert lm.generate(PROMPT, max_new_tokens=8, seed=1)[0].text == choice["text"]


def test_greedy_is_argmax_and_length_finish(client):
    d = complete(client, temperature=0, max_tokens=5, seed=None).json()
    lm = client.app.state.registry.get("wine")
    assert d["choices"][0]["text"] == lm.generate(PROMPT, max_new_tokens=5, temperature=0)[0].text


def test_n_and_prompt_list_and_echo(client):
    d = complete(client, prompt=[PROMPT, "wine review : france"], n=2).json()
    assert [c["index"] for c in d["choices"]] == [0, 1, 2, 3]
    e = complete(client, echo=True).json()["choices"][0]["text"]
    assert e.startswith(PROMPT) and e[len(PROMPT):] == complete(client).json()["choices"][0]["text"]


def test_extras_and_stop(client):
    r = complete(client, top_k=3, min_p=0.05, top_p=0.9, repetition_penalty=1.3, max_tokens=20, stop=[","])
    assert r.status_code == 200, r.text
    assert "," not in r.json()["choices"][0]["text"]


def test_model_may_be_left_out_only_when_one_is_served(client, models_dir):
    json_error(client.post("/v1/completions", json={"prompt": PROMPT}), 400)
    single = create_app(models_dir / "wine", serve_settings())   # the folder itself is one model
    with TestClient(single) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["wine"]
        assert c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200


# -- streaming ------------------------------------------------------------------------------------
def test_stream_chunks_join_to_the_completion(client):
    with client.stream("POST", "/v1/completions", json={"model": "wine", "prompt": PROMPT, "max_tokens": 12,
                                                        "seed": 3, "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["model"] == "wine" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(ch["text"] for c in chunks for ch in c["choices"])
    finals = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(finals) == 1
    whole = complete(client, max_tokens=12, seed=3).json()
    assert text == whole["choices"][0]["text"]
    assert finals[0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_stream_several_choices(client):
    r = complete(client, prompt=[PROMPT, "wine review"], n=2, stream=True)
    events = sse_events(r.text)
    ends = sorted(ch["index"] for c in events[:-1] for ch in c["choices"] if ch["finish_reason"])
    assert ends == [0, 1, 2, 3]
    assert not any("usage" in c for c in events[:-1])   # only when stream_options asks


def test_stream_errors_come_before_the_stream(client):
    r = complete(client, temperature=-1, stream=True)
    err = json_error(r, 400, "invalid_request_error")
    assert "temperature" in err["message"]


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, word", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top-p"),
    ({"top_p": 1.5}, "top-p"),
    ({"top_k": -1}, "top-k"),
    ({"min_p": 1.5}, "min-p"),
])
def test_bad_sampling_is_400(client, body, word):
    assert word in json_error(complete(client, **body), 400, "invalid_request_error")["message"]
    r = client.post("/v1/explain", json={"model": "wine", "prompt": PROMPT, **body})
    assert word in json_error(r, 400)["message"]


def test_every_error_is_json(client):
    json_error(client.get("/v1/nothing"), 404, "not_found")
    json_error(client.get("/v1/completions"), 405)
    json_error(client.post("/v1/completions", json={"model": "wine"}), 422, "invalid_request_error")
    json_error(client.post("/v1/completions", json={"model": "wine", "prompt": 5}), 422)
    json_error(client.post("/v1/completions", json={"model": "wine", "prompt": PROMPT, "max_tokens": -1}), 422)
    json_error(client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 422)
    json_error(complete(client, model="nope"), 404, "not_found")
    json_error(complete(client, logprobs=2), 400)
    json_error(complete(client, presence_penalty=0.5), 400)
    json_error(complete(client, prompt=[]), 400)
    json_error(complete(client, stop=[""]), 400)


def test_broken_model_is_500_and_server_keeps_serving(client):
    err = json_error(complete(client, model="broken"), 500, "model_error")
    assert "broken" in err["message"]
    assert complete(client).status_code == 200
    assert client.get("/healthz").json()["in_flight"] == 0


@pytest.mark.parametrize("name", ["../outside", "..", "/etc", "escape", "runs/../wine/../..", "wine/../../x",
                                  ".hidden/m", "runs\\epoch1", "wine\x00", "a/b/c"])
def test_model_names_cannot_leave_the_models_folder(client, name):
    json_error(complete(client, model=name), 404)


def test_traversal_in_url_path(client):
    for path in ["/v1/models/..%2F..%2Fetc", "/v1/models/%2e%2e", "/v1/models/escape", "/static/..%2F..%2Fapi.py"]:
        r = client.get(path)
        assert r.status_code == 404, (path, r.text)


# -- limits ---------------------------------------------------------------------------------------
def test_caps_on_tokens_prompt_and_choices(client):
    assert "64" in json_error(complete(client, max_tokens=65), 400)["message"]
    assert complete(client, max_tokens=64).status_code == 200
    assert "200" in json_error(complete(client, prompt="a" * 201), 400)["message"]
    json_error(complete(client, prompt=["a", "a" * 201]), 400)
    json_error(complete(client, n=5), 400)
    json_error(complete(client, prompt=["a", "b", "c"], n=2), 400)
    r = client.post("/v1/explain", json={"model": "wine", "prompt": PROMPT, "steps": 7})
    assert "6" in json_error(r, 400)["message"]


def test_body_size_is_413(client):
    big = json.dumps({"model": "wine", "prompt": "x" * 5000}).encode()
    json_error(client.post("/v1/completions", content=big, headers={"content-type": "application/json"}),
                 413, "request_too_large")

    def chunked():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"})
    json_error(r, 413, "request_too_large")
    assert complete(client).status_code == 200


# The tests below act at moments (a worker is busy, a request is queued, a worker is free again) that
# they wait for on events, never on sleeps: a loaded machine makes them slower, not wrong. Timeouts
# on those waits only turn a hang into a failure.
WAIT_S = 30


class Held:
    """Wrap a model's generate so calls wait until released: a worker stays busy on demand."""

    def __init__(self, lm):
        self.lm, self.real = lm, lm.generate
        self.release, self.started, self.done = threading.Event(), threading.Semaphore(0), threading.Event()

    def __enter__(self):
        def held(*a, **kw):
            self.started.release()
            try:
                self.release.wait(WAIT_S)
                return self.real(*a, **kw)
            finally:
                self.done.set()
        self.lm.generate = held
        return self

    def __exit__(self, *exc):
        self.release.set()
        del self.lm.generate   # back to the class's method

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=WAIT_S), "no worker ever called generate"


def test_gate_reports_each_request_and_survives_a_failing_hook():
    events = []

    def hook(event):
        events.append(event)
        raise RuntimeError("a broken observer")

    gate = Gate(workers=1, queue=0, timeout_s=30, on_event=hook)
    assert asyncio.run(gate.run(lambda: 42)) == 42
    assert events == ["admitted", "started", "finished"] and gate.in_flight == 0
    gate.shutdown()


def test_queue_full_is_429_and_event_loop_keeps_serving(models_dir):
    watch = GateWatch()
    # The per-request path (--engine off), whose generation `Held` holds; the engine's own queue and
    # 429 are tested in tests/test_serve_engine.py.
    app = create_app(models_dir, serve_settings(workers=1, queue=1, timeout_s=30, engine="off"), on_gate_event=watch)
    lm = app.state.registry.get("wine")
    body = {"model": "wine", "prompt": PROMPT, "max_tokens": 3, "seed": 1}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}") as c:
            with Held(lm) as held:
                first = asyncio.create_task(c.post("/v1/completions", json=body))        # runs, held
                await asyncio.to_thread(held.wait_started)
                second = asyncio.create_task(c.post("/v1/completions", json=body))       # waits in the queue
                await asyncio.to_thread(watch.wait, "admitted", 2)
                third = await c.post("/v1/completions", json=body)                      # no room: 429
                stream = await c.post("/v1/completions", json={**body, "stream": True})
                health = await c.get("/healthz")                                         # the loop still answers
                models = await c.get("/v1/models")
                assert health.status_code == 200 and health.json()["in_flight"] == 2
                assert models.status_code == 200
                held.release.set()
                results = await asyncio.gather(first, second)
            return third, stream, results

    third, stream, results = asyncio.run(scenario())
    json_error(third, 429, "server_busy")
    assert third.headers["retry-after"] == "1"
    json_error(stream, 429)
    assert [r.status_code for r in results] == [200, 200]
    assert app.state.gate.in_flight == 0


def test_timeout_is_504_and_frees_the_worker(models_dir):
    watch = GateWatch()
    # The per-request path (--engine off); the engine's deadline is tested in tests/test_serve_engine.py.
    app = create_app(models_dir, serve_settings(workers=1, queue=4, timeout_s=0.3, engine="off"), on_gate_event=watch)
    lm = app.state.registry.get("wine")
    forwards = []
    handle = lm.model.register_forward_hook(lambda *a: forwards.append(1))
    with TestClient(app) as c:
        # Generation waits for the test, so it cannot finish before the deadline however slow the
        # machine. (A worker that starts only after the deadline never calls generate: all still holds.)
        with Held(lm) as held:
            r = c.post("/v1/completions", json={"model": "wine", "prompt": PROMPT, "max_tokens": 64})
            json_error(r, 504, "timeout")
            assert not held.done.is_set()   # the 504 came while the generation was still held: it did not wait
            held.release.set()              # the generation goes on past its deadline...
            watch.wait("finished")          # ...and the worker gives its place back, without running 64 steps
        assert app.state.gate.in_flight == 0
        assert forwards == []  # the deadline hook stopped it before its first forward pass
        handle.remove()
        assert c.post("/v1/completions", json={"model": "wine", "prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_timeout_inside_a_stream_and_explain(models_dir):
    watch = GateWatch()
    app = create_app(models_dir, serve_settings(timeout_s=1e-6), on_gate_event=watch)
    with TestClient(app) as c:
        json_error(c.post("/v1/completions", json={"model": "wine", "prompt": PROMPT, "stream": True}), 504)
        json_error(c.post("/v1/explain", json={"model": "wine", "prompt": PROMPT}), 504)
        watch.wait("finished", 2)   # a 504 is sent without waiting for its worker, which finishes after
        assert c.get("/healthz").json()["in_flight"] == 0


def test_gate_stream_stops_the_worker_when_the_client_leaves():
    watch = GateWatch()
    gate = Gate(workers=1, queue=0, timeout_s=30, on_event=watch)
    produced = []
    client_left = threading.Event()

    def items():
        for i in range(1000):
            if i:   # the first item reaches the client; the producer runs on only after it has gone
                client_left.wait(WAIT_S)
            produced.append(i)
            yield i

    async def scenario():
        agen = gate.stream(items)
        assert await agen.__anext__() == 0
        await agen.aclose()                 # the client went away
        client_left.set()
        await asyncio.to_thread(watch.wait, "finished")

    asyncio.run(scenario())
    assert gate.in_flight == 0 and len(produced) < 100
    assert produced == [0, 1]   # it stopped at the first item after the client left
    gate.shutdown()


# -- explain and the page -------------------------------------------------------------------------
def test_explain_returns_the_trace(client):
    r = client.post("/v1/explain", json={"model": "wine", "prompt": PROMPT, "steps": 3, "top": 4, "seed": 2})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["format"] == "gptlab-trace" and t["version"] == VERSION and t["top"] == 4
    assert t["model"]["path"] == "wine"      # the model's name, not a path on the server's disk
    assert t["prompt_tokens"] == PROMPT.split()
    assert 1 <= len(t["steps"]) <= 3
    step = t["steps"][0]
    assert step["tokens"] == PROMPT.split()
    assert len(step["attention"]) == 2 and len(step["attention"][0]) == 2      # tiny: 2 layers x 2 heads
    assert all(abs(sum(row) - 1) < 1e-3 for layer in step["attention"] for row in layer)
    assert all(len(row) == len(step["tokens"]) for layer in step["attention"] for row in layer)
    assert {"token", "id", "logit", "p"} <= set(step["candidates"][0])
    # The same seed explains the text that a completion writes.
    first = complete(client, max_tokens=1, seed=2).json()["choices"][0]["text"]
    assert first.strip() == step["chosen"]["token"] or first == ""


def test_page_and_assets_are_local(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        a = client.get(asset)
        assert a.status_code == 200
        assert "http://" not in a.text and "https://" not in a.text   # no CDN, works offline
    assert "http://" not in html and "https://" not in html
    assert client.get("/docs").status_code == 404   # FastAPI's docs page would load a CDN


def test_reload_after_retraining(models_dir, tmp_path):
    import shutil
    root = tmp_path / "m"
    shutil.copytree(models_dir / "wine", root / "wine")
    app = create_app(root)
    before = app.state.registry.get("wine")
    assert app.state.registry.get("wine") is before            # cached
    make_model(root / "wine", seed=5)                           # "re-trained" in place
    st = (root / "wine" / WEIGHTS).stat()
    os.utime(root / "wine" / WEIGHTS, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert app.state.registry.get("wine") is not before


def test_serve_help_and_bad_folder(capsys):
    from gptlab.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--models", "--host", "--port", "--max-tokens", "--max-body-bytes", "--queue", "--timeout"):
        assert flag in out
    assert main(["serve", "--models", "/nonexistent/models", "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--models", "/nonexistent/models", "--dtype", "fp8"]) == 2
    assert "--dtype" in capsys.readouterr().err
    assert main(["serve", "--models", "/nonexistent/models", "--device", "cpu", "--dtype", "fp16"]) == 2
    assert "fp16 is for GPUs" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_serve_low_precision_weights(tmp_path, dtype):
    """--dtype bf16 / int8: the registry loads the weights that way and completions still come back."""
    from gptlab.model.quant import Int8Linear
    root = tmp_path / "models"
    make_model(root / "wine")
    app = create_app(str(root), serve_settings(dtype=dtype, device="cpu"))
    lm = app.state.registry.get("wine")
    if dtype == "bf16":
        assert next(lm.model.parameters()).dtype == torch.bfloat16
    else:
        assert isinstance(lm.model.lm_head, Int8Linear)
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"model": "wine", "prompt": "wine review :", "max_tokens": 4, "seed": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
