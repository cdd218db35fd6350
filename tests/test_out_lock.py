"""One training run per --out folder: a second run on a folder a live run holds is refused at once
(before it reads data), the lock dies with its holder even on SIGKILL, a run that ends (finished,
failed or stopped) frees it, and different folders, nested ones included, never block each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, tiny_model_dir, wine_lines

from gptlab.cli import main
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.training import loop
from gptlab.training.config import LoopConfig
from gptlab.training.env import Runtime

fcntl = pytest.importorskip("fcntl")  # Windows has no advisory locks: runs there take none

# A run that holds OUT and never ends: `fit` blocked in its first batch, or (argv[2] == "prepare")
# a prepare_out whose fit has not come yet. It prints "holding" once it holds OUT.
HOLDER = """
import sys, time
import torch
from gptlab.data.tokenizer import Tokenizer
from gptlab.training import loop
from gptlab.training.config import LoopConfig
from gptlab.training.env import Runtime

class Blocked(loop.Task):
    kind = "gpt"
    def __init__(self):
        self.model = torch.nn.Linear(2, 1)
        self.tokenizer = Tokenizer.train(["a b c"], vocab_size=10)
    def steps_per_epoch(self):
        return 1
    def batch(self, step):
        print("holding", flush=True)
        time.sleep(600)
    def config(self):
        return {"model": {}}

t = LoopConfig(out=sys.argv[1], max_steps=1, overwrite=True, progress=False, tensorboard=False,
               precision="fp32", device="cpu")
if sys.argv[2] == "prepare":
    loop.prepare_out(t, "gpt", {}, "gptlab train")
    print("holding", flush=True)
    time.sleep(600)
else:
    loop.fit(Blocked(), t, Runtime.create("cpu", "fp32"))
