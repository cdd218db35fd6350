"""The one training loop. Every family is a `Task`: it makes the batch of a step, sums its loss,
evaluates, and may print a sample; `fit` does everything else, the same way for all of them:
gradient accumulation, DDP through torchrun, bf16 autocast, torch.compile, the LR schedule
(planned for a time budget when there is one), EMA, keep-best, progress, TensorBoard, atomic
checkpoints, exact resume, and save-and-exit on Ctrl-C or SIGTERM.

Checkpoints are all-or-nothing folders, OUT/checkpoints/step-N (training/state.py): a run killed
at any moment resumes from the newest complete one. Stopping happens only where the state is
whole: a first Ctrl-C or SIGTERM stops after the step in progress (and its evaluation and
checkpoint); a second one stops at once and saves nothing, except during a checkpoint write, which
it lets finish.

The loss of an optimizer step is the summed loss over the whole global batch divided by its item
count (target tokens, or rows for a classifier), however the batch is split (micro-batches, DDP
ranks): so 4 micro-batches of 8 equal 1 batch of 32, and 2 processes equal 1, up to float rounding.
Resume is exact because a task's batch is a pure function of (seed, step) and the optimizer, the
RNG, the weight average and the best weights are saved with the model.

One run at a time per OUT: `prepare_out` (when OUT exists) or else `fit` takes an advisory lock on
OUT/.lock, held until `fit` ends, so a second run on the same folder is refused instead of
interleaving its checkpoints with the first one's. The kernel drops it when its process dies, even
by SIGKILL, so a crashed run leaves nothing stale; where there is no fcntl (Windows) runs are not
kept apart.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from gptlab import __version__
from gptlab.checkpoint import CONFIG, TOKENIZER, WEIGHTS, load_weights, read_config, read_header, save_model
from gptlab.checkpoint.unit import units
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model.label_head import fold, raw_state, saved_params
from gptlab.settings import check_writable
from gptlab.training.config import LoopConfig
from gptlab.training.env import Runtime
from gptlab.training.optim import WeightAverage, build_optimizer, lr_at, warmup_for
from gptlab.training.progress import Progress
from gptlab.training.state import (
    CHECKPOINTS,
    STATE_TENSORS,
    has_checkpoints,
    load_train_state,
    publish,
    recover_checkpoints,
    resume_point,
    save_checkpoint,
    save_train_state,
    start_fresh,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no lock on --out (see _lock_out)
    fcntl = None  # type: ignore[assignment]

NO_LIMIT = 10**12
M = TypeVar("M", bound=torch.nn.Module)


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]  # each (B, ...): rows are split over micro-batches and processes
    count: int                        # loss items in the whole batch: target tokens, or rows


class Task(Generic[M]):
    """One training objective over a model of type M. Subclasses set `kind`, `model` and
    `tokenizer` and implement `steps_per_epoch`, `batch` and `loss_sum`; the rest is optional."""
    kind: str
    model: M
    tokenizer: Tokenizer
    best_metric: str | None = None  # the evaluate() key that --keep-best maximises
    unit: str = "tok"  # what Batch.count counts, as the progress line names its rate ("tok/s", "img/s")

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batch(self, step: int) -> Batch:
        """The global batch of `step`: the same for the same step, so a resumed run sees what the
        uninterrupted one saw."""
        raise NotImplementedError

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss summed over the items of these rows (the loop divides by the global count).
        `model` is the task's model or its DDP / compiled wrapper: call it, do not reach inside."""
        raise NotImplementedError

    def shown_loss_sum(self) -> torch.Tensor | None:
        """The last `loss_sum` call's loss as the run shows it, where that is not the objective
        itself (a weighted objective shows its plain sum, each item once); None: the objective."""
        return None

    def evaluate(self, model: M, rt: Runtime) -> dict[str, float]:
        return {}

    def sample(self, model: M, rt: Runtime, step: int) -> str | None:
        return None

    def final_metrics(self, model: M, rt: Runtime) -> dict[str, Any]:
        """Metrics computed once after training (e.g. accuracy on held-out rows)."""
        return {}

    def config(self) -> dict[str, Any]:
        """config.json without the loop's keys: at least {"model": ...} and the family's own."""
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def format_metrics(self, metrics: dict[str, float]) -> str:
        """The evaluation's line in the log."""
        return ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


