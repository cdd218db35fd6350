"""Nothing lost, nothing wrong: training killed at any moment resumes to exactly the weights of a
run never interrupted.

- SIGKILL at seeded random moments, in real `python -m gptlab` processes (a GPT and a translator,
  dropout on, a checkpoint every step): after a random delay, the moment a checkpoint's temporary
  folder appears, and at two chosen points of the write (its manifest written but the folder not
  yet renamed; OUT's weights replaced but not yet its config.json). Every kill is followed by a
  `--resume`, and the last run's weights equal the uninterrupted run's exactly (torch.equal).
- SIGTERM (and a second one) landing in a step, an evaluation or a checkpoint write, for every
  family, in process: the run ends cleanly and resumes exactly.
- A checkpoint with a damaged or missing file: resume falls back to the one before, with one line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlab.checkpoint import unit
from gptlab.cli import main
from gptlab.training import loop

COMMON = ["--dropout", "0.1", "--batch-size", "8", "--save-interval", "1", "--log-interval", "1", "--seed", "7",
          "--threads", "1", "--device", "cpu", "--precision", "fp32", "--no-progress", "--no-tensorboard"]
GPT = ["train", "--preset", "tiny", "--builtin-size", "200", "--context-length", "24", "--sample-prompt", "",
       "--eval-interval", "4", "--ema", "0.9", *COMMON]
SEQ2SEQ = ["seq2seq", "train", "--preset", "tiny", "--max-number", "60", "--eval-pairs", "0", "--test-fraction", "0",
           "--eval-interval", "5", *COMMON]

# A child that stops itself at a chosen point, so every planned kill happens whatever the machine's
# load (a parent polling for the moment can miss it, and the run then ends unkilled):
# argv = mode, n, seed, OUT, then gptlab's arguments. At the n-th pass through the mode's point:
#   write             SIGKILL as soon as a checkpoint's temporary folder exists (mid-write);
#   manifest-written  SIGKILL after the manifest, before the folder's rename;
#   weights-copied    SIGKILL after OUT's weights were replaced, before its config.json;
#   delay / term      SIGKILL / SIGTERM at a random moment (0-50 ms) after a checkpoint completed.
CRASH_AT = r"""
import os, random, signal, sys, threading
mode, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), os.path.abspath(sys.argv[4])
rng, seen = random.Random(seed), [0]
def fire():
    os.kill(os.getpid(), signal.SIGTERM if mode == "term" else signal.SIGKILL)
def hit(later=False):
    seen[0] += 1
    if seen[0] == n:
        threading.Timer(rng.uniform(0.0, 0.05), fire).start() if later else fire()
real_mkdir, real_rename, real_replace = os.mkdir, os.rename, os.replace
def mkdir(path, *a, **k):
    real_mkdir(path, *a, **k)
    if mode == "write" and str(path).endswith(".tmp"):
        hit()
def rename(src, dst, *a, **k):
    if mode == "manifest-written" and str(src).endswith(".tmp") and os.path.isdir(src):
        hit()
    result = real_rename(src, dst, *a, **k)
    if mode in ("delay", "term") and str(src).endswith(".tmp") and os.path.isdir(dst):
        hit(later=True)
    return result
def replace(src, dst, *a, **k):
    real_replace(src, dst, *a, **k)
    if mode == "weights-copied" and os.path.abspath(dst) == os.path.join(out, "model.safetensors"):
        hit()
os.mkdir, os.rename, os.replace = mkdir, rename, replace
from gptlab.cli import main
sys.exit(main(sys.argv[5:]))
"""


@pytest.fixture(autouse=True)
def _restore_threads():
    """In-process runs pass --threads 1; the rest of the session keeps its own setting."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs by {float((wa[k] - wb[k]).abs().max()):.2e}"


def _history(out: Path) -> list[tuple]:
    """Every logged loss and evaluation, without the timings."""
    h = json.loads((out / "train_state.json").read_text())["history"]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in h]