"""


@pytest.fixture
def holder():
    """holder(out, how): a process holding `out` ("fit" or "prepare"), killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(out: Path, how: str = "fit") -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)  # prepare_out locks only a folder that exists
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), how], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()  # "" when it died
        assert line.strip() == "holding", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def free(out: Path) -> bool:
    """Whether OUT's lock can be taken now by anyone, this process included (a flock belongs to an
    open file, so our own hold conflicts with this new open too)."""
    try:
        fd = os.open(out / loop.LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the flock this probe may have taken


class Toy(loop.Task):
    """y = x w on 16 rows; `during(step)` is called with each step's batch (e.g. to look at OUT)."""
    kind = "gpt"

    def __init__(self, during=lambda step: None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.x, self.y = torch.randn(16, 4), torch.randn(16, 1)
        self.tokenizer = Tokenizer.train(["a b c"], vocab_size=10)
        self.during = during

    def steps_per_epoch(self):
        return 1

    def batch(self, step):
        self.during(step)
        return loop.Batch({"x": self.x, "y": self.y}, 16)

    def loss_sum(self, model, tensors):
        return ((model(tensors["x"]) - tensors["y"]) ** 2).sum()

    def config(self):
        return {"model": {}}


def toy_loop(out: Path | str, **kw) -> LoopConfig:
    return LoopConfig(**{**dict(out=str(out), max_steps=2, batch_size=16, lr=1e-2, warmup_steps=0, eval_interval=0,
                                progress=False, tensorboard=False, precision="fp32", device="cpu"), **kw})


def rt() -> Runtime:
    return Runtime.create("cpu", "fp32")


def tiny_train(out: Path, corpus: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--context-length", "24",
            "--max-steps", "2", "--batch-size", "8", "--no-progress", "--no-tensorboard", "--sample-prompt", "", *extra]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(wine_lines(60)) + "\n", encoding="utf-8")
    return p


def test_every_command_is_refused_before_its_data_while_a_run_holds_out_and_not_after_a_kill_9(
        tmp_path, capsys, holder, corpus):
    out = tmp_path / "m"
    proc = holder(out, "fit")
    missing = str(tmp_path / "nowhere.csv")  # read only after the lock: naming it would mean data came first
    base = str(tiny_model_dir(tmp_path / "base"))
    for argv in (["train", "--overwrite"], ["train", "--resume"], ["seq2seq", "train"], ["encoder", "pretrain"],
                 ["encoder", "classify"], ["image", "train"], ["align", "sft", base], ["align", "dpo", base]):
        err = one_line_error(capsys, [*argv, "--data", missing, "--out", str(out)],
                             str(out), f"pid {proc.pid}", "stop it", "another --out")
        assert "nowhere" not in err, err
    with pytest.raises(UserError, match=f"in use by another training run \\(pid {proc.pid}\\)"):
        loop.fit(Toy(), toy_loop(out), rt())  # straight to the loop, without prepare_out
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists(), "nothing written"

    proc.kill()  # SIGKILL: no handler runs, so only the kernel can release the lock
    proc.wait()
    assert (out / loop.LOCK).exists() and free(out), "the holder's file stays, but unlocked"
    assert main(tiny_train(out, corpus, "--overwrite")) == 0
    assert (out / "config.json").exists() and not (out / loop.LOCK).exists()


def test_a_run_holds_out_while_it_trains_and_frees_it_however_it_ends(tmp_path, corpus):
    out = tmp_path / "m"
    seen = []
    loop.fit(Toy(lambda step: seen.append(free(out))), toy_loop(out), rt())
    assert seen == [False, False] and free(out) and not (out / loop.LOCK).exists()

    assert main(tiny_train(out, corpus, "--overwrite")) == 0  # a second run after a finished one
    assert main(tiny_train(out, corpus, "--resume", "--max-steps", "3")) == 0
    assert free(out) and not (out / loop.LOCK).exists()

    def fail(step):
        raise RuntimeError("boom")

    def stop_now(step):
        raise KeyboardInterrupt  # as a second Ctrl-C in the middle of a step: not saved

    for during, error in ((fail, RuntimeError), (stop_now, KeyboardInterrupt)):
        with pytest.raises(error):
            loop.fit(Toy(during), toy_loop(out, overwrite=True), rt())
        assert free(out) and not (out / loop.LOCK).exists()
    # A folder made only to hold the lock of a run that wrote nothing is removed with it.
    with pytest.raises(RuntimeError):
        loop.fit(Toy(fail), toy_loop(tmp_path / "new" / "m"), rt())
    assert not (tmp_path / "new").exists()
    loop.fit(Toy(), toy_loop(""), rt())  # in memory: nothing to lock, nothing made
    assert not Path(loop.LOCK).exists()


def test_other_folders_nested_ones_included_do_not_block(tmp_path, capsys, holder):
    out = tmp_path / "a"
    proc = holder(out, "prepare")  # held from prepare_out on, before the run's fit
    (tmp_path / "link").symlink_to(out)  # another spelling of the same folder
    err = one_line_error(capsys, ["seq2seq", "train", "--out", str(tmp_path / "link"), "--overwrite",
                                  "--max-steps", "1"], f"pid {proc.pid}")
    assert "in use" in err
    for other in (tmp_path / "b", out / "autoencoder"):
        loop.fit(Toy(), toy_loop(other), rt())
        assert (other / "config.json").exists() and free(other)
    assert not free(out)


def _image_train(out: Path, on_eval=None, **kw):
    from gptlab.data.shapes import ShapesCorpus
    from gptlab.model.diffusion import ImageConfig
    from gptlab.training.tasks.diffusion import ImageTrainConfig, train
    shapes = ShapesCorpus(0)
    rows = [(shapes[i].image, shapes[i].caption) for i in range(16)]
    t = ImageTrainConfig(out=str(out), max_steps=2, ae_steps=2, batch_size=8, warmup_steps=0, eval_interval=0,
                         progress=False, tensorboard=False, device="cpu", precision="fp32", text_context=16,
                         threads=1, **kw)
    cfg = ImageConfig(d_model=32, n_layer=1, n_head=2, d_ff=64, image_size=32, ae_width=8, context_length=64)
    return train(t, cfg, examples=(rows, rows[:8]), on_eval=on_eval)


def test_the_image_trainer_holds_out_and_its_autoencoder_folder_stage_by_stage(tmp_path, monkeypatch, interrupt_at):
    from gptlab.training.tasks import diffusion
    out, ae = tmp_path / "m", tmp_path / "m" / diffusion.AUTOENCODER
    out.mkdir()  # an OUT that exists is held from prepare_out, so through stage 1 as well
    seen = {}
    stage1_batch = diffusion.AutoencoderTask.batch

    def batch(self, step):
        seen.setdefault("stage 1", (free(out), free(ae)))
        return stage1_batch(self, step)

    monkeypatch.setattr(diffusion.AutoencoderTask, "batch", batch)
    def stage2(record):
        seen.setdefault("stage 2", (free(out), free(ae)))
        return False

    r = _image_train(out, overwrite=True, on_eval=stage2)
    assert not r.interrupted and (out / "config.json").exists()
    assert seen == {"stage 1": (False, False), "stage 2": (False, True)}
    assert free(out) and free(ae) and not (out / loop.LOCK).exists() and not (ae / loop.LOCK).exists()

    interrupt_at(1)  # stage 1 stops and the trainer returns before stage 2: OUT is free as well
    assert _image_train(out, overwrite=True).interrupted
    assert free(out) and free(ae)
