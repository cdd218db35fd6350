"""POST /v1/images: an image model's picture with each prompt word's cross-attention map, and the
one-line JSON errors for what it cannot draw; on a tiny random image model next to a GPT."""

import base64
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("diffusers")
from fastapi.testclient import TestClient  # noqa: E402

from gptlab.serve import ServeSettings, create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from conftest import GateWatch, json_error  # noqa: E402
from model_fixtures import make_image_model, one_thread  # noqa: E402, F401 (one_thread: an autouse fixture)
from serve_harness import make_model  # noqa: E402

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_image_model(root / "shapes")
    make_model(root / "wine")
    app = create_app(root, ServeSettings(allowed_hosts=["testserver"], max_prompt_chars=200))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def draw(client, **body):
    return client.post("/v1/images", json={"model": "shapes", "prompt": PROMPT, "steps": 4, "seed": 1, **body})


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def test_the_model_list_says_which_model_draws(client):
    kinds = {m["id"]: m["gptlab"]["kind"] for m in client.get("/v1/models").json()["data"]}
    assert kinds == {"shapes": "image", "wine": "gpt"}


def test_an_image_with_a_map_per_word_same_seed_same_image(client):
    r = draw(client, frames=2)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "image" and d["model"] == "shapes" and d["seconds"] > 0
    assert pixels(d["image"]).shape == (32, 32, 3)
    t = d["trace"]
    assert t["kind"] == "image" and t["tokens"][:4] == ["a", "red", "circle", "above"]
    rows, cols = t["grid"]
    assert len(t["heatmaps"]) == len(t["tokens"]) and all(len(h) == rows * cols for h in t["heatmaps"])
    # Each latent patch's attention is a distribution over the caption: the maps sum to 1 per patch.
    assert np.allclose(np.array(t["heatmaps"]).sum(axis=0), 1.0, atol=1e-3)
    assert t["settings"]["steps"] == 4 and t["settings"]["guidance"] == 3.0 and len(t["filmstrip"]) == 2
    assert t["model"]["path"] == "shapes"  # the served name, never where it lies on disk
    assert draw(client, frames=2).json()["image"] == d["image"]
    assert draw(client, seed=2).json()["image"] != d["image"]
    assert draw(client, guidance=0).json()["image"] != d["image"]


@pytest.mark.parametrize("body, status, param, words", [
    ({"guidance": -1}, 400, "guidance", "guidance -1"),
    ({"steps": 0}, 400, "steps", "1 to 200"),
    ({"steps": 201}, 400, "steps", "1 to 200"),
    ({"prompt": "a red circle " * 12}, 400, None, "context"),           # more caption tokens than the text encoder reads
    ({"prompt": "x" * 201}, 400, "prompt", "limit of 200"),
    ({"sampler": "euler"}, 400, None, "sampler"),
    ({"model": "wine"}, 400, "model", "image model"),
    ({"model": "nope"}, 404, None, "not served"),
    ({"seed": -1}, 422, "seed", "seed"),
])
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(client, body, status, param, words):
    json_error(draw(client, **body), status, param=param, words=(words,))
    assert draw(client).status_code == 200


def test_a_text_route_refuses_the_image_model(client):
    r = client.post("/v1/completions", json={"model": "shapes", "prompt": "a red circle", "max_tokens": 2})
    assert r.status_code == 400 and "does not generate text" in r.json()["error"]["message"]


def test_a_drawing_past_its_deadline_is_a_504_and_stops_at_its_next_step(tmp_path):
    make_image_model(tmp_path / "shapes")
    watch = GateWatch()
    app = create_app(tmp_path, ServeSettings(allowed_hosts=["testserver"], timeout_s=0.5), on_gate_event=watch)
    denoiser = app.state.registry.get("shapes").model.denoiser
    steps = []
    # Each denoising step takes 50 ms here: 200 of them would run 10 s past a 0.5 s deadline.
    denoiser.register_forward_hook(lambda *a: steps.append(1) or time.sleep(0.05))  # None: the output stays
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/images", json={"prompt": PROMPT, "steps": 200})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        watch.wait("finished")
        assert len(steps) < 100  # the deadline hook on the denoiser stopped it, long before its 200 steps
        assert c.get("/healthz").json()["in_flight"] == 0
