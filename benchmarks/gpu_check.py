"""GPU check for training: throughput of the `book` preset at batch 32 and 1024, and bf16 +
torch.compile losses against FP32 over 200 steps. Needs a CUDA GPU; prints a message and exits 2
without one.

    python benchmarks/gpu_check.py                 # ~3-6 minutes on one H100/H200
    python benchmarks/gpu_check.py --steps 100 --check-steps 100

Data: the real reviews (--data, default ../shared/data/wine-reviews.csv beside the repo) when present, else the
built-in synthetic corpus (same tokenizer family; throughput depends only on the shapes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WINE_CSV, load_wine, median  # noqa: E402
from train_throughput import gptlab_contestant  # noqa: E402

from gptlab.errors import run_script  # noqa: E402


def losses(data, device: str, precision: str, compile: bool, steps: int) -> list[float]:
    """Per-step training loss of `book` (dropout 0, so runs are comparable) on the same batches."""
    from gptlab.data import Corpus
    from gptlab.training.config import RUN_PRESETS
    from gptlab.training.tasks.causal_lm import train
    cfg = RUN_PRESETS["book"]()
    cfg.model.dropout = 0.0
    cfg.data.val_fraction = 0.0
    t = cfg.train
    t.out, t.device, t.precision, t.compile = tempfile.mkdtemp(prefix="gptlab_gpu_"), device, precision, compile
    t.max_steps, t.log_interval, t.eval_interval, t.save_interval = steps, 1, 0, 0
    t.progress, t.tensorboard, t.sample_prompt = False, False, ""
    res = train(cfg, Corpus(records=data.train_recs, source="train split", skipped=0))
    return [h["loss"] for h in res.history if "loss" in h]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=WINE_CSV)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the logic
    p.add_argument("--steps", type=int, default=100, help="measured steps per throughput run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--check-steps", type=int, default=200)
    p.add_argument("--tolerance", type=float, default=0.02, help="relative, on 20-step mean losses")
    p.add_argument("--batches", default="32,1024", help="the two batch sizes measured")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU (torch.cuda.is_available() is False); run it on a machine "
              "with an NVIDIA GPU and a CUDA build of torch. Nothing was measured.")
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (dry run)"
    print(f"{name}; torch {torch.__version__}", flush=True)
    if Path(args.data).is_file():
        data = load_wine(args.data)
    else:
        print(f"{args.data} not found: using the built-in synthetic corpus", flush=True)
        from gptlab.data import DataConfig, load_corpus
        data = _data_from(load_corpus(DataConfig(data="builtin", builtin_size=40000)))

    ok = True
    # 1. Throughput (non-padding tokens/s through gptlab's training loop).
    rows = []
    small, large = (int(b) for b in args.batches.split(","))
    for batch, settings in ((small, [("fp32", False, "pad"), ("auto", False, "pad"), ("auto", True, "pad")]),
                            (large, [("fp32", False, "pad"), ("auto", False, "pad"), ("auto", True, "pad"),
                                     ("auto", False, "bucket")])):
        for precision, compile, batching in settings:
            run = gptlab_contestant(f"book b{batch} {batching} {precision}{' compile' if compile else ''}", data,
                                    batching=batching, precision=precision, batch_size=batch, compile=compile,
                                    device=args.device, steps=args.steps, warmup=10 if compile else 5,
                                    log_interval=10)
            got = [run() for _ in range(args.repeats)]
            tps, ms = median([a for a, _ in got]), median([b for _, b in got])
            rows.append((run.label, tps, ms))
            print(f"  {run.label:34s} {tps:12,.0f} non-pad tokens/s  {ms:8.2f} ms/step", flush=True)

    # 2. bf16 and bf16 + compile train like fp32 (dropout off, same batches, same init).
    steps = args.check_steps
    ref = losses(data, args.device, "fp32", False, steps)
    for precision, compile in (("bf16", False), ("bf16", True)):
        got = losses(data, args.device, precision, compile, steps)
        w = 20
        rel = [abs(np.mean(got[i:i + w]) - np.mean(ref[i:i + w])) / np.mean(ref[i:i + w]) for i in range(0, steps, w)]
        good = max(rel) <= args.tolerance and np.isfinite(got).all()
        ok &= good
        print(f"  {precision}{' + compile' if compile else ''} vs fp32 over {steps} steps: worst 20-step mean loss "
              f"differs by {100 * max(rel):.2f}% (final {np.mean(got[-w:]):.3f} vs {np.mean(ref[-w:]):.3f}) "
              f"{'OK' if good else 'FAIL'}", flush=True)
    print("gpu_check: " + ("all checks passed" if ok else "FAILED"))
    return 0 if ok else 1


def _data_from(corpus):
    """WineData-like object from an in-memory corpus (the built-in one)."""
    from types import SimpleNamespace

    from gptlab.data import split_records
    from gptlab.data.tokenizer import Tokenizer
    from gptlab.training.batches import encode_records
    tr, va = split_records(corpus.records, 0.05, 42)
    train_recs = [corpus.records[i] for i in tr]
    tok = Tokenizer.train(train_recs, kind="word", vocab_size=10000)
    return SimpleNamespace(train_recs=train_recs, tok=tok, train_seqs=encode_records(tok, train_recs, 80))


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