def _temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _steps(out: Path) -> list[int]:
    return [u.step for u in unit.units(out / "checkpoints")]


def _reference(tmp_path: Path, argv: list[str], steps: int, name: str) -> Path:
    out = tmp_path / name
    assert main([*argv, "--max-steps", str(steps), "--out", str(out)]) == 0
    return out


# -- SIGKILL at random moments, in real processes ---------------------------------------------------
@dataclass
class Chain:
    """One run killed again and again, each time resumed."""
    argv: list[str]
    out: Path
    steps: int
    plan: list[str]              # how each process is killed, in order
    rng: random.Random
    kills: int = 0
    mid_write: int = 0           # kills that left a half-written checkpoint behind
    resumed: list[int] = field(default_factory=list)
    procs: int = 0

    def launch(self, mode: str, resume: bool) -> subprocess.Popen:
        args = [*self.argv, "--max-steps", str(self.steps), "--out", str(self.out), *(["--resume"] if resume else [])]
        prefix = [sys.executable, "-m", "gptlab"]
        if mode != "end":  # at most 4 steps per process: the chain never runs out of steps to kill in
            prefix = [sys.executable, "-c", CRASH_AT, mode, str(self.rng.randint(2, 3)), str(self.rng.randrange(2**31)),
                      str(self.out)]
        self.procs += 1
        with open(self.out.parent / f"{self.out.name}.{self.procs}.log", "w") as log:  # the child keeps its copy
            return subprocess.Popen([*prefix, *args], stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})

    def kill_when(self, proc: subprocess.Popen, mode: str) -> bool:
        """Wait for the child to stop itself as `mode` says; False if the run ended first."""
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{self.out.name}: a run hung ({mode})") from None
        return proc.returncode == (130 if mode == "term" else -signal.SIGKILL)

    def run(self) -> None:
        for i, mode in enumerate(self.plan):
            proc = self.launch(mode, resume=i > 0)
            stopped = self.kill_when(proc, mode)
            self._check_log(i)
            if not stopped:
                assert proc.returncode == 0, self._log(i)
                return
            if mode == "term":  # a clean stop: saved where it stopped, nothing half-written
                assert "interrupted at step" in self._log(i) and not _temporaries(self.out)
                continue
            self.kills += 1
            self.mid_write += bool(_temporaries(self.out))
            if mode == "weights-copied":  # the window hit: OUT's weights are newer than its config.json
                newest = unit.units(self.out / "checkpoints")[-1]
                assert (self.out / "model.safetensors").read_bytes() == (newest.path / "model.safetensors").read_bytes()
                assert json.loads((self.out / "config.json").read_text())["step"] < newest.step
        final = self.launch("end", resume=True)
        assert final.wait(timeout=120) == 0, self._log(len(self.plan))
        self._check_log(len(self.plan))

    def _log(self, i: int) -> str:
        return (self.out.parent / f"{self.out.name}.{i + 1}.log").read_text()

    def _check_log(self, i: int) -> None:
        text = self._log(i)
        assert "Traceback" not in text and "removed a damaged" not in text, text  # a kill never damages one
        if i > 0:
            assert "resuming from step" in text, text
            self.resumed.append(int(text.split("resuming from step ")[1].split()[0]))


