"""Scaling laws (Kaplan et al. 2020, figure 1): train a ladder of GPT sizes on one corpus, fit
L(N) = (N_c / N)^alpha_N (optionally + an irreducible loss E), and the same in dataset size D.

The size dial is the width d_model alone: n_layer and n_head stay as configured, d_ff = 4 d_model.
One dial keeps the ladder a line through shape space; Kaplan et al. (section 3.1, figure 5) find
the loss depends on shape only weakly at fixed N, so width alone traces L(N) well enough for small
models, and it keeps every size at the same depth (same number of sequential ops on a CPU).

Every run:
- sees the same held-out records and the same tokenizer (trained once on the full training split),
  so losses in nats per token compare across runs;
- packs batches (no padding), so tokens per step are exactly batch_size x context_length and
  the budget D is exact; compute is C = 6 N D (N = non-embedding parameters, Kaplan's convention);
- is finished when OUT/<run>/result.json exists: a rerun of the sweep skips finished runs and
  resumes an interrupted one from its checkpoint.

The data sweep trains one size on nested random subsets of the training records, each for the
same token budget (so the smaller sets are seen for many epochs), and keeps the best held-out loss
over ~10 evaluations: early stopping, as Kaplan et al. measure L(D).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gptlab import __version__
from gptlab.checkpoint import atomic_write_json, atomic_write_text
from gptlab.data import Corpus, load_corpus, split_records
from gptlab.errors import UserError
from gptlab.settings import check_writable
from gptlab.training.config import RunConfig

KAPLAN = {"alpha_N": 0.076, "N_c": 8.8e13, "alpha_D": 0.095, "D_c": 5.4e13}
RESULT = "result.json"
DEFAULT_SIZES = (16, 24, 32, 48, 64, 96, 128)
DEFAULT_TOKENS = 1_000_000
DATA_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of --tokens, for --data-sizes auto
DATA_EVALS = 10  # held-out evaluations per data-sweep run, for early stopping
FF_MULT = 4
# Settings that don't change what a run learns: a finished run is reused whatever they are.
_IRRELEVANT = {"train": {"out", "progress", "tensorboard", "resume", "overwrite", "threads", "log_interval",
                         "save_interval", "keep_checkpoints", "device", "compile"}}


@dataclass
class ScaleConfig:
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))  # d_model of each rung
    tokens: int = DEFAULT_TOKENS              # training tokens per run
    data_sizes: list[int] = field(default_factory=list)  # dataset sizes in tokens; empty = no data sweep
    data_model_size: int = 0                  # d_model of the data sweep; 0 = the largest of sizes
    irreducible: bool = False                 # fit L = E + (x_c / x)^alpha instead of (x_c / x)^alpha
    bootstrap: int = 1000                     # bootstrap resamples for the exponent's interval
    overwrite: bool = False                   # retrain finished runs


@dataclass
class RunSpec:
    sweep: str            # "params" or "data"
    name: str             # sub-folder of the sweep's out
    size: int             # d_model
    cfg: RunConfig
    n_params: int         # non-embedding
    n_params_total: int
    tokens: int           # trained on: steps x batch_size x context_length
    dataset_tokens: int   # distinct training tokens available to the run
    keep: list[int] | None = None  # a data-sweep run's training records (positions in the training split)
    cost: float = 0.0     # FLOPs estimate for the progress bar (includes the output layer and evals)


# -- the ladder ------------------------------------------------------------------------------------
def size_config(base: RunConfig, d_model: int) -> RunConfig:
    cfg = RunConfig.from_dict(base.to_dict())
    cfg.model.d_model = d_model
    cfg.model.d_ff = FF_MULT * d_model
    return cfg


def count_params(cfg: RunConfig) -> tuple[int, int]:
    """(non-embedding, total) parameters, without allocating any weights."""
    import torch

    from gptlab.model import GPT
    with torch.device("meta"):
        model = GPT(replace(cfg.model))
    return model.num_params(non_embedding=True), model.num_params()


def check_scale_config(base: RunConfig, sc: ScaleConfig) -> None:
    m, t = base.model, base.train
    if not sc.sizes:
        raise UserError("--sizes is empty: give at least two d_model values, e.g. --sizes 32 64 128")
    if len(set(sc.sizes)) < 2:
        raise UserError(f"--sizes {' '.join(map(str, sc.sizes))}: a power law needs at least two different sizes")
    if min(sc.sizes) < 1:
        raise UserError(f"--sizes must be positive d_model values (got {min(sc.sizes)})")
    sizes = sorted(set(sc.sizes) | ({sc.data_model_size} if sc.data_model_size else set()))
    bad = [d for d in sizes if d % m.n_head]
    if bad:
        raise UserError(f"d_model {', '.join(map(str, bad))} not divisible by n_head {m.n_head}: "
                        f"use multiples of {m.n_head} in --sizes/--data-model-size or change --n-head")
    step_tokens = t.batch_size * m.context_length
    if sc.tokens < step_tokens:
        raise UserError(f"--tokens {sc.tokens:,} is less than one step (batch_size {t.batch_size} x context "
                        f"{m.context_length} = {step_tokens:,} tokens): raise --tokens or lower --batch-size")
    if sc.data_sizes:
        if len(set(sc.data_sizes)) < 2:
            raise UserError("--data-sizes: a power law needs at least two different dataset sizes")
        if min(sc.data_sizes) < step_tokens:
            raise UserError(f"--data-sizes {min(sc.data_sizes):,} is less than one batch ({step_tokens:,} tokens): "
                            "use larger dataset sizes")
    if sc.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (got {sc.bootstrap})")
    from gptlab.training.tasks.causal_lm import check_config
    for d in sizes:  # every other setting, before the first run rather than at the tenth
        check_config(size_config(base, d))


def plan_runs(base: RunConfig, sc: ScaleConfig, n_train_tokens_per_record: list[int], vocab_size: int,
              val_tokens: int) -> list[RunSpec]:
    """Every run of the sweep, smallest first. `n_train_tokens_per_record`: token count (with the
    end-of-text token) of each training record, in the order the data sweep subsamples them."""
    t, ctx = base.train, base.model.context_length
    step_tokens = t.batch_size * ctx
    steps = sc.tokens // step_tokens
    tokens = steps * step_tokens
    epoch_tokens = sum(n_train_tokens_per_record)
    runs = []
    for d in sorted(set(sc.sizes)):
        cfg = size_config(base, d)
        cfg.train.max_steps = steps
        runs.append(_spec("params", f"n-{d}", d, cfg, tokens, epoch_tokens, None, vocab_size, val_tokens, 1))
    if sc.data_sizes:
        d = sc.data_model_size or max(sc.sizes)
        too_big = [n for n in sc.data_sizes if n > epoch_tokens]
        if too_big:
            raise UserError(f"--data-sizes {max(too_big):,} exceeds the {epoch_tokens:,} training tokens of the "
                            "corpus: use smaller sizes or a bigger corpus")
        cum = np.cumsum(n_train_tokens_per_record)
        for target in sorted(set(sc.data_sizes)):
            k = int(np.searchsorted(cum, target)) + 1  # the shortest prefix with >= target tokens
            cfg = size_config(base, d)
            cfg.train.max_steps = steps
            cfg.train.eval_interval = max(steps // DATA_EVALS, 1)
            runs.append(_spec("data", f"data-{_short(target)}", d, cfg, tokens, int(cum[k - 1]), list(range(k)),
                              vocab_size, val_tokens, DATA_EVALS + 1))
    return runs


def _spec(sweep, name, d, cfg, tokens, dataset_tokens, keep, vocab_size, val_tokens, n_evals) -> RunSpec:
    cfg.model.vocab_size = vocab_size
    n, n_total = count_params(cfg)
    m = cfg.model
    # Forward FLOPs per token: 2 N + the output layer + attention (Kaplan's table 1); training is 3x.
    fwd = 2 * n + 2 * vocab_size * m.d_model + 2 * m.n_layer * m.context_length * m.d_model
    cost = 3 * fwd * tokens + fwd * val_tokens * n_evals
    return RunSpec(sweep, name, d, cfg, n, n_total, tokens, dataset_tokens, keep, float(cost))


def _short(n: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div and n % (div // 1000 or 1) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


def parse_count(text: str) -> int:
    """'250k' -> 250000, '1.5M' -> 1500000, '2e6' -> 2000000."""
    s = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(s[-1:], 1)
    if mult != 1:
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise UserError(f"{text!r} is not a token count: write e.g. 500000, 500k or 1.5M") from None
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise UserError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


# -- one run ---------------------------------------------------------------------------------------
def subset_corpus(corpus: Corpus, train_idx: list[int], val_idx: list[int], keep: list[int],
                  seed: int) -> tuple[Corpus, float]:
    """A corpus of the training records `train_idx[k] for k in keep` plus all of `val_idx`, laid out
    so that train()'s own split_records(records, val_fraction, seed) returns exactly `val_idx`'s
    records (in order) as validation: every run is evaluated on the same held-out records."""
    m = len(keep) + len(val_idx)
    val_fraction = len(val_idx) / m
    new_train, new_val = split_records([None] * m, val_fraction, seed)
    if len(new_val) != len(val_idx):  # pragma: no cover - round(m * n/m) == n
        raise RuntimeError("subset_corpus: the validation split did not come out the same size")
    records: list[str] = [""] * m
    for pos, i in zip(new_val, val_idx):
        records[pos] = corpus.records[i]
    for pos, k in zip(new_train, keep):
        records[pos] = corpus.records[train_idx[k]]
    return Corpus(records, f"{corpus.source} ({len(keep):,} training records)", corpus.skipped), val_fraction


def corpus_fingerprint(corpus: Corpus) -> str:
    """sha256 of the records: a finished run is only reused on the very same text (the built-in
    generator or a file may change between two invocations of a sweep)."""
    h = hashlib.sha256()
    for r in corpus.records:
        h.update(r.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def _comparable(cfg_dict: dict) -> dict:
    return {s: {k: v for k, v in vals.items() if k not in _IRRELEVANT.get(s, ())} for s, vals in cfg_dict.items()}


def run_one(spec: RunSpec, corpus: Corpus, tok, train_idx, val_idx, out: Path, overwrite: bool,
            fingerprint: str = "") -> dict:
    """Train one rung (resuming its checkpoint if an earlier sweep was interrupted) and write result.json."""
    from gptlab.training.state import resume_point
    from gptlab.training.tasks.causal_lm import train

    cfg = RunConfig.from_dict(spec.cfg.to_dict())
    run_dir = out / spec.name
    cfg.train.out = str(run_dir)
    has_state = run_dir.is_dir() and resume_point(run_dir) is not None
    cfg.train.resume = has_state and not overwrite
    cfg.train.overwrite = not cfg.train.resume
    run_corpus = corpus
    if spec.keep is not None:
        run_corpus, cfg.data.val_fraction = subset_corpus(corpus, train_idx, val_idx, spec.keep, cfg.data.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # The trainer's own lines (its start line, every evaluation) go to the run's train.log: the
    # terminal shows the sweep's bar and one line per finished run.
    # One tokenizer for every run: a subset's own would differ, and losses in nats per token only
    # compare under one vocabulary.
    with open(run_dir / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        res = train(cfg, run_corpus, tokenizer=tok)
    wall = time.perf_counter() - t0
    if res.interrupted:
        raise KeyboardInterrupt
    vals = [h["val_loss"] for h in res.history if "val_loss" in h]
    if res.val_loss is None or not vals:
        raise UserError(f"{spec.name}: the corpus has no validation records: raise --val-fraction")
    tokens = res.step * cfg.train.batch_size * cfg.model.context_length
    record = {
        "sweep": spec.sweep, "name": spec.name, "d_model": spec.size, "n_layer": cfg.model.n_layer,
        "n_head": cfg.model.n_head, "n_params": spec.n_params, "n_params_total": spec.n_params_total,
        "tokens": tokens, "dataset_tokens": spec.dataset_tokens, "flops": 6.0 * spec.n_params * tokens,
        "steps": res.step, "val_loss": res.val_loss, "best_val_loss": min(vals),
        "best_step": next(h["step"] for h in res.history if h.get("val_loss") == min(vals)),
        "train_loss": res.train_loss, "wall_s": round(wall, 2), "vocab_size": tok.vocab_size,
        "gptlab_version": __version__, "corpus_sha256": fingerprint, "config": _comparable(spec.cfg.to_dict()),
    }
    atomic_write_json(run_dir / RESULT, record)
    return record


# -- the sweep -------------------------------------------------------------------------------------
@dataclass
class ScaleResult:
    out: Path
    points: list[dict]
    fits: dict[str, PowerLawFit]
    trained: list[str]  # names of the runs trained (not skipped) by this call


def run_scale(base: RunConfig, sc: ScaleConfig, corpus: Corpus | None = None) -> ScaleResult:
    """Run (or finish) the sweep in base.train.out, then fit and plot. Returns the points and fits."""
    from tqdm import tqdm

    from gptlab.training.tasks.causal_lm import gpt_tokenizer
    check_scale_config(base, sc)
    out = Path(base.train.out)
    check_writable(out, "--out", folder=True)  # before the corpus is read and the runs are planned
    corpus = corpus if corpus is not None else load_corpus(base.data)
    train_idx, val_idx = split_records(corpus.records, base.data.val_fraction, base.data.seed)
    if not val_idx:
        raise UserError("no validation records: scaling laws are measured on held-out text; raise --val-fraction")
    train_recs = [corpus.records[i] for i in train_idx]
    tok = gpt_tokenizer(base, corpus, train_idx)
    # The data sweep takes prefixes of one fixed random order of the training records: nested subsets.
    order = list(range(len(train_idx)))
    random.Random(base.data.seed).shuffle(order)
    marks = 1 + tok.starts_with_eot  # the <|endoftext|> after each record, and the one before it
    lengths = [len(ids) + marks for ids in tok.encode_batch(train_recs)]
    val_tokens = sum(min(len(ids) + marks, base.model.context_length + 1) for ids in
                     tok.encode_batch([corpus.records[i] for i in val_idx]))
    runs = plan_runs(base, sc, [lengths[i] for i in order], tok.vocab_size, val_tokens)
    for spec in runs:
        if spec.keep is not None:
            spec.keep = [order[k] for k in spec.keep]
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    fingerprint = corpus_fingerprint(corpus)
    done: dict[str, dict] = {}
    for spec in runs if not sc.overwrite else []:
        rec = _read_result(out / spec.name, spec, fingerprint)
        if rec is not None:
            done[spec.name] = rec
    epochs = runs[0].tokens / sum(lengths)
    _say(f"gptlab scale: {corpus.source}: {len(train_idx):,} train / {len(val_idx):,} val records, "
         f"{sum(lengths):,} training tokens, vocab {tok.vocab_size:,}; {len(runs)} runs of {runs[0].tokens:,} "
         f"tokens ({runs[0].cfg.train.max_steps} steps){f' = {epochs:.1f} epochs: data repeats' if epochs > 1 else ''}")
    total = sum(s.cost for s in runs)
    bar = tqdm(total=total, initial=sum(s.cost for s in runs if s.name in done), file=sys.stderr,
               dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
               desc=f"scale: {len(done)}/{len(runs)} runs done")
    trained = []
    try:
        for i, spec in enumerate(runs):
            if spec.name in done:
                continue
            bar.set_description(f"scale: run {i + 1}/{len(runs)} {spec.name} ({len(done)} done)")
            rec = run_one(spec, corpus, tok, train_idx, val_idx, out, sc.overwrite, fingerprint)
            done[spec.name] = rec
            trained.append(spec.name)
            bar.update(spec.cost)
            tqdm.write(_describe(rec), file=sys.stderr)
        bar.set_description(f"scale: {len(runs)} runs done")
    finally:
        bar.close()
    points = [done[s.name] for s in runs]
    fits = fit_points(points, sc.irreducible, sc.bootstrap)
    write_outputs(out, points, fits, corpus.source, sc.irreducible)
    return ScaleResult(out, points, fits, trained)


def _say(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)


def _describe(rec: dict) -> str:
    x = f"N={rec['n_params']:,}" if rec["sweep"] == "params" else f"D={rec['dataset_tokens']:,}"
    return (f"  {rec['name']:>12}: d_model {rec['d_model']}, {x}, {rec['tokens']:,} tokens, C={rec['flops']:.2e} FLOPs: "
            f"val loss {rec['best_val_loss']:.4f} ({_duration(rec['wall_s'])})")


def _duration(s: float) -> str:
    return f"{s:.0f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _read_result(run_dir: Path, spec: RunSpec, fingerprint: str) -> dict | None:
    """The result of a finished run, or None; refuses one trained with other settings."""
    import json
    path = run_dir / RESULT
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # half a file cannot happen (atomic writes); anything unreadable is retrained
    if rec.get("corpus_sha256", fingerprint) != fingerprint:
        raise UserError(f"{run_dir} was trained on another version of the corpus: use another --out, "
                        "or --overwrite to retrain every run")
    want = _comparable(spec.cfg.to_dict())
    if rec.get("config") != want or rec.get("dataset_tokens") != spec.dataset_tokens:
        diff = sorted(f"{s}.{k}" for s in want for k in want[s] if rec.get("config", {}).get(s, {}).get(k) != want[s][k])
        raise UserError(f"{run_dir} was trained with other settings ({', '.join(diff) or 'data subset'}): "
                        "use another --out, or --overwrite to retrain every run")
    return rec


# -- fits ------------------------------------------------------------------------------------------
@dataclass
class PowerLawFit:
    """L(x) = E + (x_c / x)^alpha, fitted by least squares on log L (relative errors)."""
    alpha: float
    x_c: float
    E: float = 0.0
    irreducible: bool = False
    alpha_stderr: float = float("nan")   # from the Jacobian at the optimum
    alpha_ci95: tuple[float, float] = (float("nan"), float("nan"))  # residual bootstrap percentiles
    E_stderr: float = float("nan")
    log_x_c_stderr: float = float("nan")
    rmse_log: float = float("nan")       # root mean square residual of log L
    n_points: int = 0

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.E + (self.x_c / x) ** self.alpha

    def to_dict(self) -> dict:
        d = {"form": "L = E + (x_c/x)^alpha" if self.irreducible else "L = (x_c/x)^alpha",
             "alpha": self.alpha, "alpha_stderr": self.alpha_stderr, "alpha_ci95": list(self.alpha_ci95),
             "x_c": self.x_c, "log_x_c_stderr": self.log_x_c_stderr}
        if self.irreducible:
            d.update(E=self.E, E_stderr=self.E_stderr)
        d.update(rmse_log=self.rmse_log, n_points=self.n_points)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _fit_pure(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """log L = alpha (log x_c - u): returns (alpha, log x_c, sse)."""
    A = np.stack([np.ones_like(u), -u], axis=1)
    (a, alpha), *_ = np.linalg.lstsq(A, y, rcond=None)
    sse = float(np.sum((A @ np.array([a, alpha]) - y) ** 2))
    return float(alpha), float(a / alpha) if alpha else float("inf"), sse


def _fit_irreducible(u: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[np.ndarray, float]:
    """theta = (E, alpha, log x_c): a grid over E with the pure fit of log(L - E) to start (the problem
    is linear once E is fixed), then Levenberg-Marquardt on the log-L residuals, E kept in [0, min L)."""
    L = np.exp(y)
    e_max = float(L.min()) * (1 - 1e-6)

    def resid(th):
        E, alpha, lc = th
        return np.log(E + np.exp(alpha * (lc - u))) - y

    best = None
    for E in np.linspace(0.0, e_max * 0.999, 64):
        alpha, lc, _ = _fit_pure(u, np.log(L - E))
        if not (math.isfinite(alpha) and math.isfinite(lc)):
            continue
        th = np.array([E, alpha, lc])
        sse = float(np.sum(resid(th) ** 2))
        if best is None or sse < best[1]:
            best = (th, sse)
    assert best is not None  # the loop above ran at least once
    th, sse = best
    lam = 1e-3
    for _ in range(iters):
        J = _jacobian(th, u)
        r = resid(th)
        g, H = J.T @ r, J.T @ J
        step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -g)
        cand = th + step
        cand[0] = min(max(cand[0], 0.0), e_max)
        c_sse = float(np.sum(resid(cand) ** 2))
        if math.isfinite(c_sse) and c_sse < sse:
            converged = sse - c_sse < 1e-14 * max(sse, 1e-30)
            th, sse, lam = cand, c_sse, lam / 3
            if converged:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return th, sse


def _jacobian(th: np.ndarray, u: np.ndarray) -> np.ndarray:
    E, alpha, lc = th
    P = np.exp(alpha * (lc - u))
    Lhat = E + P
    return np.stack([1 / Lhat, P * (lc - u) / Lhat, P * alpha / Lhat], axis=1)


def fit_power_law(x, loss, irreducible: bool = False, bootstrap: int = 1000, seed: int = 0) -> PowerLawFit:
    """Fit L = (x_c/x)^alpha, or E + (x_c/x)^alpha, to points (x, loss) with uncertainty."""
    x = np.asarray(x, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if len(x) != len(loss) or np.any(x <= 0) or np.any(loss <= 0) or not np.all(np.isfinite(loss)):
        raise ValueError("fit_power_law needs positive, finite x and loss of the same length")
    p = 3 if irreducible else 2
    if len(np.unique(x)) < p:
        raise ValueError(f"fit_power_law needs at least {p} distinct x for this form")
    u, y = np.log(x), np.log(loss)

    def solve(yy):
        if irreducible:
            th, sse = _fit_irreducible(u, yy)
            return th, sse
        alpha, lc, sse = _fit_pure(u, yy)
        return np.array([0.0, alpha, lc]), sse

    th, sse = solve(y)
    n = len(x)
    fit = PowerLawFit(alpha=float(th[1]), x_c=float(math.exp(th[2])), E=float(th[0]), irreducible=irreducible,
                      rmse_log=math.sqrt(sse / n), n_points=n)
    if n > p:
        J = _jacobian(th, u) if irreducible else _jacobian(th, u)[:, 1:]
        s2 = sse / (n - p)
        cov = s2 * np.linalg.pinv(J.T @ J)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        if irreducible:
            fit.E_stderr, fit.alpha_stderr, fit.log_x_c_stderr = map(float, se)
        else:
            fit.alpha_stderr, fit.log_x_c_stderr = map(float, se)
        if bootstrap:
            # Residual bootstrap: with 5-10 points, resampling the points themselves would often drop
            # a whole end of the range; resampling residuals onto the fitted curve keeps every x.
            yhat = np.log(fit.predict(x))
            r = y - yhat
            r = (r - r.mean()) * math.sqrt(n / (n - p))  # undo the shrinkage of fitted residuals
            rng = np.random.default_rng(seed)
            alphas = [solve(yhat + rng.choice(r, n))[0][1] for _ in range(bootstrap)]
            lo, hi = np.percentile(alphas, [2.5, 97.5])
            fit.alpha_ci95 = (float(lo), float(hi))
    return fit


def fit_points(points: list[dict], irreducible: bool, bootstrap: int) -> dict[str, PowerLawFit]:
    """One fit per sweep: params -> L(N) on non-embedding parameters; data -> L(D) on dataset tokens."""
    fits = {}
    for sweep, key in (("params", "n_params"), ("data", "dataset_tokens")):
        pts = [p for p in points if p["sweep"] == sweep]
        need = 3 if irreducible else 2
        if len({p[key] for p in pts}) >= need:
            fits[sweep] = fit_power_law([p[key] for p in pts], [p["best_val_loss"] for p in pts],
                                        irreducible, bootstrap)
    return fits


# -- outputs ---------------------------------------------------------------------------------------
CSV_COLUMNS = ["sweep", "name", "d_model", "n_layer", "n_head", "n_params", "n_params_total", "tokens",
               "dataset_tokens", "flops", "steps", "val_loss", "best_val_loss", "best_step", "train_loss", "wall_s"]


def write_outputs(out: Path, points: list[dict], fits: dict[str, PowerLawFit], source: str,
                  irreducible: bool) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(points)
    atomic_write_text(out / "points.csv", buf.getvalue())
    names = {"params": ("N", "alpha_N"), "data": ("D", "alpha_D")}
    atomic_write_json(out / "fit.json", {
        "corpus": source, "loss": "held-out cross-entropy, nats per token (best of the run's evaluations)",
        "fits": {sweep: {"x": names[sweep][0], **f.to_dict()} for sweep, f in fits.items()},
        "kaplan_2020": KAPLAN,
    })
    plot_scaling(points, fits, out / "scaling", title=source)


def plot_scaling(points: list[dict], fits: dict[str, PowerLawFit], stem: Path, title: str = "") -> list[Path]:
    """Kaplan et al.'s figure 1 layout: one log-log panel per sweep, points and the fitted law with its
    exponent in the legend. Writes stem.png and stem.svg."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    panels = [(s, k, lab, sym) for s, k, lab, sym in (
        ("params", "n_params", "Parameters\nnon-embedding", "N"),
        ("data", "dataset_tokens", "Dataset Size\ntokens", "D")) if any(p["sweep"] == s for p in points)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (sweep, key, label, sym) in zip(axes[0], panels):
        pts = [p for p in points if p["sweep"] == sweep]
        x = np.array([p[key] for p in pts], dtype=float)
        y = np.array([p["best_val_loss"] for p in pts], dtype=float)
        ax.plot(x, y, "o", color="tab:blue" if sweep == "params" else "black", ms=6, zorder=3,
                label=f"{len(pts)} runs")
        f = fits.get(sweep)
        if f is not None:
            xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 100)
            ax.plot(xs, f.predict(xs), "--", color="tab:orange", lw=2, label=_law_label(f, sym))
            if f.irreducible:
                ax.axhline(f.E, color="gray", ls=":", lw=1, label=f"floor E = {f.E:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.legend(fontsize=8, loc="upper right", frameon=False)
        ax.grid(True, which="both", alpha=0.2)
    ax0 = axes[0][0]
    ax0.set_ylabel("Test Loss (nats/token)")
    # Losses span well under a decade: label round values inside the range, not just powers of ten.
    lo, hi = ax0.get_ylim()
    for step in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0):
        ticks = [round(k * step, 2) for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        if len(ticks) <= 7:
            break
    ax0.yaxis.set_major_locator(FixedLocator(ticks))
    ax0.yaxis.set_major_formatter(ScalarFormatter())
    ax0.yaxis.set_minor_formatter(NullFormatter())
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{stem}.{ext}")
        tmp = path.with_name(f"{path.stem}.tmp.{ext}")
        # No creation date in the SVG: re-plotting the same points gives the same file.
        fig.savefig(tmp, dpi=150, metadata={"Date": None} if ext == "svg" else None)
        os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths


def _law_label(f: PowerLawFit, sym: str) -> str:
    mant, exp = f"{f.x_c:.1e}".split("e")
    xc = rf"{mant}\cdot10^{{{int(exp)}}}"
    pm = rf"\pm{f.alpha_stderr:.3f}" if math.isfinite(f.alpha_stderr) else ""
    law = rf"$L=({sym}/{xc})^{{{-f.alpha:.3f}}}$"
    if f.irreducible:
        law = rf"$L={f.E:.2f}+({sym}/{xc})^{{{-f.alpha:.3f}}}$"
    return law + "\n" + rf"$\alpha_{sym}={f.alpha:.3f}{pm}$ (Kaplan {KAPLAN['alpha_' + sym]})"
