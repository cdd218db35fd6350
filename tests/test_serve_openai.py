"""The official `openai` Python client, unchanged, against a live `gptlab serve` on loopback."""

import sys
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from serve_harness import live_server, make_model  # noqa: E402

PROMPT = "wine review : germany : mosel"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model(root / "wine")
    make_model(root / "other", seed=1)
    with live_server(root, "--max-tokens", "32") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_list_models(client):
    assert sorted(m.id for m in client.models.list()) == ["other", "wine"]
    assert client.models.retrieve("wine").id == "wine"


def test_completion(client):
    r = client.completions.create(model="wine", prompt=PROMPT, max_tokens=8, temperature=0.8, seed=4)
    assert r.object == "text_completion" and r.model == "wine"
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 6 and 1 <= r.usage.completion_tokens <= 8
    again = client.completions.create(model="wine", prompt=PROMPT, max_tokens=8, temperature=0.8, seed=4)
    assert again.choices[0].text == r.choices[0].text
    many = client.completions.create(model="wine", prompt=[PROMPT, "wine review"], n=2, max_tokens=3,
                                     stop=["."], extra_body={"top_k": 5, "min_p": 0.01})
    assert [c.index for c in many.choices] == [0, 1, 2, 3]


def test_streamed_completion(client):
    whole = client.completions.create(model="wine", prompt=PROMPT, max_tokens=12, seed=7)
    stream = client.completions.create(model="wine", prompt=PROMPT, max_tokens=12, seed=7, stream=True,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason
    assert usage.total_tokens == whole.usage.total_tokens


def test_errors_map_to_the_clients_exceptions(client, server):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="wine", prompt=PROMPT, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="wine", prompt=PROMPT, max_tokens=33)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="../wine", prompt=PROMPT)
    # ...and the server is still there.
    assert client.completions.create(model="other", prompt=PROMPT, max_tokens=2).choices
    assert server.proc.poll() is None
