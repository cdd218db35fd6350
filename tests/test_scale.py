"""gptlab scale: the power-law fit, a tiny ladder end to end, resume, and one-line errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import wine_lines

from gptlab.cli import main
from gptlab.data import Corpus, split_records
from gptlab.training import scale
from gptlab.training.tasks import causal_lm


def tiny_args(corpus_file, out, *extra):
    return ["scale", "--data", str(corpus_file), "--out", str(out), "--sizes", "8", "16", "32", "--n-layer", "1",
            "--n-head", "2", "--context-length", "16", "--batch-size", "4", "--tokens", "640",
            "--warmup-steps", "2", "--lr", "3e-3", "--precision", "fp32", "--device", "cpu",
            "--val-fraction", "0.1", "--bootstrap", "50", *extra]


# -- the fit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_kaplan_exponent_from_noisy_points(seed):
    rng = np.random.default_rng(seed)
    N = np.geomspace(1e4, 1e9, 12)
    L = (8.8e13 / N) ** 0.076 * np.exp(rng.normal(0, 0.01, N.size))
    fit = scale.fit_power_law(N, L, bootstrap=200, seed=seed)
    assert abs(fit.alpha - 0.076) / 0.076 < 0.05
    assert abs(np.log10(fit.x_c) - np.log10(8.8e13)) < 0.5
    lo, hi = fit.alpha_ci95
    assert lo < fit.alpha < hi and 0 < fit.alpha_stderr < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_with_irreducible_term_recovers_exponent_and_floor(seed):
    rng = np.random.default_rng(seed)
    N = np.geomspace(1e3, 1e8, 12)
    L = (1.5 + (1e5 / N) ** 0.35) * np.exp(rng.normal(0, 0.003, N.size))
    fit = scale.fit_power_law(N, L, irreducible=True, bootstrap=100, seed=seed)
    assert abs(fit.alpha - 0.35) / 0.35 < 0.05
    assert abs(fit.E - 1.5) < 0.05
    # Without the floor, a pure power law bends the exponent far from the truth: the option matters.
    assert abs(scale.fit_power_law(N, L, bootstrap=0).alpha - 0.35) / 0.35 > 0.2


def test_fit_is_exact_on_noiseless_points():
    N = np.array([1e4, 1e5, 1e6, 1e7])
    fit = scale.fit_power_law(N, 2.0 + (3e4 / N) ** 0.5, irreducible=True, bootstrap=0)
    assert fit.alpha == pytest.approx(0.5, rel=1e-4) and pytest.approx(2.0, rel=1e-4) == fit.E
    assert fit.rmse_log < 1e-6


def test_subset_corpus_keeps_the_validation_records():
    records = [f"record {i}" for i in range(200)]
    c = Corpus(records, "x", 0)
    train_idx, val_idx = split_records(records, 0.05, 42)
    keep = [5, 3, 17, 0, 99]
    sub, vf = scale.subset_corpus(c, train_idx, val_idx, keep, 42)
    t2, v2 = split_records(sub.records, vf, 42)
    assert [sub.records[i] for i in v2] == [records[i] for i in val_idx]
    assert sorted(sub.records[i] for i in t2) == sorted(records[train_idx[k]] for k in keep)


def test_parse_count():
    assert scale.parse_count("250k") == 250_000
    assert scale.parse_count("1.5M") == 1_500_000
    assert scale.parse_count("2e6") == 2_000_000


# -- end to end ------------------------------------------------------------------------------------
def test_tiny_ladder_end_to_end_then_resume(corpus_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scale"
    assert main(tiny_args(corpus_file, out, "--data-sizes", "600", "1200", "2400", "--data-model-size", "16")) == 0
    stdout = capsys.readouterr().out
    assert "alpha_N = " in stdout and "alpha_D = " in stdout

    rows = list(csv.DictReader((out / "points.csv").open()))
    assert [r["name"] for r in rows] == ["n-8", "n-16", "n-32", "data-600", "data-1.2k", "data-2.4k"]
    params = [r for r in rows if r["sweep"] == "params"]
    n = [int(r["n_params"]) for r in params]
    assert n == sorted(n) and n[-1] > 8 * n[0]
    for r in rows:
        # Packed batches: exactly steps x batch x context tokens, and C = 6 N D.
        assert int(r["tokens"]) == 10 * 4 * 16 == int(r["steps"]) * 64
        assert float(r["flops"]) == pytest.approx(6 * int(r["n_params"]) * int(r["tokens"]))
    data = [r for r in rows if r["sweep"] == "data"]
    assert [int(r["dataset_tokens"]) >= t for r, t in zip(data, (600, 1200, 2400))] == [True] * 3

    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["fits"]) == {"params", "data"} and fit["kaplan_2020"]["alpha_N"] == 0.076
    assert isinstance(fit["fits"]["params"]["alpha"], float)
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "scaling.svg").read_text().lstrip().startswith("<?xml")

    # Every run used the sweep's one tokenizer, and all were evaluated on the same records.
    shared = (out / "tokenizer.json").read_text()
    for r in rows:
        assert (out / r["name"] / "tokenizer.json").read_text() == shared
        cfg = json.loads((out / r["name"] / "config.json").read_text())
        assert cfg["corpus"]["val_records"] == 24

    # Interrupted sweep: one run's result is gone. Only that run trains again (from its checkpoint).
    before = {r["name"]: r["best_val_loss"] for r in rows}
    (out / "n-16" / "result.json").unlink()
    calls = []
    real_train = causal_lm.train

    def counting_train(cfg, corpus=None, **kwargs):
        calls.append((Path(cfg.train.out).name, cfg.train.resume))
        return real_train(cfg, corpus, **kwargs)

    monkeypatch.setattr(causal_lm, "train", counting_train)
    assert main(tiny_args(corpus_file, out, "--data-sizes", "600", "1200", "2400", "--data-model-size", "16")) == 0
    assert calls == [("n-16", True)]
    after = {r["name"]: r["best_val_loss"] for r in csv.DictReader((out / "points.csv").open())}
    assert after == before

    # All finished: a rerun trains nothing and only refits (here with the floor term).
    calls.clear()
    assert main(tiny_args(corpus_file, out, "--data-sizes", "600", "1200", "2400", "--data-model-size", "16",
                          "--irreducible")) == 0
    assert calls == []
    assert json.loads((out / "fit.json").read_text())["fits"]["params"]["form"] == "L = E + (x_c/x)^alpha"

    # Other settings in the same folder: refused rather than mixed into one curve.
    capsys.readouterr()
    assert main(tiny_args(corpus_file, out, "--lr", "1e-2")) == 2
    err = capsys.readouterr().err.strip()
    assert "train.lr" in err and "--overwrite" in err and "\n" not in err

    # ... and so is another version of the corpus under the same name.
    corpus_file.write_text("\n".join(wine_lines()[::-1]) + "\n", encoding="utf-8")
    assert main(tiny_args(corpus_file, out)) == 2
    assert "another version of the corpus" in capsys.readouterr().err


def test_help():
    with pytest.raises(SystemExit) as e:
        main(["scale", "--help"])
    assert e.value.code == 0


@pytest.mark.parametrize("extra, words", [
    (["--sizes", ""], "--sizes is empty"),
    (["--sizes", "16"], "at least two"),
    (["--sizes", "8", "15", "32"], "not divisible by n_head"),
    (["--sizes", "8", "x"], "not a whole number"),
    (["--tokens", "40"], "less than one step"),
    (["--tokens", "lots"], "not a token count"),
    (["--data-sizes", "1k", "100G"], "exceeds"),
    (["--data-sizes", "1k"], "at least two"),
    (["--max-steps", "5"], "set from --tokens"),
    (["--d-model", "64"], "--sizes"),
])
def test_bad_input_is_one_line(corpus_file, tmp_path, capsys, extra, words):
    assert main(tiny_args(corpus_file, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and err.startswith("gptlab scale: error:")


def test_data_folder_without_corpus(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(tiny_args(empty, tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no corpus" in err and "\n" not in err


def test_scale_reads_a_toml_config_and_refuses_the_keys_it_owns(tmp_path, corpus_file, capsys):
    toml = tmp_path / "sweep.toml"
    toml.write_text('[train]\nlr = 4e-3\nwarmup_steps = 3\n[model]\nn_head = 2\n')
    args = ["scale", "--data", str(corpus_file), "--out", str(tmp_path / "s"), "--sizes", "8", "16", "--n-layer", "1",
            "--context-length", "16", "--batch-size", "4", "--tokens", "640", "--precision", "fp32", "--device", "cpu",
            "--val-fraction", "0.1", "--bootstrap", "0"]
    assert main([*args, "--config", str(toml)]) == 0
    cfg = json.loads((tmp_path / "s" / "n-8" / "config.json").read_text())
    assert cfg["train"]["lr"] == 4e-3 and cfg["train"]["warmup_steps"] == 3 and cfg["model"]["n_head"] == 2
    toml.write_text('[model]\nd_model = 64\n')
    capsys.readouterr()
    assert main([*args, "--config", str(toml), "--out", str(tmp_path / "t")]) == 2
    assert "--d-model is not a setting of gptlab scale" in capsys.readouterr().err
