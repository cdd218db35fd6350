"""`gptlab serve` against requests that try to misuse it, and against model folders that would.

The Host allowlist (DNS rebinding), a non-streamed generation whose client disconnects (stopped
within one step, its worker freed), failed loads remembered until the folder changes, every file of
a model confined to the models folder, no server path in any error, and invalid Unicode refused.

Tests that act at a moment (a worker is inside its first step, the gate has cancelled a request)
wait for it on events, never on sleeps; the timeouts on those waits only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import gptlab.serve.registry as registry_module  # noqa: E402
from gptlab.checkpoint import CONFIG, TOKENIZER, WEIGHTS  # noqa: E402
from gptlab.errors import UserError  # noqa: E402
from gptlab.serve import ServeSettings, create_app  # noqa: E402
from gptlab.serve.hosts import HostAllowlist, host_name  # noqa: E402
from gptlab.serve.redact import hide_paths  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from conftest import GateWatch, json_error  # noqa: E402
from serve_harness import make_model  # noqa: E402

PROMPT = "wine review : germany : mosel"
LOCAL = "http://localhost"  # a name the server answers for by default: no setting needed
WAIT_S = 30


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A model folder outside the models folder: what the symlinks below point at."""
    return make_model(tmp_path_factory.mktemp("outside") / "secret")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, outside) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_model(root / "wine")
    for name, linked in (("weights-out", WEIGHTS), ("tokenizer-out", TOKENIZER), ("config-out", CONFIG)):
        make_model(root / name)
        (root / name / linked).unlink()
        os.symlink(outside / linked, root / name / linked)
    make_model(root / "vocab-out")     # a Hugging Face GPT-2 tokenizer file linked out (gptlab.load reads it)
    (outside / "vocab.json").write_text("{}")
    os.symlink(outside / "vocab.json", root / "vocab-out" / "vocab.json")
    make_model(root / "weights-in")    # a link that stays inside the models folder is fine
    (root / "weights-in" / WEIGHTS).unlink()
    os.symlink(root / "wine" / WEIGHTS, root / "weights-in" / WEIGHTS)
    make_model(root / "fifo")          # not a file: reading it would block a worker for ever
    (root / "fifo" / WEIGHTS).unlink()
    os.mkfifo(root / "fifo" / WEIGHTS)
    (root / "bad-json").mkdir()
    (root / "bad-json" / CONFIG).write_text("{not json")
    return root


@pytest.fixture(scope="module")
def client(models_dir):
    with TestClient(create_app(models_dir), base_url=LOCAL, raise_server_exceptions=False) as c:
        yield c




def assert_no_paths(text: str, *folders: Path) -> None:
    for folder in folders:
        assert str(folder) not in text and str(folder.resolve()) not in text, text
    assert not re.search(r"/(tmp|home|root|work|usr|var)/", text), text


def post_raw(client, path: str, raw: str):
    return client.post(path, content=raw.encode(), headers={"content-type": "application/json"})


class Steps:
    """A forward hook counting a model's steps (one per generated token; hooked on its token embedding,
    which the batched decoding steps of the engine call too, unlike the model's own forward); the
    first one, once computed, waits for `hold_first` to return, so a test can act while a generation
    is inside it."""

    def __init__(self, model, hold_first: Callable[[], None] | None = None):
        self.count = 0
        self.first_done = threading.Event()
        self.hold_first = hold_first
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.count += 1
        if self.count == 1:
            self.first_done.set()
            if self.hold_first:
                self.hold_first()

    def wait_first(self) -> None:
        assert self.first_done.wait(WAIT_S), "the generation never ran its first step"


# -- Host allowlist (DNS rebinding) --------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "0.0.0.0:8000", "[::2]:80", "192.168.1.5", "", "a b"])
def test_dns_rebinding_host_is_refused_before_any_route(models_dir, host):
    """A page on evil.example whose name now resolves to 127.0.0.1 sends `Host: evil.example`: refused."""
    watch = GateWatch()
    app = create_app(models_dir, on_gate_event=watch)
    with TestClient(app, base_url=LOCAL) as c:
        for r in (c.get("/", headers={"host": host}), c.get("/v1/models", headers={"host": host}),
                  c.post("/v1/completions", headers={"host": host}, json={"model": "wine", "prompt": PROMPT})):
            err = json_error(r, 421, "misdirected_request")
            assert "--allowed-hosts" in err["message"]
        assert watch.events == []                       # no generation was admitted
        assert c.get("/healthz").status_code == 200     # and the server answers its own names


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LocalHost.", "app.localhost:80",
                                  "127.0.0.1:1234", "127.8.9.10", "[::1]:8000", "[::ffff:127.0.0.1]"])
