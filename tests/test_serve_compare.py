"""POST /v1/compare (two models on one text, as `gptlab explain --compare` computes it) and
`gptlab explain MODEL PROMPT --compare REF --out page.html`, on tiny random GPTs."""

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from gptlab.serve import ServeSettings, create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "browser"))
from conftest import json_error  # noqa: E402
from model_fixtures import make_compare_models, one_thread  # noqa: E402, F401 (one_thread: an autouse fixture)

PROMPT = "wine review : germany : mosel"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return make_compare_models(tmp_path_factory.mktemp("models"))


def make_client(models_dir, **settings):
    app = create_app(models_dir, ServeSettings(allowed_hosts=["testserver"], max_explain_steps=8, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(models_dir):
    with make_client(models_dir) as c:
        yield c


def compare(client, **body):
    return client.post("/v1/compare", json={"model": "dpo", "reference": "sft", "prompt": PROMPT, "steps": 6,
                                            "seed": 3, **body})


def test_a_model_against_itself_has_zero_kl_and_equal_probabilities(client):
    r = compare(client, reference="dpo", top=3)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "comparison" and d["model"] == d["reference"] == "dpo" and len(d["steps"]) == 6
    for s in d["steps"]:
        assert abs(s["kl"]) < 1e-5 and s["p"] == pytest.approx(s["ref_p"], abs=1e-6)
        assert s["top"] == s["ref_top"] and len(s["top"]) == 3


def test_two_models_differ_and_each_step_is_consistent(client):
    d = compare(client, top=5).json()
    assert d["model"] == "dpo" and d["reference"] == "sft" and d["prompt"] == PROMPT
    assert d["total_kl"] == pytest.approx(sum(s["kl"] for s in d["steps"]), rel=1e-6) and d["total_kl"] > 1e-3
    for s in d["steps"]:
        assert s["kl"] >= -1e-6
        for key in ("top", "ref_top"):
            ps = [c["p"] for c in s[key]]
            assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-5
        # The written token's probability is the one its top list shows, when it is in it.
        shown = {c["token"]: c["p"] for c in s["top"]}
        if s["token"] in shown:
            assert shown[s["token"]] == pytest.approx(s["p"], abs=1e-6)
    # The text compared is what `model` writes with the same settings and seed (an aligned model's sample).
    c = client.post("/v1/completions", json={"model": "dpo", "prompt": PROMPT, "max_tokens": 6, "seed": 3}).json()
    assert d["text"].strip() == c["choices"][0]["text"].strip()


def test_same_seed_same_comparison_in_the_engines_or_not(client, models_dir):
    a, b = compare(client).json(), compare(client).json()
    assert a == b
    with make_client(models_dir, engine="off") as off:
        assert compare(off).json() == a


@pytest.mark.parametrize("body, status, param, words", [
    ({"reference": "other"}, 400, None, "another tokenizer"),
    ({"reference": "nope"}, 404, None, "not served"),
    ({"steps": 9}, 400, "steps", "limit of 8"),
    ({"steps": 0}, 422, "steps", "steps"),
    ({"top": 0}, 422, "top", "top"),
    ({"temperature": -1}, 400, None, "temperature"),
    ({"reference": None}, 422, "reference", "reference"),
])
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(client, body, status, param, words):
    json_error(compare(client, **body), status, param=param, words=(words,))
    assert compare(client).status_code == 200


def test_one_loaded_model_at_a_time_cannot_compare_two(models_dir):
    with make_client(models_dir, max_loaded=1) as c:
        r = compare(c)
        assert r.status_code == 400 and "--max-loaded" in r.json()["error"]["message"]
        assert compare(c, reference="dpo").status_code == 200


def test_explain_compare_out_writes_the_page_the_server_data_draws(models_dir, tmp_path, capsys):
    from gptlab.cli import main
    out = tmp_path / "cmp.html"
    assert main(["explain", str(models_dir / "dpo"), PROMPT, "--compare", str(models_dir / "sft"), "--steps", "5",
                 "--seed", "3", "--device", "cpu", "--out", str(out)]) == 0
    html = out.read_text()
    data = json.loads(html.split('class="gptlab-data">', 1)[1].split("</script>", 1)[0])
    assert data["model"] == "dpo" and data["reference"] == "sft" and len(data["steps"]) == 5
    assert str(models_dir) not in html  # folder names only: the page may be shared
    assert "GptlabCompareView" in html and "KL of the whole continuation" in html  # the view, and the no-script text
    assert math.isclose(data["total_kl"], sum(s["kl"] for s in data["steps"]), rel_tol=1e-6)
    assert not list(tmp_path.glob("*.tmp*"))
    capsys.readouterr()
    assert main(["explain", str(models_dir / "dpo"), PROMPT, "--compare", str(models_dir / "sft"), "--device", "cpu",
                 "--json", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "--compare" in err and "--json" in err and len(err.strip().splitlines()) == 1
