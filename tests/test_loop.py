"""The one training loop's invariants, for every family: EMA and keep-best on a toy task; resume
after an interruption equals the uninterrupted run; 2 DDP processes equal 1; `--config run.toml`
works for every training command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlab.cli import main
from gptlab.data import DataConfig
from gptlab.data.tokenizer import Tokenizer
from gptlab.model.seq2seq import seq2seq_tiny
from gptlab.training import loop
from gptlab.training.config import LoopConfig
from gptlab.training.env import Runtime
from gptlab.training.tasks.classify import ClassifyConfig, classify
from gptlab.training.tasks.masked_lm import EncoderTrainConfig, pretrain
from gptlab.training.tasks.seq2seq import Seq2SeqTrainConfig
from gptlab.training.tasks.seq2seq import train as train_seq2seq

PAIRS = [(f"{a} plus {b}", f"{b} mas {a}") for a in ("one", "two", "three", "four", "five", "six")
         for b in ("seven", "eight", "nine", "ten")]


# -- the loop on a toy task ------------------------------------------------------------------------
class Regression(loop.Task):
    """y = x w + noise, all 64 rows in every batch; evaluate() reports what `score` returns."""
    kind = "gpt"

    def __init__(self, score=lambda model: {}):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.x, self.y = torch.randn(64, 4), torch.randn(64, 1)
        self.tokenizer = Tokenizer.train(["a b c"], vocab_size=10)
        self.score = score
        self.trail = [self.model.weight.detach().clone()]  # the weights before step 1, 2, ...

    def steps_per_epoch(self):
        return 1

    def batch(self, step):
        if step:
            self.trail.append(self.model.weight.detach().clone())
        return loop.Batch({"x": self.x, "y": self.y}, 64)

    def loss_sum(self, model, tensors):
        return ((model(tensors["x"]) - tensors["y"]) ** 2).sum()

    def evaluate(self, model, rt):
        return self.score(model)

    def config(self):
        return {"model": {}}


def _toy_loop(**kw):
    return LoopConfig(**{**dict(out="", max_steps=20, lr=1e-2, min_lr=1e-3, warmup_steps=0, weight_decay=0.0,
                                beta2=0.99, grad_clip=0.0, eval_interval=5, progress=False, tensorboard=False,
                                precision="fp32", device="cpu"), **kw})


def _rt():
    return Runtime.create("cpu", "fp32")


def test_ema_keeps_the_average_of_the_trajectory_it_would_have_taken():
    """--ema: training steps are unchanged (evaluation swaps the average in and back out), evaluation
    sees the averaged weights, and the model ends as the moving average of the weights after each step."""
    def run(ema):
        seen = []
        task = Regression(lambda model: seen.append(model.weight.detach().clone()) or {})
        loop.fit(task, _toy_loop(ema=ema), _rt())
        return task.model.weight.detach().clone(), task.trail, seen

    plain, trail_plain, _ = run(0.0)
    averaged, trail, seen = run(0.9)
    assert all(torch.equal(a, b) for a, b in zip(trail, trail_plain)) and len(trail) == 20
    shadow, expected = trail[0], []
    for step, w in enumerate(trail[1:] + [plain], start=1):
        shadow = torch.lerp(shadow, w, 1 - min(0.9, (1 + step) / (10 + step)))
        expected.append(shadow)
    assert torch.allclose(averaged, expected[-1], atol=1e-6) and not torch.allclose(averaged, plain, atol=1e-4)
    assert torch.allclose(seen[0], expected[4], atol=1e-6)  # the evaluation after step 5 saw the average


def test_keep_best_ends_with_the_weights_of_the_best_evaluation():
    scores = iter([0.1, 0.9, 0.5, 0.3])  # evaluations at steps 5, 10, 15 and after the last step (20)
    snapshots = []

    def score(model):
        snapshots.append(model.weight.detach().clone())
        return {"acc": next(scores)}

    task = Regression(score)
    task.best_metric = "acc"
    r = loop.fit(task, _toy_loop(keep_best=True), _rt())
    assert r.metrics["best_step"] == 10 and r.metrics["best_acc"] == 0.9
    assert len([h for h in r.history if "acc" in h]) == 4
    assert torch.equal(task.model.weight, snapshots[1]) and not torch.equal(snapshots[1], snapshots[3])


def test_without_keep_best_the_last_weights_stay():
    scores = iter([0.1, 0.9, 0.5, 0.3])
    task = Regression(lambda model: {"acc": next(scores)})
    task.best_metric = "acc"
    loop.fit(task, _toy_loop(keep_best=False), _rt())
    assert torch.equal(task.model.weight, task.trail[-1]) is False  # the weights after the last step
    assert "best_step" not in loop.fit(Regression(), _toy_loop(), _rt()).metrics


def test_a_short_run_leaves_its_warmup():
    from gptlab.training.optim import lr_at, warmup_for
    t = _toy_loop(warmup_steps=200, lr=1.0, min_lr=0.0)
    w = warmup_for(t, 200)
    assert w == 50 and lr_at(w, w / 200, t, w) == pytest.approx(lr_at(0, 0.25, LoopConfig(warmup_steps=0, lr=1.0, min_lr=0.0)))
    assert warmup_for(t, 10_000) == 200


# -- every family: resume == uninterrupted, on tiny models with dropout on --------------------------
def _weights(out):
    return load_file(str(Path(out) / "model.safetensors"))


def _losses(result):
    return [h["loss"] for h in result.history if "loss" in h]


def _common(out, **kw):
    return dict(out=str(out), max_steps=6, batch_size=8, warmup_steps=2, eval_interval=0, log_interval=1,
                progress=False, tensorboard=False, device="cpu", precision="fp32", seed=3, **kw)


def _mlm(out, **kw):
    return pretrain(EncoderTrainConfig(**_common(out, preset="tiny", vocab_size=300, **kw)),
                    DataConfig(builtin_size=120))


def _cls(out, **kw):
    return classify(ClassifyConfig(**_common(out, preset="tiny", vocab_size=300, label="country", top=3,
                                             dev_fraction=0.0, ema=0.9, **kw)), DataConfig(builtin_size=120))


def _s2s(out, **kw):
    return train_seq2seq(Seq2SeqTrainConfig(**_common(out, preset="tiny", eval_pairs=0, **kw)), seq2seq_tiny(),
                         splits={"train": PAIRS, "val": PAIRS[:6], "test": []})


@pytest.mark.parametrize("run", [_mlm, _cls, _s2s], ids=["masked-lm", "classify", "seq2seq"])
def test_resume_equals_uninterrupted(tmp_path, interrupt_at, run):
    full = run(tmp_path / "full")
    interrupt_at(3)
    part = run(tmp_path / "part")
    assert part.interrupted and part.step == 3
    interrupt_at(None)
    rest = run(tmp_path / "part", resume=True)
    assert rest.step == 6 and not rest.interrupted
    assert _losses(part) + _losses(rest) == pytest.approx(_losses(full), abs=1e-6)
    wf, wr = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in wf:
        assert torch.allclose(wf[k], wr[k], atol=1e-6), k


# -- every family: 2 DDP processes (gloo, CPU) == 1 on the same global batch --------------------------
def _torchrun(argv, out, procs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable]
    r = subprocess.run([*launcher, "-m", "gptlab", *argv, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return _weights(out)


FAMILY_ARGV = {
    "masked-lm": ["encoder", "pretrain", "--preset", "tiny", "--vocab-size", "300", "--builtin-size", "120"],
    "classify": ["encoder", "classify", "--preset", "tiny", "--vocab-size", "300", "--builtin-size", "120",
                 "--label", "country", "--top", "3", "--dev-fraction", "0"],
    "seq2seq": ["seq2seq", "train", "--preset", "tiny", "--max-number", "60", "--eval-pairs", "0"],
}


@pytest.mark.parametrize("family", list(FAMILY_ARGV))
def test_ddp_two_processes_equal_one(tmp_path, family):
    common = [*FAMILY_ARGV[family], "--max-steps", "3", "--batch-size", "8", "--dropout", "0", "--precision", "fp32",
              "--no-progress", "--no-tensorboard", "--eval-interval", "0", "--device", "cpu", "--threads", "1"]
    one = _torchrun(common, tmp_path / "one", 1)
    two = _torchrun(common, tmp_path / "two", 2)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k


# -- `--config run.toml` for every training command ----------------------------------------------
@pytest.mark.parametrize("argv,toml,check", [
    (["seq2seq", "train", "--max-number", "40", "--eval-pairs", "0"],
     'max_steps = 2\n[model]\nd_model = 32\n[train]\nbatch_size = 4\npreset = "tiny"\n',
     lambda c: c["model"]["d_model"] == 32 and c["train"]["batch_size"] == 4 and c["step"] == 2),
    (["encoder", "pretrain", "--builtin-size", "60", "--vocab-size", "200"],
     'preset = "tiny"\nmax-steps = 2\n[data]\nseed = 5\n',
     lambda c: c["train"]["preset"] == "tiny" and c["data"]["seed"] == 5 and c["step"] == 2),
    (["encoder", "classify", "--builtin-size", "60", "--vocab-size", "200", "--label", "country"],
     '[train]\npreset = "tiny"\nmax_steps = 2\ntop = 2\n',
     lambda c: len(c["classifier"]["labels"]) == 2 and c["step"] == 2),
])
def test_every_training_command_reads_a_toml_config(tmp_path, argv, toml, check):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    out = tmp_path / "m"
    assert main([*argv, "--config", str(path), "--out", str(out), "--no-progress", "--no-tensorboard"]) == 0
    assert check(json.loads((out / "config.json").read_text()))


def test_a_bad_toml_key_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nnope = 1\n')
    assert main(["seq2seq", "train", "--config", str(path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key train.nope" in err and len(err.splitlines()) == 1