def test_loopback_names_are_served_by_default(client, host):
    r = client.post("/v1/completions", headers={"host": host},
                    json={"model": "wine", "prompt": PROMPT, "max_tokens": 2, "seed": 1})
    assert r.status_code == 200, r.text


def test_allowed_hosts_setting_and_listen_host():
    named = HostAllowlist(["wine.lan", "10.0.0.7,[fe80::1]"], listen_host="192.168.1.5")
    for ok in ("wine.lan", "WINE.LAN:8000", "10.0.0.7:80", "[fe80::1]:8000", "192.168.1.5:8000", "localhost"):
        assert named.allows(ok), ok
    for refused in ("evil.example", "sub.wine.lan", "wine.lan.evil.example", "192.168.1.6", None):
        assert not named.allows(refused), refused
    assert not HostAllowlist(listen_host="0.0.0.0").allows("0.0.0.0")   # a wildcard names no host
    assert not HostAllowlist(listen_host="::").allows("[::]")
    assert HostAllowlist(["*"]).allows("evil.example")
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:443") == "example.com"
    assert host_name("a:b:c") is None and host_name("[::1]x") is None and host_name("a/b") is None


def test_allowed_hosts_reaches_the_app_and_bad_entries_fail_at_start(models_dir, capsys):
    app = create_app(models_dir, ServeSettings(allowed_hosts=["wine.lan"]))
    with TestClient(app, base_url="http://wine.lan:8000") as c:
        assert c.get("/healthz").status_code == 200
        json_error(c.get("/healthz", headers={"host": "evil.example"}), 421)
    with TestClient(create_app(models_dir, ServeSettings(allowed_hosts=["*"])), base_url="http://evil.example") as c:
        health = c.get("/healthz")
        assert health.status_code == 200
        assert "allowed_hosts" not in health.json()["limits"]  # how the server is set up stays its own
    for bad in ("http://wine.lan", "wine.lan:8000", "a/b"):
        with pytest.raises(UserError, match="allowed_hosts"):
            create_app(models_dir, ServeSettings(allowed_hosts=[bad]))
    from gptlab.cli import main
    assert main(["serve", "--models", str(models_dir), "--allowed-hosts", "http://x", "--port", "0"]) == 2
    assert "--allowed-hosts" in capsys.readouterr().err


# -- a non-streamed request whose client disconnects ---------------------------------------------
async def asgi_post(app, path: str, body: dict, client_left: asyncio.Event | None = None) -> tuple[int, bytes]:
    """POST through the app as uvicorn would: the body, then `http.disconnect` once the client has left
    (when `client_left` is set) or the response is complete. Returns (status, body)."""
    sent: list[dict] = []
    complete = asyncio.Event()
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        waits = [asyncio.ensure_future(e.wait()) for e in (complete, client_left) if e is not None]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("path,engine", [("/v1/completions", "on"), ("/v1/completions", "off"), ("/v1/explain", "on")])
def test_disconnect_stops_a_non_streamed_generation_within_one_step(models_dir, path, engine):
    """The engine checks its requests between steps; the per-request path (explanations, and
    completions with --engine off) through the hook on the model's token embedding, which the
    one-token decoding steps call."""
    watch = GateWatch()
    app = create_app(models_dir, ServeSettings(workers=1, queue=0, max_tokens=64, engine=engine), on_gate_event=watch)
    lm = app.state.registry.get("wine")   # loaded first: its deadline/cancel hook runs before the one below
    body = {"model": "wine", "prompt": PROMPT, "max_tokens": 64, "steps": 32, "seed": 1, "temperature": 0}
    if path == "/v1/explain":
        body.pop("max_tokens")
    else:
        body.pop("steps")

    async def scenario() -> tuple[tuple[int, bytes], int, tuple[int, bytes]]:
        whole = Steps(lm.model.tok_emb)                 # the same request, kept: how many steps it takes
        assert (await asgi_post(app, path, body))[0] == 200
        whole.handle.remove()
        # The first step waits, inside the worker, until the gate has cancelled the request.
        steps = Steps(lm.model.tok_emb, hold_first=lambda: watch.wait("cancelled"))
        left = asyncio.Event()
        answer = asyncio.ensure_future(asgi_post(app, path, body, client_left=left))
        await asyncio.to_thread(steps.wait_first)
        left.set()                              # the client goes away mid-generation
        gone = await answer
        await asyncio.to_thread(watch.wait, "finished", 2)
        steps.handle.remove()
        assert steps.count == 1, f"{steps.count} steps ran after the client left; the whole answer takes {whole.count}"
        assert whole.count > 2
        return gone, app.state.gate.in_flight, await asgi_post(app, path, body)

    gone, in_flight, after = asyncio.run(scenario())
    assert gone[0] == 499 and b"choices" not in gone[1]   # the answer nobody reads was never made
    assert in_flight == 0 and after[0] == 200            # the only worker is free again
    app.state.gate.shutdown()