# How each process of a chain ends, shuffled by the seed: 10 SIGKILLs (6 aimed at a checkpoint
# write) and one SIGTERM. Every process costs seconds of start-up (torch), hence so few.
GPT_PLAN = ["delay", "write", "manifest-written", "weights-copied", "term", "delay"]
SEQ2SEQ_PLAN = ["write", "delay", "manifest-written", "write", "delay"]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    rng = random.Random(20240611)
    chains = [Chain(GPT, tmp_path / "gpt", 40, rng.sample(GPT_PLAN, len(GPT_PLAN)), random.Random(rng.random())),
              Chain(SEQ2SEQ, tmp_path / "s2s", 30, rng.sample(SEQ2SEQ_PLAN, len(SEQ2SEQ_PLAN)), random.Random(rng.random()))]
    errors: list[BaseException] = []

    def drive(c: Chain) -> None:
        try:
            c.run()
        except BaseException as e:  # noqa: BLE001 - reported by the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=drive, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    refs = [_reference(tmp_path, GPT, 40, "gpt-ref"), _reference(tmp_path, SEQ2SEQ, 30, "s2s-ref")]
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for c, ref in zip(chains, refs):
        _assert_same_weights(c.out, ref)
        assert _history(c.out) == _history(ref)  # every loss of every step, across the kills
        assert not _temporaries(c.out), _temporaries(c.out)
        assert _steps(c.out) == [c.steps - 1, c.steps]  # --keep-checkpoints 2 (the default)
        for name in ("model.safetensors", "config.json", "tokenizer.json"):  # OUT is the final checkpoint's model
            assert (c.out / name).read_bytes() == (c.out / "checkpoints" / f"step-{c.steps:06d}" / name).read_bytes()
        assert c.resumed == sorted(c.resumed) and c.resumed[0] >= 1
    kills = sum(c.kills for c in chains)
    mid_write = sum(c.mid_write for c in chains)
    print(f"\n{kills} SIGKILLs ({mid_write} mid-write), {sum(len(c.resumed) for c in chains)} exact resumes")
    assert kills >= 10 and mid_write >= 4, (kills, mid_write)


# -- SIGTERM (once or twice) in a step, an evaluation or a checkpoint write, every family ---------
FAMILIES = {
    "gpt": ["train", "--preset", "tiny", "--builtin-size", "200", "--context-length", "24", "--sample-prompt", ""],
    "masked-lm": ["encoder", "pretrain", "--preset", "tiny", "--vocab-size", "300", "--builtin-size", "120"],
    "classify": ["encoder", "classify", "--preset", "tiny", "--vocab-size", "300", "--builtin-size", "120",
                 "--label", "country", "--top", "3", "--dev-fraction", "0.2", "--keep-best", "--ema", "0.9"],
    "seq2seq": ["seq2seq", "train", "--preset", "tiny", "--max-number", "60", "--eval-pairs", "0", "--test-fraction", "0"],
}
SHORT = [*COMMON, "--eval-interval", "2", "--max-steps", "6"]
# Where a signal lands: a call the loop makes from inside that phase.
POINTS = {"step": (torch.nn.utils, "clip_grad_norm_"),         # between the backward and the update
          "eval": (loop._Run, "_remember_best"),               # after the task's evaluate, weights swapped
          "save": (loop, "save_train_state")}                  # while a checkpoint's files are written


def _signal_at(monkeypatch, where: str, nth: int, times: int) -> None:
    """SIGTERM this process `times` times from inside the nth call of the point `where`."""
    owner, name = POINTS[where]
    real, calls = getattr(owner, name), [0]

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, hooked)


@pytest.mark.parametrize("family,where,nth,times,saved", [
    ("gpt", "step", 3, 1, 3), ("gpt", "eval", 2, 1, 4), ("gpt", "save", 3, 1, 3), ("gpt", "save", 3, 2, 3),
    ("gpt", "step", 3, 2, 2), ("gpt", "eval", 2, 2, 3), ("classify", "step", 6, 1, 6),  # the last step: not final yet
    ("masked-lm", "eval", 2, 1, 4), ("classify", "save", 3, 2, 3), ("seq2seq", "step", 3, 2, 2),
])
def test_sigterm_anywhere_stops_cleanly_and_resumes_exactly(tmp_path, monkeypatch, capsys, family, where, nth, times,
                                                            saved):
    """Once: the run stops after the step it is in (its evaluation and checkpoint included) and
    saves. Twice: at once, saving nothing, unless a checkpoint is being written, which completes.
    Either way the newest checkpoint is whole, and resuming it ends on the uninterrupted weights."""
    argv = [*FAMILIES[family], *SHORT]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_at(m, where, nth, times)
        assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert _steps(out)[-1] == saved and not _temporaries(out), (_steps(out), err)
    if times == 2 and where != "save":
        assert "stopped at once" in err and f"from the checkpoint of step {saved}" in err, err
    else:
        assert f"interrupted at step {saved}" in err, err
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert f"resuming from step {saved}" in capsys.readouterr().err
    _assert_same_weights(out, ref)
    assert _history(out) == _history(ref)


