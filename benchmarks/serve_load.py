"""Load test of `gptlab serve` on loopback: latency, throughput, memory, and behaviour past capacity.

    python benchmarks/serve_load.py                      # a random `small`-preset model, made here
    python benchmarks/serve_load.py --model runs/demo    # a trained model folder

First the ceiling: `generate_steps` of the same model at batch --clients in this process (median
of --repeats, measured before the servers and again after them; their mean is the ceiling). Then,
against a `gptlab serve` subprocess on 127.0.0.1 per path (--paths: `off`, the
old path where each request decodes alone on one of --workers threads; `on`, the engine with --slots
decoded together), the same requests in the same order:
  1. warm-up: --warmup requests, then the server's RSS is read from /proc;
  2. load: --requests completions from --clients concurrent clients (every --stream-every-th one
     streamed); counts statuses, p50/p95 latency, time to first token of the streamed ones,
     generated tokens per second, and RSS growth;
  3. flood (engine only): --flood requests at once, more than slots + queue: the excess must get
     429, none a 5xx, and the server must still answer afterwards.
The summary gives tokens/s of the engine over the old path (target 10x) and over offline (50%).
Exits 1 when a check fails (any 5xx or transport error, RSS growth >= 10%, no 429 in the flood).
Every request has a timeout and the number of requests is fixed, so the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptlab.errors import run_script  # noqa: E402

LINES = [
    "wine review : germany : mosel : riesling : a crisp , dry wine with lemon and green apple .",
    "wine review : france : bordeaux : red blend : dark berries , oak and a long finish .",
    "wine review : us : california : zinfandel : ripe cherry , pepper and a soft finish .",
    "wine review : italy : tuscany : sangiovese : bright cherry , herbs and firm tannins .",
]
PROMPTS = ["wine review : germany", "wine review : france : bordeaux", "wine review : us : california : zinfandel :",
           "wine review : italy", "a crisp , dry wine with", "dark berries , oak and"]


def make_model(folder: Path, preset: str) -> Path:
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.data.tokenizer import Tokenizer
    from gptlab.model import GPT
    from gptlab.model.config import PRESETS

    tok = Tokenizer.train(LINES * 3)
    torch.manual_seed(0)
    cfg = PRESETS[preset](tok.vocab_size)
    save_model(folder, GPT(cfg), tok, {"kind": "gpt", "model": cfg.to_dict()})
    return folder


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(models: Path, args, engine: str) -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkstemp(prefix="gptlab-serve-load-", suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "gptlab", "serve", "--models", str(models), "--port", "0", "--log-level", "warning",
           "--workers", str(args.workers), "--queue", str(args.queue), "--max-tokens", str(max(args.max_tokens, 16)),
           "--engine", engine, "--slots", str(args.slots), "--threads", str(args.threads)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        m = re.search(r"at (http://[\d.]+:\d+)/", log.read_text(errors="replace"))
        if m:
            return proc, m.group(1), log
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"gptlab serve did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


WORDS = sorted(set(" ".join(LINES).split()))


def pick_prompt(rng: random.Random, distinct: bool) -> str:
    """One of PROMPTS (a class asking the same few things: the engine keeps their prefills), or with
    `distinct` one of them followed by 4 random words (~800,000 tails: every prompt new)."""
    prompt = rng.choice(PROMPTS)
    return prompt + " " + " ".join(rng.choice(WORDS) for _ in range(4)) if distinct else prompt


async def one_request(client: httpx.AsyncClient, model: str, max_tokens: int, stream: bool, rng: random.Random,
                      distinct: bool = False) -> dict:
    body = {"model": model, "prompt": pick_prompt(rng, distinct), "max_tokens": max_tokens,
            "temperature": rng.choice([0.0, 0.7, 1.0, 1.3]), "seed": rng.randrange(1 << 30)}
    t0 = time.perf_counter()
    try:
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            tokens, status, done, ttft = 0, None, False, None
            async with client.stream("POST", "/v1/completions", json=body) as r:
                status = r.status_code
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            status = 599  # an error inside a 200 stream counts as a server failure
                        elif chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        elif ttft is None and chunk.get("choices"):
                            ttft = time.perf_counter() - t0  # the first piece of text (or the end)
            if status == 200 and not done:
                status = 598  # stream cut short
            return {"status": status, "latency": time.perf_counter() - t0, "tokens": tokens, "ttft": ttft}
        else:
            r = await client.post("/v1/completions", json=body)
            status = r.status_code
            tokens = r.json()["usage"]["completion_tokens"] if status == 200 else 0
    except httpx.HTTPError as e:
        return {"status": None, "error": f"{type(e).__name__}: {e}", "latency": time.perf_counter() - t0, "tokens": 0}
    return {"status": status, "latency": time.perf_counter() - t0, "tokens": tokens}


async def run_clients(url: str, model: str, n_requests: int, n_clients: int, max_tokens: int,
                      stream_every: int, seed: int, distinct: bool = False) -> tuple[list[dict], float]:
    rng = random.Random(seed)
    todo = list(range(n_requests))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            while todo:
                i = todo.pop()
                stream = stream_every > 0 and i % stream_every == 0
                results.append(await one_request(client, model, max_tokens, stream, rng, distinct))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(n_clients)))
        return results, time.perf_counter() - t0


async def flood(url: str, model: str, n: int, max_tokens: int) -> list[dict]:
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(one_request(client, model, max_tokens, False, rng) for _ in range(n)))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(name: str, results: list[dict]) -> dict:
    statuses: dict = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    failures = sum(1 for r in results if r["status"] is None or r["status"] >= 500)
    print(f"{name}: {len(results)} requests, statuses {dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}, "
          f"5xx or transport errors: {failures}")
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        print(f"  first transport error: {errors[0]}")
    return {"statuses": statuses, "failures": failures}


def offline_speed(model_dir: Path, batch: int, new_tokens: int, threads: int, repeats: int,
                  distinct: bool = False) -> tuple[float, float]:
    """New tokens per second of `generate_steps` at `batch` in this process, per wall second and per CPU
    second: the ceiling the server is measured against."""
    import torch

    from gptlab.api import load
    from gptlab.infer.generate import generate_steps
    from gptlab.infer.sampling import SamplingConfig

    torch.set_num_threads(threads)
    lm = load(model_dir)
    rng = random.Random(2)
    prompts = [lm.encode(pick_prompt(rng, True) if distinct else PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(sum(step.active) for step in generate_steps(lm.model, prompts, cfg))  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return n / statistics.median(times), n / statistics.median(cpu)


def load_phase(label: str, models: Path, name: str, args, engine: str, flood_it: bool) -> tuple[bool, dict]:
    """Warm-up, load and (optionally) flood against one server; (checks passed, figures)."""
    proc, url, log = start_server(models, args, engine)
    ok, fig = True, {}
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(100):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
        print(f"\n== {label}: server {url}, pid {proc.pid}, --engine {engine}, workers {args.workers}, "
              f"slots {args.slots}, queue {args.queue}, threads {args.threads}")
        warm, _ = asyncio.run(run_clients(url, name, args.warmup, args.clients, args.max_tokens, args.stream_every, 0,
                                          args.distinct_prompts))
        ok &= summarize("warm-up", warm)["failures"] == 0
        rss0, cpu0 = rss_mib(proc.pid), cpu_s(proc.pid)
        results, wall = asyncio.run(run_clients(url, name, args.requests, args.clients, args.max_tokens,
                                                args.stream_every, 1, args.distinct_prompts))
        rss1, cpu = rss_mib(proc.pid), cpu_s(proc.pid) - cpu0
        s = summarize("load", results)
        fig["failures"] = s["failures"]
        ok &= s["failures"] == 0
        good = [r for r in results if r["status"] == 200]
        lat = [r["latency"] for r in good]
        ttft = [r["ttft"] for r in good if r.get("ttft") is not None]
        tokens = sum(r["tokens"] for r in good)
        growth = (rss1 - rss0) / rss0
        fig.update(tok_s=tokens / wall, tok_cpu_s=tokens / cpu, growth=growth)
        print(f"  server CPU {cpu:.1f} s in {wall:.1f} s of load: {tokens / cpu:.0f} tokens per CPU second")
        if lat:
            fig.update(p50=pct(lat, 50), p95=pct(lat, 95))
            print(f"  latency p50 {pct(lat, 50) * 1000:.0f} ms, p95 {pct(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms; "
                  f"{len(good) / wall:.1f} requests/s, {tokens / wall:.0f} generated tokens/s ({tokens} tokens in {wall:.1f} s)")
        if ttft:
            fig.update(ttft50=pct(ttft, 50), ttft95=pct(ttft, 95))
            print(f"  time to first token (streamed requests, {len(ttft)}): p50 {pct(ttft, 50) * 1000:.0f} ms, "
                  f"p95 {pct(ttft, 95) * 1000:.0f} ms")
        print(f"  server RSS after warm-up {rss0:.1f} MiB, after load {rss1:.1f} MiB: growth {100 * growth:+.1f}% (limit +10%)")
        ok &= growth < 0.10 and len(good) == args.requests
        if flood_it:
            flooded = asyncio.run(flood(url, name, args.flood, args.max_tokens))
            capacity = (args.slots if engine == "on" else args.workers) + args.queue
            f = summarize(f"flood ({args.flood} at once, capacity {capacity})", flooded)
            n429 = f["statuses"].get(429, 0)
            fig.update(flood_429=n429, flood_5xx=f["failures"])
            ok &= f["failures"] == 0 and n429 > 0
            with httpx.Client(base_url=url, timeout=60) as c:
                alive = c.get("/healthz").json()
                after = c.post("/v1/completions", json={"model": name, "prompt": "wine review", "max_tokens": 4})
                metrics = c.get("/metrics").text if engine == "on" else ""
            print(f"  after the flood: /healthz {alive['status']}, in flight {alive['in_flight']}, "
                  f"a completion -> {after.status_code}; server RSS {rss_mib(proc.pid):.1f} MiB")
            ok &= after.status_code == 200 and proc.poll() is None
            if metrics:
                shown = [ln for ln in metrics.splitlines() if ln.startswith(("gptlab_generated_tokens_total",
                         "gptlab_requests_total", "gptlab_time_to_first_token_seconds_count", "gptlab_slots_in_use"))]
                print("  /metrics: " + "; ".join(shown))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not ok:
            print("server log (tail):\n" + log.read_text(errors="replace")[-3000:])
        log.unlink(missing_ok=True)
    return ok, fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a trained model folder (default: a random model of --preset, made here)")
    ap.add_argument("--preset", default="small", help="preset of the random model (tiny, small, book)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--stream-every", type=int, default=5, help="every n-th request streams (0: none)")
    ap.add_argument("--warmup", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="gate workers (the old path's concurrent generations)")
    ap.add_argument("--slots", type=int, default=32, help="the engine's slots")
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="torch threads of both servers and of the offline run (default: half the cores)")
    ap.add_argument("--flood", type=int, default=300, help="requests sent at once in the flood phase (engine)")
    ap.add_argument("--repeats", type=int, default=3, help="offline runs (median)")
    ap.add_argument("--distinct-prompts", action="store_true",
                    help="every request's prompt new (one of the prompts + 4 random words), so no prefill is reused")
    ap.add_argument("--paths", nargs="+", default=["off", "on"], choices=["off", "on"],
                    help="which server paths to load: off = one request per worker (the old path), on = the engine")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gptlab-serve-load-"))
    if args.model:
        models, name = Path(args.model).resolve(), Path(args.model).resolve().name
    else:
        name = f"random-{args.preset}"
        models = make_model(tmp / name, args.preset)
    print(f"model {name}, {args.requests} requests x {args.max_tokens} tokens from {args.clients} clients, "
          f"{os.cpu_count()} CPU cores")
    offline, offline_cpu = offline_speed(models, args.clients, args.max_tokens, args.threads, args.repeats,
                                         args.distinct_prompts)
    print(f"offline generate_steps at batch {args.clients}: {offline:.0f} new tokens/s, {offline_cpu:.0f} per CPU "
          f"second (median of {args.repeats}, {args.threads} torch threads)")
    ok, figs = True, {}
    for engine in args.paths:
        label = "engine (continuous batching)" if engine == "on" else "old path (each request alone on a worker)"
        passed, figs[engine] = load_phase(label, models, name, args, engine, flood_it=engine == "on")
        ok &= passed
    # Measured again after the servers: this machine's speed drifts by up to 1.5x over minutes, and a
    # ceiling measured once, before, moved the served ratio by as much. The mean of both stands.
    after, after_cpu = offline_speed(models, args.clients, args.max_tokens, args.threads, args.repeats,
                                     args.distinct_prompts)
    print(f"offline generate_steps at batch {args.clients}, again: {after:.0f} new tokens/s, {after_cpu:.0f} per CPU "
          f"second; the mean of both runs is the ceiling: {(offline + after) / 2:.0f}")
    offline, offline_cpu = (offline + after) / 2, (offline_cpu + after_cpu) / 2
    print("\n== summary")
    for engine, fig in figs.items():
        print(f"  --engine {engine}: {fig.get('tok_s', 0):.0f} tokens/s = {fig.get('tok_s', 0) / offline:.2f} x offline "
              f"batch {args.clients}; p50 {fig.get('p50', 0) * 1000:.0f} ms, p95 {fig.get('p95', 0) * 1000:.0f} ms, "
              f"TTFT p50 {fig.get('ttft50', 0) * 1000:.0f} ms, p95 {fig.get('ttft95', 0) * 1000:.0f} ms; "
              f"5xx {fig.get('failures')}; RSS growth {100 * fig.get('growth', 0):+.1f}%; "
              f"{fig.get('tok_cpu_s', 0):.0f} tokens per server CPU second = {fig.get('tok_cpu_s', 0) / offline_cpu:.2f} x offline's")
    if "on" in figs and "off" in figs:
        ratio = figs["on"]["tok_s"] / figs["off"]["tok_s"]
        print(f"  engine / old path: {ratio:.1f}x tokens/s (target >= 10x); engine / offline batch {args.clients}: "
              f"{figs['on']['tok_s'] / offline:.0%} (target >= 50%)")
    # On a machine shared with other jobs the server gets less CPU than the offline run did: per CPU
    # second, the comparison does not depend on what else runs.
    if "on" in figs:
        print(f"  per CPU second: engine / offline batch {args.clients}: {figs['on']['tok_cpu_s'] / offline_cpu:.0%}"
              + (f", engine / old path: {figs['on']['tok_cpu_s'] / figs['off']['tok_cpu_s']:.1f}x" if "off" in figs else ""))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