@contextlib.contextmanager
def uvicorn_in_thread(app) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn on a loopback port, in this process (so tests can hook the model)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)   # connections wait in the backlog until uvicorn serves: nothing to wait for
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


def test_live_server_refuses_other_hosts_and_stops_when_the_client_hangs_up(models_dir):
    """Through uvicorn's own HTTP: a rebinding Host gets 421; a client that closes its connection while
    its completion runs stops the generation within one step."""
    watch = GateWatch()
    app = create_app(models_dir, ServeSettings(workers=1, queue=0, max_tokens=64), on_gate_event=watch)
    lm = app.state.registry.get("wine")
    body = json.dumps({"model": "wine", "prompt": PROMPT, "max_tokens": 64, "seed": 1, "temperature": 0}).encode()
    with uvicorn_in_thread(app) as (host, port):
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("GET", "/v1/models", headers={"Host": "evil.example"})
        refused = conn.getresponse()
        assert refused.status == 421 and json.loads(refused.read())["error"]["type"] == "misdirected_request"
        conn.close()
        steps = Steps(lm.model.tok_emb, hold_first=lambda: watch.wait("cancelled"))
        raw = socket.create_connection((host, port), timeout=WAIT_S)
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        steps.wait_first()
        raw.close()                             # the client hangs up mid-generation
        watch.wait("finished")
        steps.handle.remove()
        assert steps.count == 1 and app.state.gate.in_flight == 0
        conn = http.client.HTTPConnection(host, port, timeout=WAIT_S)
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200  # the only worker is free again
        conn.close()


# -- failed loads are remembered -----------------------------------------------------------------
@pytest.fixture
def count_loads(monkeypatch) -> list[str]:
    """The folders the registry loads, in order (it calls `gptlab.load` once per load)."""
    loads: list[str] = []
    real = registry_module.load

    def counted(path, **kw):
        loads.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(registry_module, "load", counted)
    return loads


def test_a_failed_load_is_remembered_until_the_folder_changes(tmp_path, count_loads):
    make_model(tmp_path / "wine")
    make_model(tmp_path / "broken")
    (tmp_path / "broken" / WEIGHTS).write_bytes(b"not safetensors")   # truncated weights
    with TestClient(create_app(tmp_path), base_url=LOCAL) as c:
        first = c.post("/v1/completions", json={"model": "broken", "prompt": PROMPT})
        err = json_error(first, 500, "model_error")
        assert "broken" in err["message"] and "model.safetensors" in err["message"]
        for r in (c.post("/v1/completions", json={"model": "broken", "prompt": PROMPT, "stream": True}),
                  c.post("/v1/explain", json={"model": "broken", "prompt": PROMPT}),
                  c.post("/v1/completions", json={"model": "broken", "prompt": PROMPT})):
            assert r.status_code == 500 and r.json() == first.json()   # the same one-line error...
        assert count_loads == ["broken"]                                 # ...without loading again
        make_model(tmp_path / "broken")                                  # re-trained in place
        ok = c.post("/v1/completions", json={"model": "broken", "prompt": PROMPT, "max_tokens": 2})
        assert ok.status_code == 200 and count_loads == ["broken", "broken"]


def test_a_load_that_runs_out_of_memory_fails_fast_afterwards(tmp_path, monkeypatch, caplog):
    """A config asking for a huge model: the first load fails (here: MemoryError), later requests at once."""
    make_model(tmp_path / "huge")
    loads: list[Path] = []

    def out_of_memory(path, **kw):
        loads.append(path)
        raise MemoryError("cannot allocate 5.2 GB")

    monkeypatch.setattr(registry_module, "load", out_of_memory)
    with caplog.at_level(logging.ERROR, logger="gptlab.serve"), TestClient(create_app(tmp_path), base_url=LOCAL) as c:
        answers = [c.post("/v1/completions", json={"prompt": PROMPT}) for _ in range(3)]
    errs = [json_error(r, 500, "model_error") for r in answers]
    assert errs[0] == errs[1] == errs[2] and "MemoryError" in errs[0]["message"] and "huge" in errs[0]["message"]
    assert len(loads) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1   # one traceback, for the one load


