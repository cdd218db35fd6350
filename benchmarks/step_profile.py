"""Where a `book` training step's time goes on the CPU, and what each of gptlab's changes saves.

    python benchmarks/step_profile.py --threads 1                # bf16, padded batches of real reviews
    python benchmarks/step_profile.py --threads 1 --precision fp32

Variants, timed interleaved on the same batches (process CPU time: steady on a shared machine):
  now          gptlab as it is
  plain-ce     the output layer + loss as `F.cross_entropy(head(h).float(), t)` (chunked, autograd)
  sdpa         attention through torch's fused scaled_dot_product_attention on the CPU too
  loop-adam    torch's default (for-loop) Adam instead of the fused one
  before       all three: the step as gptlab ran it before these changes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WINE_CSV, cpu_name, load_note, load_wine  # noqa: E402

from gptlab.errors import run_script  # noqa: E402


def plain_nll(hidden_NxC, head, targets_N, chunk=8192, ignore_index=None):
    total = hidden_NxC.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden_NxC.shape[0], chunk):
        total = total + F.cross_entropy(head(hidden_NxC[i:i + chunk]).float(), targets_N[i:i + chunk], reduction="sum")
    return total


VARIANTS = {"now": set(), "plain-ce": {"plain-ce"}, "sdpa": {"sdpa"}, "loop-adam": {"loop-adam"},
            "before": {"plain-ce", "sdpa", "loop-adam"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=WINE_CSV)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--batching", choices=("pad", "bucket"), default="pad")
    p.add_argument("--steps", type=int, default=8, help="steps per variant per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import gptlab.model.gpt as gpt_mod
    from gptlab.model import GPT, book
    from gptlab.training.batches import BatchPlan

    data = load_wine(args.data)
    plan = BatchPlan(data.train_seqs, 32, 80, data.tok.pad_id, args.batching, 0)
    rows = plan.epoch(0)
    amp = args.precision == "bf16"
    names = args.variants.split(",")
    fused_nll = gpt_mod.token_nll
    models = {}
    for name in names:
        torch.manual_seed(0)
        cfg = book(data.tok.vocab_size)
        cfg.attn_impl = "sdpa" if "sdpa" in VARIANTS[name] else "auto"
        m = GPT(cfg).train()
        fused = "loop-adam" not in VARIANTS[name]
        models[name] = (m, torch.optim.Adam(m.parameters(), lr=1e-3, eps=1e-7, fused=fused or None))
    # With the fused loss the output layer's backward is done in its forward column.
    parts = ("forward body", "output layer + loss", "backward", "optimizer")
    times = {n: {k: [] for k in parts} for n in names}
    tokens = {n: 0 for n in names}
    print(f"{cpu_name()}; {load_note()}; {args.threads} thread(s); {args.precision}; {args.batching} batches of 32", flush=True)
    step = 0
    for rep in range(args.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotated: no variant always first
            m, opt = models[name]
            flags = VARIANTS[name]
            gpt_mod.token_nll = plain_nll if "plain-ce" in flags else fused_nll
            for i in range(args.steps):
                b = plan.make(rows[(rep * args.steps + i) % len(rows)])
                c0 = time.process_time()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    x = m.tok_emb(b.x_BxT) + m.pos_emb(torch.arange(b.x_BxT.shape[1])[None])
                    for blk in m.blocks:
                        x, _, _ = blk(x)
                    h = m.ln_f(x)
                    c1 = time.process_time()
                    keep = b.y_BxT != -100
                    nll = gpt_mod.token_nll(h[keep], m.lm_head, b.y_BxT[keep])
                c2 = time.process_time()
                (nll / b.n_tokens).backward()
                c3 = time.process_time()
                opt.step()
                opt.zero_grad(set_to_none=True)
                c4 = time.process_time()
                if i >= 2:  # the first steps after switching variant warm caches and allocators up
                    for k, v in zip(parts, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                        times[name][k].append(v)
                    tokens[name] += b.n_tokens
                step += 1
    gpt_mod.token_nll = fused_nll
    print(f"\nCPU ms per step (medians; {(args.steps - 2) * args.repeats} steps each):")
    print(f"  {'variant':10s} " + " ".join(f"{k:>20s}" for k in parts) + f" {'total':>8s} {'non-pad tok/s':>14s}")
    for name in names:
        med = [1000 * statistics.median(times[name][k]) for k in parts]
        total_s = sum(sum(times[name][k]) for k in parts)
        print(f"  {name:10s} " + " ".join(f"{v:20.1f}" for v in med) + f" {sum(med):8.1f} {tokens[name] / total_s:14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
