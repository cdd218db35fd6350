"""Generation speed: gptlab (KV cache) vs the notebook's method vs Hugging Face `generate`.

The course notebook's model (`book` preset: 1 post-LN block, 2 heads of 256, vocab 10,000, context 80)
with random weights samples 80-token texts (a 4-token prompt + 76 new tokens) at batch 1 and 32:

- gptlab:      `gptlab.infer.generate.generate_steps`, KV cache, output layer on the last position only;
               one column per weight format (--dtypes): fp32, bf16, and int8 (fp32 with an int8
               output layer, model/quant.py). At batch 1 in fp32 and int8 its steps are one C call
               each where a C compiler is found (infer/native.py; the header says whether it is on).
- recompute:   the notebook's loop in PyTorch: re-run the whole model on the growing text every
               step, logits for every position (as Keras' `model.predict` returns them), same sampler.
- transformers: `GPT2LMHeadModel.generate(do_sample=True, use_cache=True)` on a GPT-2 of the same
               size (1 layer, d_model 256, 2 heads, d_ff 256, vocab 10,000, context 80); skipped
               with a message when `transformers` is not installed.
- forward only: the same cached forward passes (fp32, the same step function as gptlab's column)
               with no sampling at all: the ceiling for any sampler on gptlab's fp32 model code, to
               show what the generation loop itself costs.

Each figure is the median of --repeats runs, in new tokens per second (batch x new tokens / time);
ratios are against the recompute baseline measured in the same run. Then, at batch 1, where a step's
time goes (microseconds per new token, same run), for the native step and torch's path
(`native.off()`): torch's output layer alone (its matrix-vector product once per token: reading
its weights is the floor of any fp32 step), the cached forward passes, and the whole generation
loop. Last, the cost of an explanation (`LoadedModel.explain`:
attention and top candidates captured at every step) against plain generation
(`LoadedModel.generate`) of the same tokens, with the fp32 weights as `gptlab.load` holds them.

    python benchmarks/generate_speed.py [--repeats 7] [--batches 1 32] [--dtypes fp32 bf16 int8] [--threads N] [--clock wall|cpu]
    python benchmarks/generate_speed.py --compare-threads 1 2   # batch 1, fp32, wall clock: only this comparison

On a machine shared with other jobs, intra-op threads at batch 1 can cost far more than they
give (each parallel region waits for all its threads to be scheduled): --compare-threads times
the same batch-1 generation at each thread count, alternating within one process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptlab.api import LoadedModel, with_dtype  # noqa: E402
from gptlab.data.tokenizer import Tokenizer  # noqa: E402
from gptlab.errors import run_script  # noqa: E402
from gptlab.infer import native  # noqa: E402
from gptlab.infer.generate import generate_steps  # noqa: E402
from gptlab.infer.sampling import SamplingConfig, make_generator, sample  # noqa: E402
from gptlab.model import GPT, book  # noqa: E402

PROMPT_LEN, NEW_TOKENS, VOCAB = 4, 76, 10000


CLOCK = time.perf_counter


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool, lazy inits
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def run_gptlab(model, prompts_BxT: torch.Tensor, new_tokens: int) -> None:
    cfg = SamplingConfig(max_new_tokens=new_tokens, seed=0)
    for _ in generate_steps(model, prompts_BxT.tolist(), cfg, eot_id=None):
        pass


@torch.inference_mode()
def run_forward_only(model, prompts_BxT: torch.Tensor, new_tokens: int) -> None:
    """The ceiling for any sampler on this model code: the cached forward passes alone."""
    B, T = prompts_BxT.shape
    cache = model.new_cache(B)
    model(prompts_BxT, cache=cache, last_only=True)
    tokens_B = prompts_BxT[:, -1]
    decode = native.decoder(model, B) or model.decoder()  # as generate_steps does: built once per generation
    for i in range(new_tokens - 1):
        decode(tokens_B, torch.full((B,), T + i), cache)


@torch.inference_mode()
def run_output_layer(model, B: int, new_tokens: int) -> None:
    """The output layer alone, once per new token: at batch 1 the step's one large weight read."""
    h_BxC = torch.randn(B, model.cfg.d_model, dtype=next(model.parameters()).dtype)
    for _ in range(new_tokens):
        model.lm_head(h_BxC)


@torch.inference_mode()
def run_recompute(model, prompts_BxT: torch.Tensor, new_tokens: int) -> None:
    cfg, g = SamplingConfig(seed=0), make_generator(0)
    ids_BxT = prompts_BxT
    for _ in range(new_tokens):
        logits_BxTxV = model(ids_BxT).logits
        tokens_B, _ = sample(logits_BxTxV[:, -1], cfg, g)
        ids_BxT = torch.cat([ids_BxT, tokens_B[:, None]], dim=1)


def as_dtype(model: GPT, dtype: str) -> GPT:
    """A copy of `model` with its weights as `gptlab.load(..., dtype=)` would hold them."""
    return cast(GPT, with_dtype(copy.deepcopy(model), dtype))


def hf_model(seed: int = 0):
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None, "transformers is not installed (pip install transformers): skipped"
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=80, n_embd=256, n_layer=1, n_head=2, n_inner=256,
                     activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=2, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval(), f"transformers {transformers.__version__}"


@torch.inference_mode()
def run_hf(model, prompts_BxT: torch.Tensor, new_tokens: int) -> None:
    model.generate(prompts_BxT, attention_mask=torch.ones_like(prompts_BxT), do_sample=True, top_k=0,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True, pad_token_id=0)


