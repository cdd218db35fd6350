"""The training loop: corpus -> tokenizer -> batches -> GPT, with exact resume and DDP.

The loss of an optimizer step is the summed token NLL over the whole global batch divided by its
token count, whatever way the batch is split (micro-batches, DDP ranks): so 4 micro-batches of 8
equal 1 batch of 32, and 2 DDP processes equal 1, up to float rounding.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gptlab import __version__
from gptlab.training.batches import BatchPlan, encode_records, eval_batches
from gptlab.checkpoint import (CONFIG, TOKENIZER, WEIGHTS, atomic_save_tensors, atomic_write_json, load_weights,
                         read_config, save_model)
from gptlab.training.config import RunConfig
from gptlab.data import load_corpus, split_records
from gptlab.errors import UserError
from gptlab.model import GPT, IGNORE_INDEX
from gptlab.data.tokenizer import Tokenizer

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


@dataclass
class TrainResult:
    out: Path
    step: int
    train_loss: float
    val_loss: float | None
    val_loss_with_padding: float | None
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)


# -- environment ---------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return dev


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls are then ~2-4x faster than fp32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bf16: use --precision fp32")
        return torch.bfloat16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else None
        return None
    raise UserError(f"unknown precision {name!r}: use auto, fp32 or bf16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if torch.cuda.is_available() and device_name in ("auto", "cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


# -- checks --------------------------------------------------------------------------------------
def check_config(cfg: RunConfig) -> None:
    t = cfg.train
    try:
        cfg.model.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    if t.batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {t.batch_size})")
    if t.grad_accum < 1 or t.batch_size % t.grad_accum:
        raise UserError(f"batch_size {t.batch_size} must be a multiple of grad_accum {t.grad_accum} (>= 1)")
    if t.max_steps < 0 or t.epochs < 0 or t.time_budget < 0:
        raise UserError("max_steps, epochs and time_budget must be >= 0")
    if t.max_steps == 0 and t.epochs == 0 and t.time_budget == 0:
        raise UserError("nothing to train: set --epochs, --max-steps or --time-budget above 0")
    if t.lr <= 0:
        raise UserError(f"lr must be > 0 (got {t.lr})")
    if t.optimizer not in ("adamw", "adam"):
        raise UserError(f"unknown optimizer {t.optimizer!r}: use adamw or adam")
    if t.schedule not in ("cosine", "constant"):
        raise UserError(f"unknown schedule {t.schedule!r}: use cosine or constant")
    if t.batching not in ("pad", "bucket", "pack"):
        raise UserError(f"unknown batching {t.batching!r}: use pad, bucket or pack")
    if t.tokenizer not in ("word", "bpe"):
        raise UserError(f"unknown tokenizer {t.tokenizer!r}: use word or bpe")
    if not 0 <= cfg.data.val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1) (got {cfg.data.val_fraction})")


def _comparable(d: dict) -> dict:
    """The parts of a saved config that must match to continue training the same model."""
    m = dict(d["model"])
    m.pop("vocab_size", None)  # set by the tokenizer, not the user
    m.pop("dropout", None)
    return m


def check_out_dir(out: Path, cfg: RunConfig) -> dict | None:
    """Refuse to clobber a model; return the saved config when resuming."""
    has_model = (out / CONFIG).exists()
    if cfg.train.resume:
        if not has_model:
            raise UserError(f"--resume: {out} holds no model to resume; drop --resume to start a new run")
        saved = read_config(out)
        if not (out / STATE_JSON).exists():
            raise UserError(f"--resume: {out} has a model but no {STATE_JSON} (a finished export?); "
                            "start a new run in another --out")
        if _comparable(saved) != _comparable(cfg.to_dict()):
            diff = {k: (saved["model"].get(k), v) for k, v in _comparable(cfg.to_dict()).items()
                    if saved["model"].get(k) != v}
            raise UserError(f"--resume: {out} holds a model of another config {diff} (saved, asked): "
                            "resume with the saved settings, or use another --out")
        return saved
    if has_model and not cfg.train.overwrite:
        try:
            saved = read_config(out)
            same = saved.get("kind") == "gpt" and _comparable(saved) == _comparable(cfg.to_dict())
        except UserError:
            same = False
        what = "a model of the same config" if same else "a model of another config"
        raise UserError(f"{out} already holds {what}: use --resume to continue it, --overwrite to replace it, "
                        "or pick another --out")
    return None


# -- optimizer and schedule ------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, t, device: torch.device) -> torch.optim.Optimizer:
    """AdamW decays matrices only (not biases, LayerNorms); `adam` is the notebook's Keras Adam."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps)
    if t.optimizer == "adam":
        cls, groups = torch.optim.Adam, params
    else:
        cls = torch.optim.AdamW
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if device.type in ("cuda", "cpu"):
        # One pass over each parameter for the whole update (CUDA: one kernel for all of them; CPU,
        # torch >= 2.4: ~8% of a `book` step saved against the per-op loop).
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # an older torch without fused CPU Adam
            pass
    return cls(groups, **kwargs)