@dataclass
class TrainResult(Generic[M]):
    out: Path | None
    step: int
    model: M
    tokenizer: Tokenizer
    config: dict[str, Any]
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.get("metrics", {})

    @property
    def train_loss(self) -> float:
        return float(self.metrics.get("train_loss", float("nan")))

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")


# -- the output folder ----------------------------------------------------------------------------
def _comparable(model: dict) -> dict:
    """The parts of a model config that must match to continue training the same model."""
    return {k: v for k, v in model.items() if k not in ("vocab_size", "dropout", "attn_dropout")}


def prepare_out(t: LoopConfig, kind: str, model: dict, make: str) -> Tokenizer | None:
    """Check --out before any data is read or time spent: refuse to clobber a model, check that a
    resumed run is the same model. Returns the saved tokenizer when resuming (the task must use it).

    model: the model config asked for (as a dict); make: the command that trains this kind.
    """
    if not t.out:
        return None
    out = Path(t.out)
    check_writable(out, "--out", folder=True)  # before any data is read: a run that cannot be saved is lost
    # Held from here to the end of `fit`, so a second run is refused before it reads data, and
    # before --resume repairs checkpoints that a live run may be writing. A folder that does not
    # exist yet is not made here (a run refused for its data writes nothing): `fit` locks it.
    lock = _lock_out(out, create=False) if _rank() == 0 else None
    try:
        if t.resume:
            return _check_resume(out, kind, model, make, t.optimizer)
        if ((out / CONFIG).exists() or has_checkpoints(out)) and not t.overwrite:
            try:
                saved = read_config(_model_folder(out), make=make)
                same = saved.get("kind") == kind and _comparable(saved["model"]) == _comparable(model)
            except UserError:
                same = False
            what = "a model of the same config" if same else "a model of another config"
            raise UserError(f"{out} already holds {what}: use --resume to continue it, --overwrite to replace it, "
                            "or pick another --out")
        return None
    except BaseException:
        if lock is not None:
            _unlock(lock)
        raise


def _model_folder(out: Path) -> Path:
    """Where OUT's model config is: OUT itself, or its newest checkpoint when a run was killed
    before it first copied a model to OUT."""
    found = units(out / CHECKPOINTS)
    return out if (out / CONFIG).exists() or not found else found[-1].path


# -- one run per output folder --------------------------------------------------------------------
LOCK = ".lock"


@dataclass
class _OutLock:
    """This process's hold on OUT/.lock: an open file with an exclusive flock on it."""
    key: Path                  # OUT resolved: two spellings of one folder are one lock
    folder: Path
    fd: int
    created: list[Path]        # folders made to hold the lock, deepest first: removed again if left empty
    thread: threading.Thread   # who took it
    training: bool = False     # in `fit` (else taken by prepare_out, waiting for `fit`)


_HELD: dict[Path, _OutLock] = {}


def _lock_out(out: Path, *, create: bool) -> _OutLock | None:
    """Take OUT's lock for this process, or raise the one-line UserError naming who holds it.
    None where nothing is locked: no fcntl (Windows), a filesystem without flock, or (create=False)
    no folder yet. A lock this thread took in a prepare_out whose `fit` never came (its data was
    refused) is taken over rather than refused."""
    if fcntl is None:
        return None
    key = out.resolve()
    held = _HELD.get(key)
    if held is not None:
        if held.training or (held.thread is not threading.current_thread() and held.thread.is_alive()):
            raise UserError(_busy(out, os.getpid(), " in this process"))
        held.thread = threading.current_thread()
        return held
    created: list[Path] = []
    if not out.is_dir():
        if not create:
            return None
        created = [p for p in (out.absolute(), *out.absolute().parents) if not p.exists()]
    folder = out.absolute()  # the lock file is removed at the end even if the working directory changed
    path = folder / LOCK
    for _ in range(100):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # No O_TRUNC: the holder's pid stays readable for the message.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a holder that was ending removed its empty OUT: make it again
            continue
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            os.close(fd)
            raise UserError(_busy(out, pid)) from None
        except OSError:  # e.g. a network filesystem without flock: train unlocked rather than not at all
            os.close(fd)
            return None
        # A holder unlinks the file as it ends: if that happened after our open, we hold a file
        # nobody else will open, so take the one now at the path instead.
        try:
            st, mine = os.stat(path), os.fstat(fd)
            current = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    else:
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    lock = _HELD[key] = _OutLock(key, folder, fd, created, threading.current_thread())
    return lock


