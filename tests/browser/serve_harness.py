"""Shared by the `gptlab serve` tests: tiny random models on disk, and a live server in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LINES = [
    "wine review : germany : mosel : riesling : a crisp , dry wine with lemon and green apple .",
    "wine review : france : bordeaux : red blend : dark berries , oak and a long finish .",
    "wine review : us : california : zinfandel : ripe cherry , pepper and a soft finish .",
    "wine review : italy : tuscany : sangiovese : bright cherry , herbs and firm tannins .",
]


def make_model(folder: Path, seed: int = 0) -> Path:
    """A random tiny GPT with a word tokenizer: enough to exercise every code path, in milliseconds."""
    import torch

    from gptlab.checkpoint import save_model
    from gptlab.data.tokenizer import Tokenizer
    from gptlab.model import GPT
    from gptlab.model.config import tiny

    tok = Tokenizer.train(LINES * 3)
    torch.manual_seed(seed)
    cfg = tiny(tok.vocab_size)
    save_model(folder, GPT(cfg), tok, {"kind": "gpt", "model": cfg.to_dict()})
    return folder


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen
    log: Path
    models: Path  # the --models folder it serves

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def live_server(models_dir: Path, *args: str, timeout: float = 90.0):
    """`gptlab serve` on a free loopback port (--port 0; it prints the address), stopped on exit."""
    log = Path(tempfile.mkstemp(prefix="gptlab-serve-", suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "gptlab", "serve", "--models", str(models_dir), "--port", "0",
           "--log-level", "warning", *args]
    with open(log, "wb") as out:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url, deadline = None, time.monotonic() + timeout
        while url is None:
            m = re.search(r"at (http://[\d.]+:\d+)/", log.read_text(errors="replace"))
            if m:
                url = m.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gptlab serve did not start (exit {proc.poll()}):\n{log.read_text(errors='replace')}")
            else:
                time.sleep(0.1)
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gptlab serve never answered /healthz:\n{log.read_text(errors='replace')}") from None
                time.sleep(0.1)
        yield LiveServer(url, proc, log, models_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)