def lr_at(step: int, progress: float, t) -> float:
    """Warmup by step, then cosine from lr to min_lr over `progress` in [0, 1]."""
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    p = min(max(progress, 0.0), 1.0)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * p))


# -- training state (no pickle: tensors in safetensors, the rest in JSON) -----------------------------
def save_train_state(out: Path, opt: torch.optim.Optimizer, step: int, extra: dict) -> None:
    sd = opt.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    atomic_save_tensors(out / STATE_TENSORS, tensors, metadata={"step": str(step)})
    atomic_write_json(out / STATE_JSON, {"step": step, "param_groups": sd["param_groups"],
                                         "opt_scalars": scalars, **extra})


def load_train_state(out: Path, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file
    try:
        meta = json.loads((out / STATE_JSON).read_text())
        tensors = load_file(str(out / STATE_TENSORS))
    except Exception as e:  # noqa: BLE001 - any corruption means the same thing to the user
        raise UserError(f"--resume: the training state in {out} is unreadable ({str(e)[:80]}): start a new run") from None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, d in meta.get("opt_scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta


# -- evaluation and samples ------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: GPT, seqs, t, pad_id: int, ctx: int, device, amp) -> tuple[float, float]:
    """(NLL per non-padding token, NLL per position counting padding as the notebook's Keras loss does)."""
    was_training = model.training
    model.eval()
    nll, n, nll_pad, n_pad = 0.0, 0, 0.0, 0
    for b in eval_batches(seqs, t.batch_size, pad_id, ctx, t.eval_batches):
        x, y = b.x_BxT.to(device), b.y_BxT.to(device)
        with autocast(device, amp):
            out = model(x, return_logits=True)
        logits = out.logits.float()
        keep = y != IGNORE_INDEX
        nll += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
        n += int(keep.sum())
        # The notebook's loss: padding is a target like any other word (its id is 0 in Keras).
        y_pad = torch.where(keep, y, torch.full_like(y, pad_id))
        nll_pad += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_pad.reshape(-1), reduction="sum"))
        n_pad += y.numel()
    model.train(was_training)
    return nll / max(n, 1), nll_pad / max(n_pad, 1)


@torch.no_grad()
def quick_sample(model: GPT, tok: Tokenizer, prompt: str, temperature: float, seed: int, device) -> str:
    """One sample for the progress log (the notebook's TextGenerator callback)."""
    was_training = model.training
    model.eval()
    ids = tok.encode(prompt)[-(model.cfg.context_length - 1):] or [tok.eot_id]
    g = torch.Generator(device="cpu").manual_seed(seed)
    cache = model.new_cache(1)
    logits = model(torch.tensor([ids], device=device), cache=cache, last_only=True).logits
    new: list[int] = []
    while cache.length < model.cfg.context_length:
        probs = torch.softmax(logits[0, -1].float().cpu() / max(temperature, 1e-6), -1)
        nxt = int(torch.multinomial(probs, 1, generator=g))
        if nxt == tok.eot_id:
            break
        new.append(nxt)
        logits = model(torch.tensor([[nxt]], device=device), cache=cache).logits
    model.train(was_training)
    return prompt + " " + tok.decode(new)


