"""The other two transformer families, measured against baselines in the same run.

1. Encoder-decoder, number words English -> Spanish (built-in task, split by number: test numbers
   unseen): exact match and chrF of greedy and beam search, against a retrieval baseline (the
   Spanish of the training number whose English is nearest by character n-gram TF-IDF).
2. Encoder-only, wine variety (20 most common) from the description alone, on
   ../shared/data/wine-reviews.csv split by record: masked-LM pretrained + fine-tuned encoder
   vs the same encoder fine-tuned from scratch vs TF-IDF + logistic regression vs the majority class.
   Fine-tuning runs a fixed number of passes with each --word-dropout value; the one with the best
   accuracy on a dev slice of the training rows is the headline (the test rows pick nothing).

    python benchmarks/families.py            # full: about 10 min (numbers) + 40 min (wine) on 2 cores
    python benchmarks/families.py --quick    # a few minutes: small budgets, a wine subset
    python benchmarks/families.py --only numbers --json out.json

Needs num2words, sacrebleu (chrF) and scikit-learn (the baselines): pip install 'gptlab[families]'.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gptlab.data import DataConfig
from gptlab.data.pairs import normalize
from gptlab.data.texts import labelled_rows
from gptlab.errors import run_script  # noqa: E402
from gptlab.infer.translate import translate
from gptlab.model.encoder import ENCODER_PRESETS
from gptlab.model.seq2seq import SEQ2SEQ_PRESETS
from gptlab.training.tasks.classify import ClassifyConfig, classify
from gptlab.training.tasks.masked_lm import EncoderTrainConfig, pretrain
from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig, load_splits
from gptlab.training.tasks.seq2seq import train as train_seq2seq

WINE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wine-reviews.csv"  # ../shared beside the repo


def retrieval_baseline(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> list[str]:
    """Each test source gets the target of its nearest training source (char 2-4-gram TF-IDF)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4))
    X = vec.fit_transform([s for s, _ in train])
    nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(X)
    idx = nn.kneighbors(vec.transform([s for s, _ in test]), return_distance=False)[:, 0]
    return [train[i][1] for i in idx]