# -- damaged checkpoints ---------------------------------------------------------------------------
def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _stopped_after_step_4(monkeypatch, argv: list[str], out: Path) -> Path:
    with monkeypatch.context() as m:
        _signal_at(m, "step", 4, 1)
        assert main([*argv, "--out", str(out)]) == 130
    return out / "checkpoints"


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "removed a damaged checkpoint" in line]


def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, monkeypatch, capsys):
    argv = [*FAMILIES["gpt"], *COMMON, "--eval-interval", "2", "--keep-checkpoints", "3", "--max-steps", "6"]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    ckpt = _stopped_after_step_4(monkeypatch, argv, out)
    assert _steps(out) == [2, 3, 4]  # --keep-checkpoints 3
    _flip_a_byte(ckpt / "step-000004" / "model.safetensors")  # a weight that changed on disk
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    notice = _notices(capsys.readouterr().err)
    assert len(notice) == 1 and "step-000004: model.safetensors differs" in notice[0], notice
    assert "resuming from checkpoints/step-000003" in notice[0]
    _assert_same_weights(out, ref)
    assert _history(out) == _history(ref) and _steps(out) == [4, 5, 6]


def test_missing_files_and_a_missing_manifest_fall_back_further(tmp_path, monkeypatch, capsys):
    argv = [*FAMILIES["seq2seq"], *COMMON, "--eval-interval", "2", "--keep-checkpoints", "3", "--max-steps", "6"]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    ckpt = _stopped_after_step_4(monkeypatch, argv, out)
    (ckpt / "step-000004" / "train_state.safetensors").unlink()
    (ckpt / "step-000003" / "manifest.json").unlink()
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    notice = _notices(capsys.readouterr().err)
    assert len(notice) == 1, notice
    assert "train_state.safetensors is missing" in notice[0] and "no readable manifest.json" in notice[0]
    assert "resuming from checkpoints/step-000002" in notice[0]
    _assert_same_weights(out, ref)
    assert _history(out) == _history(ref)

    # Nothing intact left: one line, and no model is made up.
    for u in unit.units(ckpt):
        _flip_a_byte(u.path / "train_state.json")
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no older checkpoint" in err[0] and "error:" in err[1], err


def test_a_run_of_the_layout_before_checkpoint_units_resumes_and_is_converted(tmp_path, monkeypatch, capsys):
    """OUT/train_state.* beside the model (gptlab before this layout): resumed when its files agree,
    refused in one line when a kill left them from two different steps."""
    argv = [*FAMILIES["gpt"], *COMMON, "--eval-interval", "2", "--max-steps", "6"]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "old"
    ckpt = _stopped_after_step_4(monkeypatch, argv, out)
    for name in ("train_state.safetensors", "train_state.json", "model.safetensors", "config.json"):
        (out / name).write_bytes((ckpt / "step-000004" / name).read_bytes())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("train_state.safetensors", "train_state.json", "tokenizer.json"):
        (mixed / name).write_bytes((out / name).read_bytes())
    for name in ("model.safetensors", "config.json"):
        (mixed / name).write_bytes((ckpt / "step-000003" / name).read_bytes())
    shutil.rmtree(ckpt)
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    _assert_same_weights(out, ref)
    assert _history(out) == _history(ref)
    assert not (out / "train_state.safetensors").exists() and _steps(out) == [5, 6]
    capsys.readouterr()
    assert main([*argv, "--out", str(mixed), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model of step 3 but the training state of step 4" in err and "\n" not in err, err