def _holder_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None  # written just after its holder locked it: not yet there


def _busy(out: Path, pid: int | None, where: str = "") -> str:
    who = f"pid {pid}{where}" if pid is not None else "pid unknown"
    return (f"{out} is in use by another training run ({who}): wait for it to end or stop it, "
            "or pick another --out")


def _unlock(lock: _OutLock) -> None:
    """Release OUT: the lock file goes (while still locked, see _lock_out), then the folders made
    for it if nothing else was written there."""
    if _HELD.get(lock.key) is lock:
        del _HELD[lock.key]
    if lock.fd < 0:
        return  # released already: its descriptor number may now be another file's
    with contextlib.suppress(OSError):
        os.unlink(lock.folder / LOCK)
    os.close(lock.fd)
    lock.fd = -1
    for folder in lock.created:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: the run wrote there, and so into each folder above it


def unlock_waiting(thread: threading.Thread | None = None) -> None:
    """Release the locks prepare_out took for a `fit` that will not come (of `thread`, or all)."""
    for lock in list(_HELD.values()):
        if not lock.training and (thread is None or lock.thread is thread):
            _unlock(lock)


atexit.register(unlock_waiting)  # files and folders only: the kernel drops the locks themselves


def _check_resume(out: Path, kind: str, model: dict, make: str, optimizer: str) -> Tokenizer:
    if _rank() == 0:
        recover_checkpoints(out)
    _barrier()  # every process then sees the same checkpoints
    src = resume_point(out, main=_rank() == 0)
    if src is None:
        if not (out / CONFIG).exists():
            raise UserError(f"--resume: {out} holds no model to resume; drop --resume to start a new run")
        raise UserError(f"--resume: {out} has a model but no intact checkpoint in {CHECKPOINTS}/ to resume "
                        "(a finished export?): start a new run in another --out, or --overwrite")
    saved = read_config(src, make=make)
    # Keys a saved config lacks come from a version that did not have them: not a difference.
    diff = {k: (saved["model"][k], v) for k, v in _comparable(model).items()
            if k in saved["model"] and saved["model"][k] != v}
    if saved.get("kind") != kind or diff:
        raise UserError(f"--resume: {out} holds a model of another config {diff or saved.get('kind')} "
                        "(saved, asked): resume with the saved settings, or use another --out")
    # The optimizer state only fits the optimizer that wrote it (Muon's groups are not AdamW's);
    # a run saved before a default changed (the image denoiser's, to Muon) names its own here.
    was = saved.get("train", {}).get("optimizer", "adamw")
    if was != optimizer:
        raise UserError(f"--resume: {src} was trained with --optimizer {was}, not {optimizer}: resume it "
                        f"with --optimizer {was}, or start a new run with --overwrite")
    return Tokenizer.load(src / TOKENIZER)


def _rank() -> int:
    import torch.distributed as tdist
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as tdist
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def runtime_for(t: LoopConfig, save: bool = True) -> Runtime:
    """Check the loop's settings and set up where the run executes; save=False keeps nothing."""
    if not save:
        t.out = ""
    t.validate()
    return Runtime.create(t.device, t.precision, t.threads)


def total_steps(t: LoopConfig, steps_per_epoch: int) -> int:
    if t.max_steps:
        return t.max_steps
    if t.epochs:
        return max(1, math.ceil(t.epochs * steps_per_epoch))
    return NO_LIMIT


def fit(task: Task[M], t: LoopConfig, rt: Runtime, *, on_eval: Callable[[dict], bool] | None = None) -> TrainResult[M]:
    """Train task.model as `t` says, then save it (unless t.out is '').

    on_eval(record) -> bool, if given, is called after each evaluation with its history record
    (step, the task's metrics, time, and train_time / train_cpu_time: wall and process CPU seconds
    without evaluation and checkpoints); returning True stops training there.
    """
    lock = _lock_out(Path(t.out), create=True) if t.out and rt.dist.main else None
    if lock is not None:
        lock.training = True
    finished = False
    try:
        result = _Run(task, t, rt, on_eval).run()
        finished = not result.interrupted
        return result
    finally:
        if lock is not None:
            _unlock(lock)
        if not finished:
            # The command stops here (an error, or a stop asked for): a folder its caller locked
            # for a later stage (the image trainer's OUT around its OUT/autoencoder) is free too.
            unlock_waiting(threading.current_thread())