def scores(hyps: list[str], refs: list[str]) -> dict:
    import sacrebleu
    return {"exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}


def bench_numbers(quick: bool, threads: int) -> dict:
    t = Seq2SeqTrainConfig(out="", preset="small", max_steps=4000 if not quick else 600,
                               time_budget=540.0 if not quick else 120.0, batch_size=64, lr=2e-3,
                               warmup_steps=200, eval_interval=0, eval_pairs=0, progress=sys.stderr.isatty(),
                               device="cpu", threads=threads, seed=0)
    splits = load_splits(t)
    mcfg = SEQ2SEQ_PRESETS["small"]()
    t0 = time.perf_counter()
    r = train_seq2seq(t, mcfg, splits=splits, save=False)
    train_s = time.perf_counter() - t0
    test = splits["test"]
    refs = [normalize(r.tokenizer, y) for _, y in test]
    srcs = [x for x, _ in test]
    out = {"task": "English number words -> Spanish, numbers 0..9999 split by number (8000/1000/1000), test",
           "n_test": len(test), "train_pairs": len(splits["train"]), "params": r.model.num_params(),
           "model": {k: getattr(mcfg, k) for k in ("d_model", "n_layer", "n_head", "d_ff", "dropout")},
           "steps": r.config["metrics"]["steps"], "train_seconds": round(train_s, 1), "results": {}}
    base = retrieval_baseline(splits["train"], test)
    out["results"]["retrieval baseline (nearest training number)"] = scores(
        [normalize(r.tokenizer, b) for b in base], refs)
    for beam in (1, 4):
        t1 = time.perf_counter()
        hyps = translate(r.model, r.tokenizer, srcs, beam=beam)
        res = scores(hyps, refs)
        res["decode_seconds"] = round(time.perf_counter() - t1, 1)
        out["results"][f"seq2seq, {'greedy' if beam == 1 else f'beam {beam}'}"] = res
        if beam == 1:
            out["errors"] = [{"source": s, "reference": y, "output": h}
                             for s, y, h in zip(srcs, refs, hyps) if h != y][:8]
    return out


def bench_wine(quick: bool, threads: int, csv: Path, pretrained: str = "", ft_epochs: float = 6.0,
               word_dropouts: tuple[float, ...] = (0.2, 0.3), scratch: bool = True, ema: float = 0.999,
               pretrain_seconds: float = 900.0, pretrain_init: str = "") -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    dcfg = DataConfig(data=str(csv), format="csv", val_fraction=0.15, seed=42,
                      max_records=12000 if quick else 0)
    data = labelled_rows(dcfg, "variety", "description", top=20)
    tr_x = [data.texts[i] for i in data.train]
    tr_y = [data.labels[i] for i in data.train]
    te_x = [data.texts[i] for i in data.val]
    te_y = np.array([data.labels[i] for i in data.val])
    out = {"task": f"wine variety (top {len(data.names)}) from the description, split by record",
           "csv": str(csv), "train_rows": len(tr_x), "test_rows": len(te_x), "results": {}}
    majority = Counter(tr_y).most_common(1)[0][0]
    out["results"]["majority class"] = {"accuracy": float((te_y == majority).mean())}

    t0 = time.perf_counter()
    best = None
    # C picked on a slice of the training rows, so the baseline is tuned as fairly as it is cheap.
    cut = int(len(tr_x) * 0.85)
    for C in ((4.0, 16.0) if quick else (8.0, 32.0)):
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        clf = LogisticRegression(C=C, max_iter=2000)
        clf.fit(vec.fit_transform(tr_x[:cut]), tr_y[:cut])
        acc = float((clf.predict(vec.transform(tr_x[cut:])) == np.array(tr_y[cut:])).mean())
        if best is None or acc > best[1]:
            best = (C, acc)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = LogisticRegression(C=best[0], max_iter=2000).fit(vec.fit_transform(tr_x), tr_y)
    out["results"]["TF-IDF (1-2 grams) + logistic regression"] = {
        "accuracy": float((clf.predict(vec.transform(te_x)) == te_y).mean()), "C": best[0],
        "seconds": round(time.perf_counter() - t0, 1)}

    pre_budget = 90.0 if quick else pretrain_seconds
    # bf16 autocast where the CPU is fast at it (AMX / AVX512-BF16), as `gptlab train` does.
    common = dict(device="cpu", threads=threads, progress=sys.stderr.isatty(), seed=0, eval_interval=0,
                  precision="auto")
    mcfg = ENCODER_PRESETS["small"]()
    # Masked-LM pretraining on the TRAINING rows' descriptions only (same split, same seed).
    pt = EncoderTrainConfig(out="", preset="small", text_field="description", vocab_size=12000,
                                max_steps=100000, time_budget=pre_budget, batch_size=64, lr=1e-3, warmup_steps=200,
                                **common)
    if pretrain_init:  # more pretraining of an encoder saved by an earlier run: a restart at half the peak rate
        pt.init, pt.lr, pt.min_lr, pt.seed = pretrain_init, 5e-4, 5e-5, 1
    if pretrained:  # an encoder this benchmark pretrained before (its config records how)
        cfg = json.loads((Path(pretrained) / "config.json").read_text())
        out["pretrain"] = {"reused": pretrained, **cfg["metrics"], "params": None}
        tmp = Path(pretrained)
    else:
        t0 = time.perf_counter()
        pre = pretrain(pt, dcfg, mcfg, save=False)
        out["pretrain"] = {"seconds": round(time.perf_counter() - t0, 1), **pre.config["metrics"],
                           "params": pre.model.num_params()}
        if pretrain_init:
            before = json.loads((Path(pretrain_init) / "config.json").read_text())["metrics"]
            out["pretrain"].update(init_seconds=before.get("train_seconds"), init_val_loss=before.get("val_loss"))
        tmp = Path(__import__("tempfile").mkdtemp()) / "mlm"
        from gptlab.checkpoint import save_model
        save_model(tmp, pre.model, pre.tokenizer, pre.config)
        print(f"pretrained encoder saved in {tmp} (reuse with --pretrained)", file=sys.stderr, flush=True)

    def fine_tune(model_dir: str, lr: float, word_dropout: float) -> dict:
        # A fixed number of passes (not a time budget), so the result does not depend on the machine's load.
        ct = ClassifyConfig(out="", model=model_dir, label="variety", text_field="description", top=20,
                                preset="small", vocab_size=12000, epochs=1.0 if quick else ft_epochs, time_budget=0,
                                batch_size=32, lr=lr, min_lr=lr / 20, warmup_steps=200, pooling="mean",
                                word_dropout=word_dropout, ema=ema,
                                **{**common, "eval_interval": 300})  # 10% of the training rows pick the best step
        t1 = time.perf_counter()
        r = classify(ct, dcfg, None if model_dir else ENCODER_PRESETS["small"](), save=False, data=data)
        m = r.config["metrics"]
        return {"accuracy": m["val_accuracy"], "steps": m["steps"], "best_step": m.get("best_step"),
                "dev_accuracy": m.get("best_dev_accuracy"), "seconds": round(time.perf_counter() - t1, 1), "lr": lr,
                "word_dropout": word_dropout, "ema": ema}

    # The word dropout is picked on the dev slice of the training rows (never on the test rows).
    runs = [fine_tune(str(tmp), 3e-4, wd) for wd in word_dropouts]
    for r in runs:
        out["results"][f"encoder, masked-LM pretrained + fine-tuned, word dropout {r['word_dropout']}"] = r
    best = max(runs, key=lambda r: r["dev_accuracy"])
    out["results"]["encoder, masked-LM pretrained + fine-tuned (picked by dev accuracy)"] = best
    if scratch:
        out["results"]["encoder, fine-tuned from scratch (no pretraining)"] = fine_tune("", 1e-3, best["word_dropout"])
    return out


def markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['machine']}, torch {res['torch']}, "
             f"{res['threads']} threads{' (--quick)' if res['quick'] else ''}.", ""]
    if "numbers" in res:
        n = res["numbers"]
        lines += [f"### Encoder-decoder: {n['task']}", "",
                  f"{n['params']:,} parameters ({n['model']}), {n['steps']} steps in {n['train_seconds']} s "
                  f"of CPU training on {n['train_pairs']} pairs.", "",
                  "| system | exact match | chrF |", "|---|---|---|"]
        for k, v in n["results"].items():
            lines.append(f"| {k} | {v['exact_match']:.1%} | {v['chrf']:.1f} |")
        if n.get("errors"):
            lines += ["", "Greedy errors (first few): " + "; ".join(
                f"{e['source']} -> {e['output']} (want {e['reference']})" for e in n["errors"][:4])]
        lines.append("")
    if "wine" in res:
        w = res["wine"]
        p = w["pretrain"]
        lines += [f"### Encoder-only: {w['task']}", "",
                  f"{w['train_rows']} training rows, {w['test_rows']} test rows. Masked-LM pretraining: "
                  f"{p['steps']} steps in {p.get('seconds', p.get('train_seconds'))} s, validation MLM loss {p.get('val_loss', float('nan')):.2f}"
                  + (f" (after {p['init_steps']} steps in {p.get('init_seconds')} s of an earlier run: {p['init']}, "
                     f"loss {p.get('init_val_loss', float('nan')):.2f})" if p.get("init") else "") + ".",
                  "", "| system | test accuracy | notes |", "|---|---|---|"]
        for k, v in w["results"].items():
            notes = ", ".join(f"{a} {b}" for a, b in v.items() if a != "accuracy")
            lines.append(f"| {k} | {v['accuracy']:.1%} | {notes} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small budgets and a wine subset (a few minutes)")
    ap.add_argument("--only", choices=("numbers", "wine"), help="run one half")
    ap.add_argument("--csv", default=str(WINE), help="wine reviews CSV (Kaggle layout)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--pretrained", default="", help="wine: reuse a masked-LM encoder saved by an earlier run (skips pretraining)")
    ap.add_argument("--ft-epochs", type=float, default=6.0, help="wine: fine-tuning passes over the training rows")
    ap.add_argument("--word-dropout", type=float, nargs="+", default=[0.2, 0.3],
                    help="wine: word dropout values tried; the best on the dev slice is the headline")
    ap.add_argument("--no-scratch", action="store_true", help="wine: skip the encoder trained from scratch")
    ap.add_argument("--ema", type=float, default=0.999, help="wine: fine-tuning keeps this moving average of the weights (0 = off)")
    ap.add_argument("--pretrain-seconds", type=float, default=900.0, help="wine: masked-LM pretraining budget")
    ap.add_argument("--pretrain-init", default="", help="wine: pretrain further from an encoder saved by an earlier run "
                    "(--pretrain-seconds more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor() or ''} "
           f"({__import__('os').cpu_count()} cores)".strip(), "torch": torch.__version__,
           "threads": args.threads, "quick": args.quick}
    if args.only in (None, "numbers"):
        res["numbers"] = bench_numbers(args.quick, args.threads)
        print(markdown(res), file=sys.stderr, flush=True)  # the first half, while the second runs
    if args.only in (None, "wine"):
        if not Path(args.csv).exists():
            print(f"skipping wine: {args.csv} not found", file=sys.stderr)
        else:
            res["wine"] = bench_wine(args.quick, args.threads, Path(args.csv), args.pretrained, args.ft_epochs,
                                     tuple(args.word_dropout), not args.no_scratch, args.ema, args.pretrain_seconds,
                                     args.pretrain_init)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
