"""What the test files share: tiny models and corpora made on the spot (never the real data), and
a way to interrupt training between two steps as Ctrl-C would."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from gptlab.api import LoadedModel
from gptlab.checkpoint import save_model
from gptlab.data.tokenizer import Tokenizer
from gptlab.model import GPT, tiny
from gptlab.training import loop

LINES = [
    "wine review : germany : mosel : riesling : while demure in color , this off - dry riesling is bright and juicy",
    "wine review : us : california : pinot noir : ripe cherry and cola flavors with a touch of oak",
    "wine review : france : alsace : riesling : crisp apple and lime , steely and dry",
    "wine review : germany : pfalz : riesling : honeyed peach with a racy acidity",
    "wine review : italy : tuscany : sangiovese : firm tannins , sour cherry and dried herbs",
    "wine review : us : washington : merlot : plush plum and mocha , soft and round",
]

COUNTRIES = {"germany": ["mosel", "pfalz", "baden"], "france": ["bordeaux", "alsace"], "us": ["california", "oregon"]}


def tiny_model(seed: int = 0, **cfg_overrides) -> LoadedModel:
    """A random tiny GPT (context 32) with a word-level tokenizer trained on LINES."""
    tok = Tokenizer.train(LINES, vocab_size=200)
    torch.manual_seed(seed)
    cfg = tiny(tok.vocab_size)
    for k, v in cfg_overrides.items():
        setattr(cfg, k, v)
    model = GPT(cfg).eval()
    return LoadedModel(model, tok, {"kind": "gpt", "model": cfg.to_dict()})


def tiny_model_dir(path, seed: int = 0):
    """tiny_model(seed) saved as a model folder at `path`."""
    lm = tiny_model(seed)
    save_model(path, lm.model, lm.tokenizer, lm.config)
    return path


def wine_lines(n: int = 240) -> list[str]:
    """n template lines over COUNTRIES with random descriptions (seeded): a corpus a tiny GPT learns."""
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        c = rng.choice(list(COUNTRIES))
        p = rng.choice(COUNTRIES[c])
        words = rng.sample(["crisp", "ripe", "dry", "fresh", "oaky", "long", "bright", "dense", "soft"], 4)
        lines.append(f"wine review : {c} : {p} : riesling : a {words[0]} , {words[1]} wine with {words[2]} fruit "
                     f"and a {words[3]} finish .")
    return lines


@pytest.fixture
def corpus_file(tmp_path):
    """wine_lines() as a text corpus file, one document per line."""
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(wine_lines()) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def interrupt_at(monkeypatch):
    """interrupt_at(step): the next training run stops before `step` as Ctrl-C would (between two
    steps); interrupt_at(None) lets runs go on."""
    real = loop.lr_at

    def install(stop_step: int | None) -> None:
        def lr_at(step, progress, t, warmup=None):
            if step == stop_step:
                raise KeyboardInterrupt
            return real(step, progress, t, warmup)
        monkeypatch.setattr(loop, "lr_at", lr_at if stop_step is not None else real)

    return install


class GateWatch:
    """A serve Gate's on_event hook that records what the gate reports, for a test to wait on
    (instead of sleeping and hoping the server got there)."""

    def __init__(self, wait_s: float = 30.0) -> None:
        self.events: list[str] = []
        self.wait_s = wait_s
        self._changed = threading.Condition()

    def __call__(self, event: str) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait(self, event: str, count: int = 1) -> None:
        """Block until the gate has reported `event` `count` times in all."""
        with self._changed:
            ok = self._changed.wait_for(lambda: self.events.count(event) >= count, self.wait_s)
        assert ok, f"the gate reported {self.events}, not {count} x {event!r}"


def json_error(r, status: int, type_: str | None = None, *, param: str | None = None, words: tuple[str, ...] = ()) -> dict:
    """The server's answer to a bad request: `status`, a JSON error whose message is one line naming each
    of `words`, and the given error type and parameter. Returns the error object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"], err
    if type_:
        assert err["type"] == type_, err
    if param:
        assert err.get("param") == param, err
    for w in words:
        assert w in err["message"], err
    return err


def one_line_error(capsys, argv, *words) -> str:
    """Run `gptlab ARGV`: exit status 2 and one line on stderr, no traceback, naming each of `words`."""
    from gptlab.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err