class _Run:
    """The state of one call of `fit`, split into steps small enough to read."""

    def __init__(self, task: Task[Any], t: LoopConfig, rt: Runtime, on_eval: Callable[[dict], bool] | None):
        self.task, self.t, self.rt, self.on_eval = task, t, rt, on_eval
        self.out = Path(t.out) if t.out else None
        self.model: torch.nn.Module = task.model.to(rt.device)
        self.total = total_steps(t, task.steps_per_epoch())
        self.warmup = warmup_for(t, self.total if self.total < NO_LIMIT else 0)
        self.opt = build_optimizer(self.model, t, rt.device)
        self.average = WeightAverage(self.model, t.ema) if t.ema else None
        self.best: tuple[int, float, dict[str, torch.Tensor]] | None = None
        self.history: list[dict] = []
        self.step = 0
        self.tokens_seen = 0
        self.lr = 0.0
        self.stop_requested = False
        # Where the run is, for a stop that cannot wait: "between" steps (the state is whole and
        # may be saved), in a "step" or an "eval" (it is not), in a "save" (let it finish), or
        # "done" (saved for good: nothing left to stop).
        self.phase = "between"
        self.saved_step: int | None = None  # the step of the newest checkpoint, once there is one
        self.side_time = self.side_cpu = 0.0  # evaluation, samples and checkpoints: not training time
        self.weighted = False  # the task trains an objective other than the loss it shows
        self.writer: Any = None
        self.bar: Progress | None = None
        if t.resume and self.out is not None:
            self._restore()
        self.first_new = len(self.history)  # records before it came from the run being resumed
        self.trained_model: Any = torch.compile(self.model) if t.compile else self.model
        self.ddp_model: Any = self.trained_model
        if rt.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.ddp_model = DDP(self.trained_model, device_ids=ids)
        self.micro = t.batch_size // t.grad_accum
        if self.micro % rt.dist.world:
            raise UserError(f"--batch-size / --grad-accum = {self.micro} must be a multiple of the "
                            f"{rt.dist.world} processes")

    # -- resume and checkpoints -------------------------------------------------------------------
    def _restore(self) -> None:
        assert self.out is not None
        src = resume_point(self.out, main=self.rt.dist.main)
        if src is None:
            raise UserError(f"--resume: {self.out} holds no checkpoint to resume; drop --resume to start a new run")
        load_weights(self.model, src / WEIGHTS)
        # A reparametrized layer is saved as it computes (a plain layer); its own tensors come
        # from the training state, and a run must resume with the same reparametrizations (before
        # the optimizer state, whose groups would not fit).
        raw = raw_state(self.model)
        saved_raw = {k[6:]: shape for k, (_, shape) in read_header(src / STATE_TENSORS).items() if k.startswith("x.raw.")}
        if set(raw) != set(saved_raw):
            raise UserError(f"--resume: {src} was trained {'without' if raw else 'with'} --label-directions: resume "
                            f"with {'--no-label-directions' if raw else '--label-directions'}, as the run began")
        if any(tuple(v.shape) != saved_raw[k] for k, v in raw.items()):
            raise UserError(f"--resume: {src}'s label directions have other groups than this run's (other data, or "
                            f"a run begun by an older gptlab): resume with the data it began with, or start a new run")
        meta, extra = load_train_state(src, self.opt)
        if raw:
            self.model.load_state_dict({k[4:]: v for k, v in extra.items() if k.startswith("raw.")}, strict=False)
        model_step = read_config(src).get("step")
        if model_step != meta["step"]:  # only possible in a folder of the layout before checkpoint units
            raise UserError(f"--resume: {src} holds a model of step {model_step} but the training state of step "
                            f"{meta['step']} (written by a run killed mid-checkpoint): start a new run")
        self.step = self.saved_step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.tokens_seen = int(meta.get("tokens", 0))
        if self.average is not None and "ema.0" in extra:
            for i, s in enumerate(self.average.shadow):
                s.copy_(extra[f"ema.{i}"])
        if "best_step" in meta:
            weights = {k[5:]: v.to(self.rt.device) for k, v in extra.items() if k.startswith("best.")}
            self.best = (int(meta["best_step"]), float(meta["best_value"]), weights)
        if self.rt.dist.main and src != self.out:
            publish(src, self.out)  # OUT's model is the one resumed (a kill may have cut its copy short)
        self.log(f"resuming from step {self.step} ({src})")

    def _config(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"kind": self.task.kind, "gptlab_version": __version__, **self.task.config(),
                "train": self.t.to_dict(), "step": self.step, "metrics": metrics}

    def checkpoint(self, metrics: dict[str, Any] | None = None, final: bool = False) -> None:
        """Save the run as one checkpoint unit and copy its model to OUT. final: the finished model
        (averaged or best weights, final metrics) rather than the state of a step to resume."""
        if self.out is None or not self.rt.dist.main:
            return
        s0, c0 = time.perf_counter(), time.process_time()
        was, self.phase = self.phase, "save"
        if self.saved_step is None:
            start_fresh(self.out)  # only now: until this run has a checkpoint, the one it replaces stays
        config = self._config(metrics or self._train_metrics())
        extra, tensors = self._state_extras()

        def fill(folder: Path) -> None:
            save_train_state(folder, self.opt, self.step, extra, tensors)
            save_model(folder, self.model, self.task.tokenizer, config)

        save_checkpoint(self.out, self.step, fill, final, self.t.keep_checkpoints)
        self.saved_step, self.phase = self.step, was
        self.side_time += time.perf_counter() - s0
        self.side_cpu += time.process_time() - c0

    def _state_extras(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What the loop itself adds to the optimizer state: history, token count, EMA, best weights."""
        extra: dict[str, Any] = {"history": self.history[-1000:], "tokens": self.tokens_seen}
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"raw.{k}": v for k, v in raw_state(self.model).items()})
        if self.average is not None:
            tensors.update({f"ema.{i}": s for i, s in enumerate(self.average.shadow)})
        if self.best is not None:
            extra.update(best_step=self.best[0], best_value=self.best[1])
            tensors.update({f"best.{k}": v for k, v in self.best[2].items()})
        return extra, tensors

    # -- logging ------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.rt.dist.main:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)

    def _open_outputs(self) -> None:
        if not self.rt.dist.main:
            return
        if self.t.tensorboard and self.out is not None:
            try:
                # Writing scalars needs no TensorFlow, but tensorboard imports it when installed
                # (seconds of start-up and a screen of oneDNN logs): this marker selects its stub.
                sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                self.log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        if self.t.progress:
            self.bar = Progress(self.total if self.total < NO_LIMIT else None, self.step, self.t.time_budget,
                                unit=self.task.unit)

    def _scalars(self, prefix: str, values: dict[str, Any]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(f"{prefix}/{k}", v, self.step)

    # -- one optimizer step -------------------------------------------------------------------------
    def _set_lr(self, elapsed: float) -> None:
        progress = self.step / self.total if self.total < NO_LIMIT else 0.0
        if self.t.time_budget:
            progress = max(progress, elapsed / self.t.time_budget)
        self.lr = lr_at(self.step, progress, self.t, self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = self.lr

    def _micro_batches(self, batch: Batch) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        rank, world, pin = self.rt.dist.rank, self.rt.dist.world, self.rt.device.type == "cuda"
        for m in range(self.t.grad_accum):
            rows = slice(m * self.micro + rank, (m + 1) * self.micro, world)
            part = {}
            for k, v in batch.tensors.items():
                v = v[rows]
                # Pinned host memory: the copy to the GPU then needs no host sync.
                part[k] = (v.pin_memory() if pin else v).to(self.rt.device, non_blocking=True)
            yield m, part

    def train_step(self, loss_acc: torch.Tensor) -> None:
        self.phase = "step"
        batch = self.task.batch(self.step)
        world = self.rt.dist.world
        for m, tensors in self._micro_batches(batch):
            last_micro = m == self.t.grad_accum - 1
            sync = contextlib.nullcontext() if (world == 1 or last_micro) else self.ddp_model.no_sync()
            with sync:
                with self.rt.autocast():
                    loss_sum = self.task.loss_sum(self.ddp_model, tensors)
                # DDP averages gradients over ranks; scale so the result is sum / global count.
                (loss_sum * (world / max(batch.count, 1))).backward()
            shown = self.task.shown_loss_sum()
            self.weighted |= shown is not None
            loss_acc[0] += (loss_sum if shown is None else shown).detach().float()
            loss_acc[1] += loss_sum.detach().float()
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += batch.count
        if self.average is not None:
            self.average.update(self.step)
        self.phase = "between"

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> TrainResult[Any]:
        self._open_outputs()
        # As saved: training-only tensors (label directions) are not the model's.
        self.log(f"{self.task.describe()}{saved_params(self.model):,} parameters; "
                 f"{self.total if self.total < NO_LIMIT else '?'} steps of {self.t.batch_size}; "
                 f"{self.rt.device}{' bf16' if self.rt.amp else ' fp32'}"
                 f"{f' x{self.rt.dist.world}' if self.rt.dist.world > 1 else ''}")
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        with self._stop_signals():
            try:
                interrupted = self._train()
                if self.bar is not None:
                    self.bar.close()
                return self._finish(interrupted)
            except KeyboardInterrupt:
                self._abandon()
                raise

    def _train(self) -> bool:
        """The steps; True when a stop was asked for before the last one."""
        try:
            self._loop()
        except KeyboardInterrupt:
            if self.phase != "between":
                raise  # in the middle of a step or an evaluation: nothing consistent to save
            self.stop_requested = True
        if self.stop_requested:
            self.log(f"interrupted at step {self.step}: " + (f"saving a checkpoint to {self.out} (continue with --resume)"
                                                            if self.out is not None else "nothing is kept (no --out)"))
        return self.stop_requested

    def _abandon(self) -> None:
        """A stop that could not wait: the state is torn, so nothing is saved; say what resume has."""
        for closable in (self.bar, self.writer):
            if closable is not None:
                closable.close()
        where = {"step": f"in the middle of step {self.step + 1}",
                 "eval": f"during the evaluation after step {self.step}"}.get(self.phase, f"at step {self.step}")
        if self.out is None:
            kept = "nothing is kept (no --out)"
        elif self.saved_step is None:
            kept = "no checkpoint was saved yet"
        else:
            kept = f"--resume continues from the checkpoint of step {self.saved_step}"
        self.log(f"stopped at once {where}: not saved; {kept}")

    def _loop(self) -> None:
        self.model.train()
        loss_acc = torch.zeros(2, device=self.rt.device)  # the loss shown, the objective: summed since the last log
        while self.step < self.total and not self.stop_requested:
            elapsed = time.perf_counter() - self.t0
            if self.t.time_budget and elapsed >= self.t.time_budget:
                break
            self._set_lr(elapsed)
            self.train_step(loss_acc)
            last = self.step == self.total
            if self.step % self.t.log_interval == 0 or last:
                self._log_train(loss_acc)
            if self.bar is not None:
                h = self.history[-1] if self.history and self.history[-1].get("step") == self.step else {}
                self.bar.update(self.step, time.perf_counter() - self.t0, h.get("loss"), h.get("tokens_per_s"))
            stop = False
            if self.t.eval_interval and self.step % self.t.eval_interval == 0 and not last:
                stop = self._evaluate()
            if self.t.save_interval and self.step % self.t.save_interval == 0 and not last:
                self.checkpoint()
            if self._agree(stop or self.stop_requested) and not self.stop_requested:
                break

    def _agree(self, flag: bool) -> bool:
        """Every process stops when one does (a signal or on_eval may reach only the main one)."""
        if self.rt.dist.world == 1:
            return flag
        import torch.distributed as tdist
        t = torch.tensor([float(flag)], device=self.rt.device)
        tdist.all_reduce(t)
        return bool(t.item())

    def _log_train(self, loss_acc: torch.Tensor) -> None:
        if self.rt.dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(loss_acc)
        prev = next((h["tokens"] for h in reversed(self.history) if "loss" in h), 0)
        loss, objective = (float(v) / max(self.tokens_seen - prev, 1) for v in loss_acc)
        loss_acc.zero_()
        el = time.perf_counter() - self.t0
        rec = {"step": self.step, "loss": loss, "lr": self.lr, "tokens": self.tokens_seen,
               # items (target tokens, never padding; or rows) per second of training proper
               "tokens_per_s": self.tokens_seen / max(el - self.side_time, 1e-9), "time": el,
               "train_time": el - self.side_time, "train_cpu_time": time.process_time() - self.c0 - self.side_cpu}
        scalars = {"loss": loss, "lr": self.lr, "tokens_per_s": rec["tokens_per_s"]}
        if self.weighted:
            rec["objective"] = scalars["objective"] = objective
        self.history.append(rec)
        self._scalars("train", scalars)

    def _evaluate(self) -> bool:
        """Evaluate (under the averaged weights, when there are), remember the best; True = stop."""
        if not self.rt.dist.main:
            return False
        s0, c0 = time.perf_counter(), time.process_time()
        was, self.phase = self.phase, "eval"
        with self.average.swapped() if self.average is not None else contextlib.nullcontext():
            metrics = self.task.evaluate(self.model, self.rt)
            self._remember_best(metrics)
            sample = self.task.sample(self.model, self.rt, self.step)
        self.model.train()
        self.phase = was
        self.side_time += time.perf_counter() - s0
        self.side_cpu += time.process_time() - c0
        if not metrics:
            return False
        rec = {"step": self.step, **metrics, "time": time.perf_counter() - self.t0}
        rec["train_time"] = rec["time"] - self.side_time
        rec["train_cpu_time"] = time.process_time() - self.c0 - self.side_cpu
        self.history.append(rec)
        self._scalars("val", metrics)
        self.log(f"step {self.step}: {self.task.format_metrics(metrics)}" + (f"\n  sample: {sample}" if sample else ""))
        return bool(self.on_eval(dict(rec))) if self.on_eval else False

    def _remember_best(self, metrics: dict[str, float]) -> None:
        key = self.task.best_metric
        if not self.t.keep_best or key is None or key not in metrics:
            return
        if self.best is None or metrics[key] > self.best[1]:
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = (self.step, metrics[key], weights)

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM (cluster pre-emption) ask the loop to stop after the current step, so
        the saved RNG state matches the saved step; a second one stops at once (nothing saved),
        unless a checkpoint is being written: cutting that would only lose it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum: int, frame: types.FrameType | None) -> None:
            if not self.stop_requested:
                self.stop_requested = True
            elif self.phase not in ("save", "done"):
                raise KeyboardInterrupt

        old = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _train_metrics(self) -> dict[str, Any]:
        last: dict[str, Any] = next((h for h in reversed(self.history) if "loss" in h), {})
        return {"steps": self.step, "train_seconds": round(time.perf_counter() - self.t0, 1),
                "train_loss": last.get("loss", float("nan"))}

    def _finish(self, interrupted: bool) -> TrainResult[Any]:
        metrics = self._train_metrics()
        if not interrupted:
            # The final evaluation, then the weights may become the averaged or best ones: a stop
            # that cannot wait from here on saves nothing (the last checkpoint is the whole state).
            self.phase = "eval"
            mine = self.history[self.first_new:]
            last_eval = mine[-1] if mine and "loss" not in mine[-1] else None
            if last_eval is None or last_eval["step"] != self.step:
                self._evaluate()
            self._keep_final_weights(metrics)
            final: dict[str, Any] = next((h for h in reversed(self.history) if "loss" not in h), {})
            metrics.update({k: v for k, v in final.items() if k not in ("step", "time", "train_time", "train_cpu_time")})
            # On every process: each holds the same model, and each caller may report them.
            metrics.update(self.task.final_metrics(self.model, self.rt))
        self.checkpoint(metrics, final=not interrupted)
        self.phase = "done"
        fold(self.model)  # the model handed back is the one saved: plain layers
        if self.writer is not None:
            self.writer.close()
        if self.rt.dist.world > 1:
            import torch.distributed as tdist
            tdist.barrier()
        self.model.eval()
        return TrainResult(self.out, self.step, self.model, self.task.tokenizer, self._config(metrics),
                           self.history[self.first_new:], interrupted)

    def _keep_final_weights(self, metrics: dict[str, Any]) -> None:
        """The averaged weights become the model; then the best evaluation's, if it beat the last."""
        if self.average is not None:
            self.average.copy_to_model()
        key = self.task.best_metric
        if self.best is None or key is None:
            return
        final = next((h for h in reversed(self.history) if key in h), None)
        if final is not None and self.best[1] > final[key]:
            self.model.load_state_dict(self.best[2])
            metrics.update(best_step=self.best[0], **{f"best_{key}": self.best[1]})
        else:
            metrics.update(best_step=self.step, **{f"best_{key}": final[key] if final else float("nan")})