# -- every file of a model stays inside the models folder ----------------------------------------
@pytest.mark.parametrize("name, file", [("weights-out", WEIGHTS), ("tokenizer-out", TOKENIZER), ("fifo", WEIGHTS),
                                        ("vocab-out", "vocab.json")])
def test_a_file_linked_out_of_the_models_folder_is_refused(client, models_dir, outside, count_loads, name, file):
    for r in (client.post("/v1/completions", json={"model": name, "prompt": PROMPT}),
              client.post("/v1/completions", json={"model": name, "prompt": PROMPT, "stream": True}),
              client.post("/v1/explain", json={"model": name, "prompt": PROMPT})):
        err = json_error(r, 403, "permission_error")
        assert repr(name) in err["message"] and file in err["message"]
        assert_no_paths(r.text, models_dir, outside)
    assert count_loads == []   # refused before anything was read


def test_a_config_linked_out_is_no_model_and_links_inside_are_fine(client):
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "config-out" not in ids and {"wine", "weights-in", "weights-out"} <= set(ids)
    json_error(client.get("/v1/models/config-out"), 404)
    json_error(client.post("/v1/completions", json={"model": "config-out", "prompt": PROMPT}), 404, "not_found")
    r = client.post("/v1/completions", json={"model": "weights-in", "prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 200, r.text


# -- no server paths in errors --------------------------------------------------------------------
def test_errors_and_model_cards_name_no_server_path(client, models_dir, outside):
    card = client.get("/v1/models/bad-json").json()
    assert "not valid JSON" in card["gptlab"]["error"] and card["gptlab"]["error"].startswith("bad-json/")
    r = client.post("/v1/completions", json={"model": "bad-json", "prompt": PROMPT})
    err = json_error(r, 500, "model_error")
    assert "bad-json" in err["message"]
    for text in (json.dumps(card), r.text, client.get("/v1/models").text):
        assert_no_paths(text, models_dir, outside)


def test_hide_paths():
    names = {"/srv/models/wine": "wine", "/srv/models": "models"}
    assert hide_paths("/srv/models/wine/config.json is not valid JSON", names) == "wine/config.json is not valid JSON"
    assert hide_paths("no file '/usr/lib/x/y.bin' here") == "no file 'y.bin' here"
    kept = "pick one (GET /v1/models), see http://host/a/b or runs/wine/x"
    assert hide_paths(kept) == kept      # the API's routes, URLs and relative paths are no server paths


# -- invalid Unicode ------------------------------------------------------------------------------
@pytest.mark.parametrize("path, raw, param", [
    ("/v1/completions", '{"model": "wine", "prompt": "wine \\ud800 review"}', "prompt"),
    ("/v1/completions", '{"model": "wine", "prompt": ["ok", "\\udfff"]}', "prompt[1]"),
    ("/v1/completions", '{"model": "wine", "prompt": "ok", "stop": ["\\ud83d"]}', "stop[0]"),
    ("/v1/completions", '{"model": "wine", "prompt": "ok", "stream": true, "user": "\\udc80"}', "user"),
    ("/v1/completions", '{"model": "wi\\ud800ne", "prompt": "ok"}', "model"),
    ("/v1/completions", '{"model": "wine", "prompt": "ok", "x\\ud800": 1}', "x\\ud800"),
    ("/v1/explain", '{"model": "wine", "prompt": "wine \\ud800 review"}', "prompt"),
])
def test_invalid_unicode_is_400(client, caplog, path, raw, param):
    with caplog.at_level(logging.WARNING):
        err = json_error(post_raw(client, path, raw), 400, "invalid_request_error")
    assert err["param"] == param and "Unicode" in err["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]   # no traceback in the log


@pytest.mark.filterwarnings("ignore:.*not in the model's vocabulary")
def test_a_surrogate_pair_is_one_valid_character(client):
    ok = post_raw(client, "/v1/completions", '{"model": "wine", "prompt": "wine \\ud83c\\udf77", "max_tokens": 2}')
    assert ok.status_code == 200, ok.text   # JSON's escape of an emoji: fine


def test_an_error_that_echoes_a_surrogate_still_renders():
    """Errors quote the client's own text (a model name); one with a surrogate becomes JSON escapes, not a 500."""
    from gptlab.serve.errors import error_response
    r = error_response(404, "model 'wi\ud800ne' is not served here", "not_found")
    assert json.loads(r.body)["error"]["message"] == "model 'wi\ud800ne' is not served here"