def word_tokenizer(vocab: int) -> Tokenizer:
    """A word-level tokenizer of exactly `vocab` entries, so LoadedModel can be timed end to end."""
    words = [f"w{i}" for i in range(vocab - 3)]
    return Tokenizer.train([" ".join(words)], kind="word", vocab_size=vocab)


def compare_threads(counts: list[int], repeats: int, new_tokens: int) -> None:
    """Batch-1 fp32 generation at each thread count, the counts alternating so each sees the same load."""
    torch.manual_seed(0)
    model = GPT(book(VOCAB)).eval()
    prompts = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            torch.set_num_threads(n)
            run_gptlab(model, prompts, 4)  # warm-up at this count
            t0 = time.perf_counter()
            run_gptlab(model, prompts, new_tokens)
            times[n].append(time.perf_counter() - t0)
    print(f"batch 1, fp32, {new_tokens} new tokens, wall clock, median of {repeats}; load average {load:.1f} "
          f"on {os.cpu_count()} CPUs at start")
    for n, ts in times.items():
        print(f"  {n} thread(s): {new_tokens / statistics.median(ts):8,.0f} tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16", "int8"], default=["fp32", "bf16", "int8"],
                    help="gptlab's weights, one column each (as `gptlab generate --dtype`); the recompute "
                         "baseline, transformers and forward-only stay fp32")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time, with --threads 1 a fairer figure on a machine shared "
                         "with other jobs (wall time there measures the queue, not the code)")
    ap.add_argument("--compare-threads", type=int, nargs="+", default=None, metavar="N",
                    help="only time batch-1 fp32 generation (wall clock) at each of these torch thread counts, "
                         "alternating in one process")
    args = ap.parse_args()
    if args.compare_threads:
        compare_threads(args.compare_threads, args.repeats, args.new_tokens)
        return
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            ap.error("--clock cpu needs --threads 1 (CPU time adds up over threads)")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(book(VOCAB)).eval()
    variants = {d: as_dtype(model, d) for d in args.dtypes}  # the same weights in each format
    loaded_fp32 = variants.get("fp32") or as_dtype(model, "fp32")  # the forward-only ceiling's model
    hf, hf_note = hf_model()
    print(f"book preset, random weights: {model.num_params():,} parameters; prompt {PROMPT_LEN} + {args.new_tokens} new tokens")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; {hf_note}")
    print(f"native decoding step (batch 1, fp32 / int8): {native.status()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"median of {args.repeats} runs, new tokens per second (x: against recompute), {args.clock} clock; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs at start\n")
    header = f"{'batch':>5}  {'recompute':>10}" + "".join(f"  {'gptlab ' + d:>12}  {'x':>6}" for d in variants)
    print(header + f"  {'transformers':>12}  {'x':>6}  {'forward only':>12}  {'x':>6}")
    for B in args.batches:
        prompts = torch.randint(3, VOCAB, (B, PROMPT_LEN), generator=torch.Generator().manual_seed(B))
        n = B * args.new_tokens
        base = n / median_time(lambda p=prompts: run_recompute(model, p, args.new_tokens), args.repeats)
        row = f"{B:>5}  {base:>10,.0f}"
        for m in variants.values():
            ours = n / median_time(lambda m=m, p=prompts: run_gptlab(m, p, args.new_tokens), args.repeats)
            row += f"  {ours:>12,.0f}  {ours / base:>5.1f}x"
        if hf is not None:
            theirs = n / median_time(lambda p=prompts: run_hf(hf, p, args.new_tokens), args.repeats)
            row += f"  {theirs:>12,.0f}  {theirs / base:>5.1f}x"
        else:
            row += f"  {'skipped':>12}  {'':>6}"
        ceiling = n / median_time(lambda p=prompts: run_forward_only(loaded_fp32, p, args.new_tokens), args.repeats)
        row += f"  {ceiling:>12,.0f}  {ceiling / base:>5.1f}x"
        print(row, flush=True)

    if 1 in args.batches:
        prompts = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
        us = 1e6 / args.new_tokens
        print("\nbatch 1, microseconds per new token (median of --repeats): torch's output layer alone / cached "
              "forward passes / whole generation loop")
        for d, m in variants.items():
            head = median_time(lambda m=m: run_output_layer(m, 1, args.new_tokens), args.repeats) * us
            for path in ("native", "torch"):
                if path == "native" and native.decoder(m, 1) is None:
                    continue
                with contextlib.nullcontext() if path == "native" else native.off():
                    fwd = median_time(lambda m=m, p=prompts: run_forward_only(m, p, args.new_tokens), args.repeats) * us
                    whole = median_time(lambda m=m, p=prompts: run_gptlab(m, p, args.new_tokens), args.repeats) * us
                print(f"  {d:>5} {path:>6}: {head:6.0f} / {fwd:6.0f} / {whole:6.0f}  ({1e6 / whole:,.0f} tokens/s)",
                      flush=True)

    # fp32 as `gptlab.load` holds it (on a CPU: linear weights column-major, model/layout.py).
    lm = LoadedModel(as_dtype(model, "fp32"), word_tokenizer(VOCAB), {"kind": "gpt", "model": model.cfg.to_dict()})
    prompt = " ".join(f"w{i}" for i in range(PROMPT_LEN))
    plain = median_time(lambda: lm.generate(prompt, max_new_tokens=args.new_tokens, seed=0), args.repeats)
    explained = median_time(lambda: lm.explain(prompt, steps=args.new_tokens, seed=0), args.repeats)
    print(f"\nexplain vs plain generate, batch 1, {args.new_tokens} tokens through LoadedModel: "
          f"{explained * 1e3:.1f} ms vs {plain * 1e3:.1f} ms = {explained / plain:.2f}x")


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
