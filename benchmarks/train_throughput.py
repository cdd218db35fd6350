"""Training throughput: gptlab's `book` preset against the course notebook's Keras model on the
TensorFlow backend, same batches (32 x 80, real wine reviews, the same token ids), one process,
repeats interleaved so that a busy machine slows every contestant alike.

    python benchmarks/train_throughput.py                  # all contestants, 3 repeats
    python benchmarks/train_throughput.py --repeats 5 --steps 40 --threads 1
    python benchmarks/train_throughput.py --no-keras --device cuda --batch-size 1024

The honest figure is non-padding tokens per second: padding is not text the model learns from.
gptlab is measured through its real training loop (`gptlab.training.tasks.causal_lm.train`, on `gptlab.training.loop`), Keras through
`model.fit`; both per step after a warm-up, startup excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    WINE_CSV,
    StepTimer,
    cpu_name,
    import_keras,
    keras_notebook_model,
    load_note,
    load_wine,
    median,
    padded,
    set_threads,
)

from gptlab.errors import run_script  # noqa: E402


def gptlab_contestant(name: str, data, *, preset="book", batching="pad", precision="fp32", batch_size=32,
                      compile=False, device="cpu", threads=0, steps=30, warmup=3, clock="wall", log_interval=1,
                      extra=None):
    """A function running one measured repeat through gptlab's trainer -> (non-pad tokens/s, ms/step).

    Timed from the end of step `warmup` to the end of the run, from the trainer's own history (its
    training time excludes nothing else here: no evaluation, no checkpoint until the end). On a
    GPU the loss is read every `log_interval` steps, the loop's only host sync.
    """
    from gptlab.data import Corpus
    from gptlab.training.config import RUN_PRESETS
    from gptlab.training.tasks.causal_lm import train

    corpus = Corpus(records=data.train_recs, source="wine-reviews train split", skipped=0)

    def run() -> tuple[float, float]:
        cfg = RUN_PRESETS[preset]()
        cfg.data.val_fraction = 0.0  # the corpus is the training split already; no evaluation
        t = cfg.train
        t.out = tempfile.mkdtemp(prefix="gptlab_tput_")
        t.batching, t.precision, t.batch_size, t.compile, t.device, t.threads = batching, precision, batch_size, compile, device, threads
        t.max_steps, t.log_interval, t.eval_interval, t.save_interval = warmup + steps, log_interval, 0, 0
        t.progress, t.tensorboard, t.sample_prompt = False, False, ""
        for k, v in (extra or {}).items():
            section, field = k.split(".")
            setattr(getattr(cfg, section), field, v)
        res = train(cfg, corpus)
        recs = [h for h in res.history if "loss" in h and h["step"] >= warmup]
        if len(recs) < 2:
            raise SystemExit(f"{name}: too few measured steps ({steps}) for log interval {log_interval}")
        clock_key = "train_time" if clock == "wall" else "train_cpu_time"
        seconds = recs[-1][clock_key] - recs[0][clock_key]
        return (recs[-1]["tokens"] - recs[0]["tokens"]) / seconds, 1000 * seconds / (recs[-1]["step"] - recs[0]["step"])
    run.label = name
    return run


def keras_contestant(name: str, keras, data, *, batch_size=32, steps=30, warmup=3, clock="wall", bf16=False):
    import tensorflow as tf

    from gptlab.training.batches import BatchPlan
    if bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = keras_notebook_model(keras, data.tok.vocab_size)
    if bf16:
        keras.mixed_precision.set_global_policy("float32")
    # The same batches gptlab's `pad` plan makes in epoch 0, as the notebook pads them.
    rows = BatchPlan(data.train_seqs, batch_size, 80, 0, "pad", 1337).epoch(0)
    order = np.concatenate(rows[: warmup + steps])
    x, y = padded([data.train_seqs[i] for i in order])
    nonpad = (y != 0).reshape(-1, batch_size, y.shape[1]).sum(axis=(1, 2))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()
    model.fit(ds.take(warmup), epochs=1, verbose=0)  # traces and XLA-compiles the train step

    def run() -> tuple[float, float]:
        timer = StepTimer(keras)
        model.fit(ds.skip(warmup), epochs=1, verbose=0, callbacks=[timer])
        times = np.array(timer.times if clock == "wall" else timer.cpu_times)
        return float(nonpad[warmup:warmup + len(times)].sum() / times.sum()), 1000 * float(times.mean())
    run.label = name
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=WINE_CSV)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="measured steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both frameworks (0 = their default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or the process's CPU time (steadier on a shared machine; use with --threads 1)")
    p.add_argument("--no-keras", action="store_true")
    p.add_argument("--keras-bf16", action="store_true", help="also Keras with the mixed_bfloat16 policy")
    p.add_argument("--compile", action="store_true", help="also gptlab with torch.compile")
    p.add_argument("--only", default="", help="comma-separated contestant names to run")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    set_threads(args.threads, tensorflow=not args.no_keras)

    print(f"{cpu_name()}; {load_note()}; batch {args.batch_size} x 80; {args.steps} steps x {args.repeats} repeats; "
          f"threads {args.threads or 'default'}; {args.clock} clock", flush=True)
    data = load_wine(args.data)
    common = dict(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, clock=args.clock)
    g = dict(common, device=args.device, threads=args.threads)
    runs = []
    keras = None if args.no_keras else import_keras()
    if keras is not None:
        runs.append(keras_contestant("keras-tf fp32 (the notebook)", keras, data, **common))
        if args.keras_bf16:
            runs.append(keras_contestant("keras-tf mixed_bfloat16", keras, data, bf16=True, **common))
    runs += [
        gptlab_contestant("gptlab book pad fp32", data, batching="pad", precision="fp32", **g),
        gptlab_contestant("gptlab book pad auto", data, batching="pad", precision="auto", **g),
        gptlab_contestant("gptlab book bucket auto", data, batching="bucket", precision="auto", **g),
    ]
    if args.compile:
        # Padded batches: one shape, one compilation (buckets would recompile per length).
        runs.append(gptlab_contestant("gptlab book pad auto compile", data, batching="pad", precision="auto",
                                      compile=True, **g))
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        runs = [r for r in runs if any(k in r.label for k in keep)]

    results: dict[str, list[tuple[float, float]]] = {r.label: [] for r in runs}
    for rep in range(args.repeats):
        for r in runs:
            tps, ms = r()
            results[r.label].append((tps, ms))
            print(f"  repeat {rep + 1}: {r.label:34s} {tps:9,.0f} non-pad tokens/s  {ms:7.1f} ms/step  ({load_note()})", flush=True)

    print(f"\nmedians of {args.repeats} repeats (non-padding tokens/s; ms per step of {args.batch_size} sequences):")
    base = next((k for k in results if k.startswith("keras-tf fp32")), None)
    summary = {}
    for k, v in results.items():
        tps, ms = median([a for a, _ in v]), median([b for _, b in v])
        ratio = f"  {tps / median([a for a, _ in results[base]]):.2f}x Keras" if base else ""
        summary[k] = {"tokens_per_s": tps, "ms_per_step": ms, "repeats": v}
        print(f"  {k:34s} {tps:9,.0f} tok/s  {ms:7.1f} ms/step{ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "args": vars(args), "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