# -- the loop --------------------------------------------------------------------------------------
def _log(msg: str, dist: Dist) -> None:
    if dist.main:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)


def train(cfg: RunConfig, corpus=None, *, on_eval=None, tokenizer: Tokenizer | None = None) -> TrainResult:
    """Train a GPT as `cfg` says; `corpus` (a gptlab.data.Corpus) overrides cfg.data's source.

    `tokenizer`: use this one instead of fitting a new one on the training records (runs whose
    losses must compare, in nats per token, share one vocabulary). A resumed run keeps its own.

    on_eval(record) -> bool, if given, is called after each validation with the history record
    (step, val_loss, val_loss_with_padding, time, and train_time / train_cpu_time: wall and process
    CPU seconds without evaluation and checkpoints); returning True stops training there (the
    benchmarks stop once a target loss is reached).
    """
    t = cfg.train
    check_config(cfg)
    dist = init_distributed(t.device)
    device = resolve_device(t.device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    amp = resolve_precision(t.precision, device)
    if t.threads:
        torch.set_num_threads(t.threads)
    out = Path(t.out)
    saved = check_out_dir(out, cfg)

    # Data and tokenizer.
    corpus = corpus if corpus is not None else load_corpus(cfg.data)
    records = corpus.records
    train_idx, val_idx = split_records(records, cfg.data.val_fraction, cfg.data.seed)
    train_recs = [records[i] for i in train_idx]
    val_recs = [records[i] for i in val_idx]
    if saved is not None:
        tok = Tokenizer.load(out / TOKENIZER)
    elif tokenizer is not None:
        tok = tokenizer
    else:
        tok = Tokenizer.train(train_recs, kind=t.tokenizer, vocab_size=cfg.model.vocab_size,
                              lowercase=cfg.data.normalize)
    cfg.model.vocab_size = tok.vocab_size
    ctx = cfg.model.context_length
    train_seqs = encode_records(tok, train_recs, ctx, truncate=t.batching != "pack")
    val_seqs = encode_records(tok, val_recs, ctx)
    plan = BatchPlan(train_seqs, t.batch_size, ctx, tok.pad_id, t.batching, t.seed)
    if plan.steps_per_epoch == 0:
        raise UserError(f"the corpus yields no training sequence for context {ctx}: give more text or a smaller --context-length")
    total_steps = t.max_steps or (math.ceil(t.epochs * plan.steps_per_epoch) if t.epochs else 10**12)

    # Model and optimizer.
    torch.manual_seed(t.seed)
    model = GPT(cfg.model).to(device)
    opt = build_optimizer(model, t, device)
    step = 0
    if saved is not None:
        load_weights(model, out / WEIGHTS)
        meta = load_train_state(out, opt)
        step = meta["step"]
    train_model = model
    if t.compile:
        train_model = torch.compile(model)
    ddp_model = train_model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    micro = t.batch_size // t.grad_accum
    if micro % dist.world:
        raise UserError(f"batch_size/grad_accum = {micro} must be a multiple of the {dist.world} processes")

    config_dict = {"kind": "gpt", "gptlab_version": __version__, **cfg.to_dict(),
                   "corpus": {"source": corpus.source, "records": len(records), "skipped": corpus.skipped,
                              "train_records": len(train_recs), "val_records": len(val_recs)}}

    def checkpoint(step_now: int, final: bool = False) -> None:
        if not dist.main:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_train_state(out, opt, step_now, {"history": history[-1000:]})
        save_model(out, model, tok, {**config_dict, "step": step_now})

    writer = None
    if dist.main and t.tensorboard:
        try:
            # Writing scalars needs no TensorFlow, but tensorboard imports it when it is installed
            # (seconds of start-up and a screen of oneDNN logs): this marker selects its built-in stub.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"))
        except ImportError:
            _log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", dist)

    n_params = model.num_params()
    _log(f"gptlab train: {corpus.source}: {len(train_recs):,} train / {len(val_recs):,} val records"
         f"{f' ({corpus.skipped:,} skipped)' if corpus.skipped else ''}; vocab {tok.vocab_size:,}; "
         f"{n_params:,} parameters; {total_steps if total_steps < 10**12 else '?'} steps of {t.batch_size}; "
         f"{device}{' bf16' if amp else ' fp32'}{f' x{dist.world}' if dist.world > 1 else ''}", dist)

    history: list[dict] = []
    bar = None
    if dist.main and t.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps if total_steps < 10**12 else None, initial=step, unit="step",
                   dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
    t0 = time.perf_counter()
    c0 = time.process_time()  # CPU time of this process: steadier than wall time on a shared machine
    side_time = side_cpu = 0.0  # evaluation, samples and checkpoints: not training time
    tokens_seen = 0
    loss_acc = torch.zeros((), device=device)
    last_train_loss = float("nan")
    val_loss = val_pad = None
    interrupted = False
    epoch_cache: dict[int, list] = {}
    model.train()

    def stop_on_term(signum, frame):  # SIGTERM (cluster pre-emption) is handled like Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, stop_on_term) if dist.main and _in_main_thread() else None
    pin = device.type == "cuda"  # pinned host memory: the copy to the GPU then needs no host sync
    try:
        while step < total_steps:
            elapsed = time.perf_counter() - t0
            if t.time_budget and elapsed >= t.time_budget:
                break
            progress = step / total_steps if total_steps < 10**12 else 0.0
            if t.time_budget:
                progress = max(progress, elapsed / t.time_budget)
            lr = lr_at(step, progress, t)
            for g in opt.param_groups:
                g["lr"] = lr

            epoch, i = divmod(step, plan.steps_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache.clear()
                epoch_cache[epoch] = plan.epoch(epoch)
            rows = epoch_cache[epoch][i]
            batch = plan.make(rows)
            n_global = batch.n_tokens
            for m in range(t.grad_accum):
                mrows = slice(m * micro + dist.rank, (m + 1) * micro, dist.world)
                x, y = batch.x_BxT[mrows], batch.y_BxT[mrows]
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = contextlib.nullcontext() if (dist.world == 1 or m == t.grad_accum - 1) else ddp_model.no_sync()
                with sync:
                    with autocast(device, amp):
                        o = ddp_model(x, y)
                    # DDP averages gradients over ranks; scale so the result is sum / global count.
                    loss = o.nll_sum * (dist.world / max(n_global, 1))
                    loss.backward()
                loss_acc += o.nll_sum.detach()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n_global

            last = step == total_steps
            if step % t.log_interval == 0 or last:
                if dist.world > 1:
                    import torch.distributed as tdist
                    tdist.all_reduce(loss_acc)
                # loss_acc holds this rank's NLL since the last log; tokens_seen counts all ranks.
                last_train_loss = float(loss_acc) / max(_tokens_since(history, tokens_seen), 1)
                loss_acc.zero_()
                el = time.perf_counter() - t0
                # tokens_per_s counts target tokens (never padding) per second of training proper.
                rec = {"step": step, "loss": last_train_loss, "lr": lr, "tokens": tokens_seen,
                       "tokens_per_s": tokens_seen / max(el - side_time, 1e-9), "time": el,
                       "train_time": el - side_time, "train_cpu_time": time.process_time() - c0 - side_cpu}
                history.append(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{last_train_loss:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
                if writer:
                    writer.add_scalar("train/loss", last_train_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/tokens_per_s", rec["tokens_per_s"], step)
            if bar is not None:
                bar.update(1)
            stop = False
            if (t.eval_interval and step % t.eval_interval == 0) and not last and dist.main:
                s0, sc = time.perf_counter(), time.process_time()
                val_loss, val_pad = _eval_and_sample(model, tok, val_seqs, t, ctx, device, amp, step, writer, history, dist)
                side_time += time.perf_counter() - s0
                side_cpu += time.process_time() - sc
                stop = _report_eval(history, on_eval, t0, side_time, c0, side_cpu)
            if on_eval is not None and dist.world > 1 and t.eval_interval and step % t.eval_interval == 0 and not last:
                import torch.distributed as tdist
                flag = torch.tensor([float(stop)], device=device)
                tdist.broadcast(flag, 0)  # every rank stops with the main one
                stop = bool(flag.item())
            if t.save_interval and step % t.save_interval == 0 and not last:
                s0, sc = time.perf_counter(), time.process_time()
                checkpoint(step)
                side_time += time.perf_counter() - s0
                side_cpu += time.process_time() - sc
            if stop:
                break
    except KeyboardInterrupt:
        interrupted = True
        _log(f"interrupted at step {step}: saving a checkpoint to {out} (continue with --resume)", dist)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
    if dist.main and val_seqs and not interrupted and not (history and history[-1].get("step") == step
                                                            and "val_loss" in history[-1]):
        s0, sc = time.perf_counter(), time.process_time()
        val_loss, val_pad = _eval_and_sample(model, tok, val_seqs, t, ctx, device, amp, step, writer, history, dist)
        side_time += time.perf_counter() - s0
        side_cpu += time.process_time() - sc
        _report_eval(history, on_eval, t0, side_time, c0, side_cpu)
    checkpoint(step, final=True)
    if writer:
        writer.close()
    if dist.world > 1:
        import torch.distributed as tdist
        tdist.barrier()
    return TrainResult(out, step, last_train_loss, val_loss, val_pad, interrupted, history)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _report_eval(history: list[dict], on_eval, t0: float, side_time: float, c0: float, side_cpu: float) -> bool:
    """Stamp the newest validation record with the times and hand it to on_eval; True = stop."""
    rec = history[-1] if history and "val_loss" in history[-1] else None
    if rec is None:
        return False
    # Training time up to this evaluation; the evaluation itself is in side_time already.
    rec["time"] = time.perf_counter() - t0
    rec["train_time"] = rec["time"] - side_time
    rec["train_cpu_time"] = time.process_time() - c0 - side_cpu
    return bool(on_eval(dict(rec))) if on_eval else False


def _tokens_since(history: list[dict], tokens_now: int) -> int:
    prev = next((h["tokens"] for h in reversed(history) if "loss" in h), 0)
    return tokens_now - prev


def _eval_and_sample(model, tok, val_seqs, t, ctx, device, amp, step, writer, history, dist):
    if not val_seqs:
        return None, None
    val_loss, val_pad = evaluate(model, val_seqs, t, tok.pad_id, ctx, device, amp)
    history.append({"step": step, "val_loss": val_loss, "val_loss_with_padding": val_pad})
    # Only the per-token loss is shown: the notebook's figure (padding counted as a target) says
    # little about a model that, like gptlab's, is never trained to predict padding; it stays in
    # the history and TensorBoard for comparisons with Keras-trained models.
    msg = f"step {step}: val loss {val_loss:.3f} per token"
    if writer:
        writer.add_scalar("val/loss", val_loss, step)
        writer.add_scalar("val/loss_with_padding", val_pad, step)
    if t.sample_prompt:
        sample = quick_sample(model, tok, t.sample_prompt, t.sample_temperature, t.seed + step, device)
        msg += f"\n  sample: {sample}"
    _log(msg, dist)
    return val_loss, val_pad
