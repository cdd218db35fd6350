"""`gptlab eval` measures a model against the data it was trained on, never a corpus it did not see."""

import csv
import math
import random

from gptlab.cli import main

# A Kaggle-layout CSV whose German provinces are not the built-in catalog's: 70% ahr, 30% nahe.
PROVINCES = {"germany": [("ahr", 0.7), ("nahe", 0.3)], "chile": [("maipo valley", 1.0)]}
WORDS = ["crisp", "apple", "lime", "slate", "honey", "peach", "dry", "bright", "mineral", "finish"]


def write_csv(path, n=300, seed=0):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["country", "description", "points", "province", "variety"])
        for i in range(n):
            country = "germany" if i % 3 else "chile"
            provs = PROVINCES[country]
            prov = provs[0][0] if len(provs) == 1 or (i // 3) % 10 < 7 else provs[1][0]
            w.writerow([country, " ".join(rng.choice(WORDS) for _ in range(6)), 90, prov,
                        "riesling" if country == "germany" else "carmenere"])


def test_eval_on_a_csv_model_compares_with_that_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the model records the data path it was given, relative like a user's
    write_csv(tmp_path / "reviews.csv")
    assert main(["train", "--data", "reviews.csv", "--preset", "tiny", "--max-steps", "150", "--lr", "5e-3",
                 "--out", "m", "--no-progress", "--no-tensorboard"]) == 0
    capsys.readouterr()
    assert main(["eval", "m", "--samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "reviews.csv" in out
    rows = {line.split()[0]: [float(x) for x in line.split()[1:3]] for line in out.splitlines()
            if line.startswith("  ") and not line.strip().startswith("(")}
    # The reference column is the CSV's own P(province | germany), not the built-in catalog's.
    assert set(rows) == {"ahr", "nahe"}
    assert math.isclose(rows["ahr"][1], 0.7, abs_tol=0.02) and math.isclose(rows["nahe"][1], 0.3, abs_tol=0.02)
    assert "mosel" not in out and "training split's own frequencies" in out
    loss = float(out.split("held-out loss ")[1].split()[0])
    ppl = float(out.split("perplexity ")[1].split()[0])
    assert math.isclose(ppl, math.exp(loss), rel_tol=0.01)
    # The exact share of samples keeping the template, over the CSV's own countries and varieties.
    kept = float(out.split("keeps the template) = ")[1].split()[0])
    ok, n = map(int, out.split("samples at T=1.0: ")[1].split()[0].split("/"))
    assert 0 < kept <= 1 and abs(kept - ok / n) < 0.35, out  # 20 samples: a standard error up to 0.11
    assert main(["eval", "m", "--samples", "0", "--no-exact"]) == 0
    assert "keeps the template" not in capsys.readouterr().out


def test_eval_says_when_the_data_is_gone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "reviews.csv")
    assert main(["train", "--data", "reviews.csv", "--preset", "tiny", "--max-steps", "5", "--out", "m",
                 "--no-progress", "--no-tensorboard"]) == 0
    (tmp_path / "reviews.csv").rename(tmp_path / "moved.csv")
    assert main(["eval", "m", "--samples", "0"]) == 2
    assert "pass --data FILE" in capsys.readouterr().err
    assert main(["eval", "m", "--samples", "0", "--data", "moved.csv"]) == 0
