"""`gptlab generate`, `explain` and `temperature` end to end, in-process through `gptlab.cli.main`
(one subprocess run checks `python -m gptlab`); bad input is one line on stderr, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model_dir

from gptlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def corrupt_dirs(tmp_path_factory, model_dir):
    base = tmp_path_factory.mktemp("corrupt")
    bad_config = base / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{ this is not json")
    truncated = base / "truncated"
    truncated.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (truncated / name).write_bytes((Path(model_dir) / name).read_bytes())
    (truncated / "model.safetensors").write_bytes((Path(model_dir) / "model.safetensors").read_bytes()[:100])
    return {"bad_config": str(bad_config), "truncated": str(truncated)}


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate(capsys, model_dir):
    rc, out, err = run_cli(capsys, "generate", model_dir, "wine review : us", "-T", "0.5", "-n", "3",
                           "--top-k", "50", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty", "1.2",
                           "--max-tokens", "8", "--seed", "1")
    assert rc == 0 and err == ""
    samples = out.strip().split("\n\n")
    assert len(samples) == 3 and all(s.startswith("wine review : us") for s in samples)


def test_generate_json_and_stream_agree(capsys, model_dir):
    rc, out, _ = run_cli(capsys, "generate", model_dir, "wine review : france", "--max-tokens", "10", "--seed", "4", "--json")
    assert rc == 0
    (c,) = json.loads(out)
    assert set(c) == {"prompt", "text", "token_ids", "finish_reason"} and c["finish_reason"] in ("stop", "length")
    rc, streamed, _ = run_cli(capsys, "generate", model_dir, "wine review : france", "--max-tokens", "10", "--seed", "4", "--stream")
    assert rc == 0 and streamed == c["prompt"] + c["text"] + "\n"


def test_generate_warns_about_unknown_words_in_one_line(capsys, model_dir):
    rc, out, err = run_cli(capsys, "generate", model_dir, "wine review : qwertyx", "--max-tokens", "2", "--seed", "0")
    assert rc == 0 and err.count("\n") == 1 and "warning" in err and "qwertyx" in err


def test_explain_terminal_html_json_and_rerender(capsys, model_dir, tmp_path):
    rc, out, _ = run_cli(capsys, "explain", model_dir, "wine review : germany", "--steps", "3", "--seed", "1")
    assert rc == 0 and "step 3" in out and "attends most to" in out and "\x1b[" not in out  # not a TTY
    html, js = tmp_path / "trace.html", tmp_path / "trace.json"
    rc, out, _ = run_cli(capsys, "explain", model_dir, "wine review : germany", "--steps", "4", "--seed", "1",
                         "--out", html, "--json", js, "-T", "0.7", "--top", "3")
    assert rc == 0 and html.exists() and js.exists()
    saved = json.loads(js.read_text())
    assert saved["format"] == "gptlab-trace" and len(saved["steps"]) == 4 and saved["sampling"]["temperature"] == 0.7
    again = tmp_path / "again.html"
    rc, _, _ = run_cli(capsys, "explain", "--trace", js, "--out", again, "--layer", "1", "--head", "2")
    assert rc == 0 and again.read_text().count('class="step"') == 4
    rc, out, _ = run_cli(capsys, "explain", "--trace", js, "--layer", "mean")
    assert rc == 0 and "mean of layers" in out


def test_temperature_with_a_model_and_by_hand(capsys, model_dir):
    rc, out, _ = run_cli(capsys, "temperature", model_dir, "wine review : germany :", "-T", "0.5", "1", "1.5", "3")
    assert rc == 0 and "p(T=3)" in out and "entropy" in out and len(out.strip().splitlines()) == 1 + 1 + 5 + 2
    rc, out, _ = run_cli(capsys, "temperature", "--logits", "4.1,3.9,2.7", "--labels", "pfalz,mosel,rhein", "-T", "1")
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["pfalz"][-1] == "0.484" and rows["mosel"][-1] == "0.397" and rows["rhein"][-1] == "0.119"
    rc, out, _ = run_cli(capsys, "temperature", "--logits", "4.1,3.9,2.7", "--json")
    assert rc == 0 and json.loads(out)["tokens"] == ["#1", "#2", "#3"]


BAD = [
    ("generate", "{model}", "-T", "-1"),
    ("generate", "{model}", "--top-p", "0"),
    ("generate", "{model}", "--top-p", "1.5"),
    ("generate", "{model}", "--top-k", "-1"),
    ("generate", "{model}", "--min-p", "1"),
    ("generate", "{model}", "--repetition-penalty", "0"),
    ("generate", "{model}", "-n", "0"),
    ("generate", "{missing}"),
    ("generate", "{bad_config}"),
    ("generate", "{truncated}"),
    ("generate", "{model}", "--device", "cuda:7"),
    ("generate", "{model}", "--device", "cpu", "--dtype", "fp16"),
    ("explain", "{model}", "x", "-T", "-1"),
    ("explain", "{model}", "x", "--top-p", "0"),
    ("explain", "{model}", "x", "--top-p", "1.5"),
    ("explain", "{model}", "x", "--top-k", "-1"),
    ("explain", "{model}", "x", "--steps", "0"),
    ("explain", "{model}", "x", "--layer", "9"),
    ("explain", "{missing}", "x"),
    ("explain", "{bad_config}", "x"),
    ("explain", "{truncated}", "x"),
    ("explain",),
    ("explain", "--trace", "{missing}"),
    ("explain", "--trace", "{bad_config}/config.json"),
    ("temperature", "{model}", "x", "-T", "-1"),
    ("temperature", "{model}", "x", "-T", "1", "-0.5"),
    ("temperature", "{missing}", "x"),
    ("temperature", "{bad_config}", "x"),
    ("temperature", "{truncated}", "x"),
    ("temperature", "--logits", "4.1,abc"),
    ("temperature", "--logits", "4.1,3.9", "--labels", "a,b,c"),
    ("temperature",),
]


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_is_one_line_without_traceback(capsys, model_dir, corrupt_dirs, tmp_path, argv):
    paths = {"model": model_dir, "missing": str(tmp_path / "no_such_model"), **corrupt_dirs}
    rc, _, err = run_cli(capsys, *[a.format(**paths) for a in argv])
    assert rc != 0 and rc == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "explain", "temperature"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and command in capsys.readouterr().out


def test_python_dash_m_generate_help():
    r = subprocess.run([sys.executable, "-m", "gptlab", "generate", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--temperature" in r.stdout and "--top-p" in r.stdout and "--stream" in r.stdout
