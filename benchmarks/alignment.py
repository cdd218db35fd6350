"""The ChatGPT recipe end to end, with a gold reward to see over-optimisation.

Stages (each on the one training loop, through the same functions `gptlab align` calls):
base GPT -> SFT (instruction following at T=1) -> reward model (held-out pair accuracy, beside a
TF-IDF + logistic-regression pair baseline measured in the same run) -> best-of-n, PPO, GRPO and a
DPO beta sweep against it (proxy and gold reward against sqrt(KL), Gao et al.'s forms fitted) ->
reflection tuning (how often one revision fixes a wrong province or variety).

On the built-in corpus the gold reward is the generator's own rule (gptlab.data.instructions.gold_reward):
the points its tier phrases encode, or the floor (80) for a response that does not follow the
instruction. On a Kaggle-layout CSV (--data ../shared/data/wine-reviews.csv) the reviews are split
in two halves: every stage sees only the first; the gold scorer is learned on the second (the floor
again for a wrong country or variety): a reward model of its points pairs, five times the proxy's
(`rm_gold`, the default), or TF-IDF + ridge regression of the points (--gold tfidf), a bag of words
that a policy stringing top reviews' words together fools.

    python benchmarks/alignment.py --quick          # minutes: checks that every stage runs
    python benchmarks/alignment.py                  # the default run (sized for <= 45 min on 2 cores)
    python benchmarks/alignment.py --data ../shared/data/wine-reviews.csv --out runs/alignment_csv

Writes OUT/alignment.json, OUT/alignment.png and OUT/alignment.html. Needs scikit-learn for the
TF-IDF baseline: pip install 'gptlab[families]' (or '[bench]').
`--reuse` keeps the base, SFT and reward models already in OUT and reruns what comes after them.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gptlab.checkpoint import load_checkpoint  # noqa: E402
from gptlab.data import DataConfig, normalize_text, split_records  # noqa: E402
from gptlab.data.instructions import (  # noqa: E402
    NEEDED,
    Pair,
    gold_points,
    gold_reward,
    parse_prompt,
    preference_pairs,
    prompt_of,
    response_of,
    review_rows,
    write_pairs,
)
from gptlab.errors import UserError, run_script  # noqa: E402
from gptlab.settings import check  # noqa: E402
from gptlab.training.align import (  # noqa: E402
    NORM_PROMPTS,
    GoldFn,
    Scorer,
    best_of_n,
    encode_response,
    evaluate_policy,
    load_reward,
    normalise_reward,
    pairs_for,
    policy_prompts,
    response_text,
    sample_responses,
    score,
)
from gptlab.training.config import RUN_PRESETS, RunConfig, TrainConfig  # noqa: E402
from gptlab.training.tasks.causal_lm import train  # noqa: E402
from gptlab.training.tasks.dpo import DPOConfig, dpo  # noqa: E402
from gptlab.training.tasks.ppo import GRPOConfig, PPOConfig, grpo, ppo  # noqa: E402
from gptlab.training.tasks.reward import RewardConfig, train_reward  # noqa: E402
from gptlab.training.tasks.sft import SFTConfig, sft  # noqa: E402


@dataclass
class Plan:
    """Seconds of training per stage and the sizes of the run."""
    builtin_size: int = 20000
    base_preset: str = "fast"       # the best held-out loss for the time (issue 18), context widened below
    # ... but with the output layer tied to the token embedding: an attention head that moves a name's
    # embedding from the instruction to the answer then gives that name's logit directly, so the SFT
    # model copies the asked wine more often. Measured 2026-12-03 on the real-review policy half (base
    # 384 s, SFT 192 s, 900 held-out instructions at T=1): 95.6% name the asked country and variety
    # tied, 93.7% untied (and 96.1% for the earlier recipe, tied with weight decay 0.1).
    base_tie: bool = True
    context: int = 128
    base_s: float = 480
    sft_s: float = 240
    reward_s: float = 180
    small_reward_pairs: int = 100   # the small proxy whose over-optimisation should show
    bon_n: int = 64
    bon_prompts: int = 96
    ppo_s: float = 360              # against the reward model of all the pairs: the gold-gain target
    # 1e-4: at 3e-5 the real-review PPO moved too slowly for its minutes (+0.67 SD at KL 3.4, against
    # +1.17 SD at KL 9.4 at 1e-4 on the same models; RESULTS_alignment.md).
    ppo_lr: float = 1e-4
    # Against the small proxy alone (no KL penalty, no rule penalty, a higher learning rate), as in Gao
    # et al., whose RL runs go to KL in the tens to hundreds of nats: measured 2026-12-02, a 300-pair
    # proxy at lr 3e-5, kl 0.01 (with or without the rule) only reached KL 8-10 in the time, where gold
    # and proxy still rise together; a 100-pair proxy at lr 1e-4, kl 0 goes past the gold's peak.
    overopt_s: float = 360
    overopt_kl: float = 0.0
    overopt_checker_penalty: float = 0.0
    overopt_lr: float = 1e-4
    grpo_s: float = 180
    dpo_betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    dpo_s: float = 60               # 75 before the gold reward model's stage came in (45-minute budget)
    reflect_s: float = 180
    eval_prompts: int = 96
    # Real reviews: the gold reward model. Measured 2026-12-03 (from the SFT model, 400 s, 20,000
    # pairs of the gold half, 12 steps/s): held-out pair accuracy 0.85 at ~60 s, 0.87 at ~200 s, 0.87-0.89
    # from 230 to 400 s (500 pairs; the best is kept). 180 s keeps the default run within 45 minutes.
    gold_pairs: int = 20000
    # Pairs of a real review over a word salad of a top review's words (`word_salad`). Tried, off by
    # default: with 5,000 the gold ranked a held-out review above a salad 93% of the time, but its
    # points fit fell (held-out r 0.78 against 0.84 without) and the policies' own salads still
    # scored 90.5 (RESULTS_alignment.md).
    gold_salad: int = 0
    gold_s: float = 180
    # The training seed of every stage (initialisation, data order, rollouts, PPO's evaluation
    # samples); the data's splits and the held-out prompts stay the same for every seed.
    seed: int = 1337


QUICK = Plan(builtin_size=1500, base_preset="tiny", context=128, base_s=40, sft_s=30, reward_s=20, small_reward_pairs=100,
             gold_pairs=2000, gold_salad=500, gold_s=20,
             bon_n=8, bon_prompts=16, ppo_s=30, overopt_s=20, grpo_s=20, dpo_betas=(0.1, 1.0), dpo_s=10, reflect_s=20,
             eval_prompts=16)


DEVICE = "cpu"
SEED = Plan.seed  # set from --seed in main(), as DEVICE is from --device
GOLD_HALF = "gold_half.csv"
GOLD_FLOOR = 80.0  # the gold of a response that does not follow the instruction (the bottom of the scale)
STAGES = ("bon", "ppo", "overopt", "grpo", "dpo", "reflect")  # the ones --skip can leave out


def loop(out: Path, seconds: float, **kw) -> dict:
    return {"out": str(out), "time_budget": seconds, "max_steps": 0, "epochs": 1000.0, "progress": False,
            "tensorboard": False, "device": DEVICE, "seed": SEED, "overwrite": True, **kw}


def load(folder: Path | str):
    return load_checkpoint(folder, DEVICE)


def timed(name: str, results: dict):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            print(f"== {name}", flush=True)

        def __exit__(self, *exc):
            results.setdefault("seconds", {})[name] = round(time.perf_counter() - self.t0, 1)
    return _T()


# -- stages ------------------------------------------------------------------------------------------------
def base_gpt(plan: Plan, dcfg: DataConfig, out: Path) -> Path:
    """The preset's whole run (model and recipe, as `gptlab train --preset P` has it), with the
    context widened for instruction + response and the time budget of the plan."""
    preset = RUN_PRESETS[plan.base_preset]()
    preset.model.context_length = plan.context
    preset.model.tie_embeddings = plan.base_tie
    recipe = {f.name: getattr(preset.train, f.name) for f in dataclasses.fields(TrainConfig)}
    cfg = RunConfig(preset.model, DataConfig(**{**dcfg.to_dict()}),
                    TrainConfig(**{**recipe, **loop(out, plan.base_s), "sample_prompt": "", "eval_interval": 0}))
    train(cfg)
    return out


def tfidf_pair_baseline(train_pairs, val_pairs) -> float:
    """Held-out pair accuracy of logistic regression on tfidf(chosen) - tfidf(rejected)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit([p.chosen for p in train_pairs] + [p.rejected for p in train_pairs])

    def diff(pairs):
        return vec.transform([p.chosen for p in pairs]) - vec.transform([p.rejected for p in pairs])
    x = diff(train_pairs)
    clf = LogisticRegression(C=4.0, max_iter=2000, fit_intercept=False)
    from scipy.sparse import vstack
    clf.fit(vstack([x, -x]), np.r_[np.ones(x.shape[0]), np.zeros(x.shape[0])])
    return float((clf.decision_function(diff(val_pairs)) > 0).mean())


def fit_gao(sqrt_kl: list[float], gain: list[float], form: str) -> dict[str, float] | None:
    """Least squares of the gold gain over the SFT model: d(alpha - beta d) (best-of-n) or
    d(alpha - beta log d) (RL), d = sqrt(KL)."""
    d = np.asarray(sqrt_kl, dtype=float)
    y = np.asarray(gain, dtype=float)
    keep = d > 1e-6
    if keep.sum() < 2:
        return None
    d, y = d[keep], y[keep]
    second = d * d if form == "bon" else d * np.log(d)
    a, *_ = np.linalg.lstsq(np.stack([d, -second], 1), y, rcond=None)
    return {"alpha": float(a[0]), "beta": float(a[1])}


def csv_halves(path: str, out: Path, seed: int = 0, words_only: bool = False) -> tuple[DataConfig, GoldFn, dict]:
    """The policy's half of a Kaggle-layout CSV (written to OUT) and a gold scorer fitted on the
    other half: TF-IDF + ridge regression of the points on the description. words_only: no number
    is a feature (a barrel sample's review quotes its score range, `94 - 96`, which a policy can copy)."""
    import csv

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    rows = review_rows(DataConfig(data=path))
    policy_idx, gold_idx = split_records(rows, 0.5, seed)
    policy_csv = out / "policy_half.csv"
    gold_rows = [rows[i] for i in gold_idx]
    for path, half in ((policy_csv, [rows[i] for i in policy_idx]), (out / GOLD_HALF, gold_rows)):  # the gold half: for rm_gold
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(NEEDED))
            w.writeheader()
            w.writerows({k: r[k] for k in NEEDED} for r in half)
    fit_idx, test_idx = split_records(gold_rows, 0.1, seed)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=3, sublinear_tf=True,
                          token_pattern=r"(?u)\b[^\W\d_]{2,}\b" if words_only else r"(?u)\b\w\w+\b")
    x = vec.fit_transform([normalize_text(gold_rows[i]["description"]) for i in fit_idx])
    ridge = Ridge(alpha=1.0).fit(x, [gold_rows[i]["points"] for i in fit_idx])
    pred = ridge.predict(vec.transform([normalize_text(gold_rows[i]["description"]) for i in test_idx]))
    truth = np.array([gold_rows[i]["points"] for i in test_idx])
    info = {"gold_rows": len(gold_rows), "policy_rows": len(policy_idx),
            "gold_test_rmse": float(np.sqrt(np.mean((pred - truth) ** 2))), "gold_test_r": float(np.corrcoef(pred, truth)[0, 1])}

    def gold(prompt: str, text: str, ended: bool) -> float:
        parts = text.split(" : ", 3)
        if not _follows(prompt, text, ended):
            return GOLD_FLOOR
        return float(ridge.predict(vec.transform([parts[3]]))[0])
    return DataConfig(data=str(policy_csv), val_fraction=0.05), gold, info


def _follows(prompt: str, text: str, ended: bool) -> bool:
    """The response ended and names the asked country and variety (else the gold's floor)."""
    asked = parse_prompt(prompt)
    parts = text.split(" : ", 3)
    return ended and len(parts) == 4 and parts[0] == asked["country"] and parts[2] == asked["variety"]


def word_salad(row: dict, words_of: dict, rng: random.Random) -> str:
    """`row`'s header with the words of a top review (points >= 92) of its variety, shuffled, a fifth
    of them doubled: what PPO against the small proxy writes once it goes past the gold's peak
    (`93 - 95 . barrel sample . powerfully dry wine , with powerful fruits ...`)."""
    parts = response_of(row).split(" : ", 3)
    words = list(rng.choice(words_of.get(parts[2]) or words_of[""]))
    rng.shuffle(words)
    words = [w for x in words for w in ([x, x] if rng.random() < 0.2 else [x])]
    return " : ".join(parts[:3] + [" ".join(words)])


def rm_gold(plan: Plan, out: Path, init: Path, train: bool) -> tuple[GoldFn, dict]:
    """A gold that reads text as text: a reward model (the proxies' shape and start) trained on
    plan.gold_pairs points pairs of the gold half, which no policy stage sees (Gao et al.'s gold is
    likewise a reward model, bigger and better fed than the proxies), its score mapped to points by
    a line fitted on the gold half's held-out reviews (which none of its pairs use). With
    plan.gold_salad, pairs of a real review over a word salad of a top review's words for the same
    wine too (`word_salad`): a judgement any human rater makes and no points pair teaches."""
    folder = out / "rm_gold"
    gcfg = DataConfig(data=str(out / GOLD_HALF), val_fraction=0.05)
    rows = review_rows(gcfg)
    fit_idx, held_idx = split_records(rows, 0.1, gcfg.seed)
    fit, held = [rows[i] for i in fit_idx], [rows[i] for i in held_idx]
    words_of: dict[str, list[list[str]]] = {"": []}
    for r in fit:
        if r["points"] >= 92:
            _, _, variety, desc = response_of(r).split(" : ", 3)
            words = desc.split()
            words_of.setdefault(variety, []).append(words)
            words_of[""].append(words)
    rng = random.Random(gcfg.seed)
    pairs_file = out / "gold_pairs.jsonl"
    if train:
        pairs = preference_pairs(fit, plan.gold_pairs, gcfg.seed)
        if words_of[""]:  # a corpus without a review of 92+ points has no salad to make
            pairs += [Pair(prompt_of(r), response_of(r), word_salad(r, words_of, rng))
                      for r in rng.choices(fit, k=plan.gold_salad)]
        rng.shuffle(pairs)
        write_pairs(pairs_file, pairs)
        train_reward(RewardConfig(model=str(init), pairs=str(pairs_file), **loop(folder, plan.gold_s)), gcfg)
    rm, tok, cfg = load_reward(str(folder))
    rm.to(DEVICE).eval()

    def raw(pairs: list[tuple[str, str]]) -> np.ndarray:
        with torch.no_grad():
            return score(rm, tok, [encode_response(tok, p, x) for p, x in pairs]).float().numpy()

    s = raw([(prompt_of(r), response_of(r)) for r in held])
    pts = np.array([r["points"] for r in held])
    slope, intercept = np.polyfit(s, pts, 1)
    m = cfg.get("metrics", {})
    info = {"gold_rm_pair_accuracy": m.get("best_val_accuracy", m.get("val_accuracy")),  # of the weights kept
            "gold_rm_points_pairs": plan.gold_pairs,
            "gold_rm_salad_pairs": plan.gold_salad, "gold_rm_held_out_reviews": len(held),
            "gold_rm_held_out_r": float(np.corrcoef(s, pts)[0, 1]),
            "gold_rm_held_out_rmse": float(np.sqrt(np.mean((slope * s + intercept - pts) ** 2)))}
    if words_of[""]:  # how it scores a salad of a top review's words against the real review
        salads = raw([(prompt_of(r), word_salad(r, words_of, random.Random(i))) for i, r in enumerate(held)])
        info.update({"gold_rm_review_above_salad": float(np.mean(s > salads)),
                     "gold_rm_salad_points": float(np.mean(slope * salads + intercept))})

    def gold(prompt: str, text: str, ended: bool) -> float:
        if not _follows(prompt, text, ended):
            return GOLD_FLOOR
        return float(slope * raw([(prompt, text)])[0] + intercept)
    return gold, info


def policy_curve(history: list[dict]) -> list[dict]:
    return [{"step": h["step"], "kl": h["kl"], "reward": h["reward"], "gold": h.get("gold")} for h in history if "kl" in h]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "alignment_bench"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that every stage runs")
    ap.add_argument("--data", default="builtin", help="builtin, or a Kaggle-layout CSV with points")
    ap.add_argument("--base", help="reuse this base GPT instead of pretraining one (context >= 128 advised)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (every stage)")
    ap.add_argument("--seed", type=int, default=Plan.seed,
                    help="training seed of every stage (the data's splits and held-out prompts stay): a second run's check")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply every stage's training seconds by this")
    ap.add_argument("--bon-n", type=int, help="largest n of best-of-n (default 64; quick 8)")
    ap.add_argument("--skip", default="", help=f"comma-separated stages to skip: {','.join(STAGES)}")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the base, SFT and reward models already in --out (rerun the stages after them)")
    ap.add_argument("--small-pairs", type=int, help=f"pairs of the small proxy reward model (default {Plan.small_reward_pairs})")
    ap.add_argument("--gold", default="rm", choices=("rm", "tfidf"),
                    help="real reviews: the gold scorer, a reward model of the gold half's points pairs (rm) "
                         "or TF-IDF + ridge regression of its points (tfidf)")
    ap.add_argument("--gold-salad", type=int, help=f"real reviews, --gold rm: word-salad pairs for the gold (default {Plan.gold_salad})")
    ap.add_argument("--gold-words-only", action="store_true",
                    help="real reviews: the gold scorer's features are words, no numbers")
    ap.add_argument("--ppo-lr", type=float, help=f"learning rate of PPO against the reward model (default {Plan.ppo_lr:g})")
    ap.add_argument("--overopt-kl", type=float, help=f"KL coefficient of PPO against the small proxy (default {Plan.overopt_kl:g})")
    ap.add_argument("--overopt-lr", type=float, help=f"learning rate of PPO against the small proxy (default {Plan.overopt_lr:g})")
    ap.add_argument("--overopt-checker-penalty", type=float, help=f"rule penalty in PPO against the small proxy (default {Plan.overopt_checker_penalty:g})")
    args = ap.parse_args()
    if args.gold_words_only and args.gold != "tfidf":
        raise UserError("--gold-words-only chooses the TF-IDF gold's features: add --gold tfidf")
    if args.gold_words_only and args.data == "builtin":
        raise UserError("--gold-words-only is for real reviews (--data a CSV): the built-in corpus's gold is its "
                        "generator's exact rule, which has no features to choose")
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(STAGES)
    if unknown:
        raise UserError(f"--skip {','.join(sorted(unknown))}: no such stage; the stages are {','.join(STAGES)}")
    check(TrainConfig(seed=args.seed))  # the seed's own range, before OUT is made (the loop checks it there too)
    if args.time_scale <= 0:
        raise UserError(f"--time-scale must be > 0 (got {args.time_scale:g})")
    global DEVICE, SEED
    DEVICE = args.device
    plan = dataclasses.replace(QUICK if args.quick else Plan())
    for f in dataclasses.fields(plan):
        if f.name.endswith("_s"):
            setattr(plan, f.name, getattr(plan, f.name) * args.time_scale)
    for name, field in (("bon_n", "bon_n"), ("small_pairs", "small_reward_pairs"), ("overopt_kl", "overopt_kl"),
                        ("overopt_lr", "overopt_lr"), ("ppo_lr", "ppo_lr"), ("gold_salad", "gold_salad"), ("overopt_checker_penalty", "overopt_checker_penalty")):
        if getattr(args, name) is not None:
            setattr(plan, field, getattr(args, name))
    SEED = plan.seed = args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"plan": vars(plan), "data": args.data, "gold_kind": args.gold}
    gold: GoldFn
    if args.data == "builtin":
        dcfg, gold = DataConfig(builtin_size=plan.builtin_size, val_fraction=0.05), gold_reward
    else:
        dcfg, gold, results["gold_scorer"] = csv_halves(args.data, out, words_only=args.gold_words_only)
        if args.quick:
            dcfg.max_records = plan.builtin_size
        print("gold scorer", results["gold_scorer"])

    # --reuse: the stages before policy optimisation are kept with their figures (stages.json), so
    # that the policy stages can be rerun on the same SFT model and proxies.
    stages_file = out / "stages.json"
    kept = json.loads(stages_file.read_text()) if args.reuse and stages_file.is_file() else {}

    def keep(name: str, folder: Path, key=None) -> bool:
        return name in kept and (folder / "config.json").is_file() and kept[name].get("key") == key

    def save(name: str, figures: dict, key=None) -> None:
        kept[name] = {"key": key, "figures": figures}
        stages_file.write_text(json.dumps(kept, indent=2))

    with timed("base", results):
        if args.base:
            base = Path(args.base)
        elif keep("base", out / "base"):
            base = out / "base"
        else:
            base = base_gpt(plan, dcfg, out / "base")
            save("base", {})
    with timed("sft", results):
        if keep("sft", out / "sft", str(base)):
            results["sft"] = kept["sft"]["figures"]
        else:
            r = sft(SFTConfig(model=str(base), check_samples=plan.eval_prompts * 2, **loop(out / "sft", plan.sft_s)), dcfg)
            results["sft"] = {k: r.metrics[k] for k in ("stop_rate", "follow_rate", "asked_rate", "train_examples",
                                                        "dropped_too_long", "steps")}
            save("sft", results["sft"], str(base))
        print(results["sft"])
    sft_dir = out / "sft"
    if args.data != "builtin" and args.gold == "rm":
        with timed("gold reward model", results):
            made = not keep("rm_gold", out / "rm_gold", str(sft_dir))
            gold, figures = rm_gold(plan, out, sft_dir, train=made)
            results["gold_scorer"].update(figures)
            if made:
                save("rm_gold", figures, str(sft_dir))
            print("gold scorer", results["gold_scorer"])

    with timed("reward", results):
        if keep("rm", out / "rm"):
            results["reward"] = dict(kept["rm"]["figures"])
        else:
            rcfg = RewardConfig(model=str(sft_dir), **loop(out / "rm", plan.reward_s))
            r = train_reward(rcfg, dcfg)
            train_pairs, val_pairs = pairs_for(rcfg, dcfg)
            results["reward"] = {"val_accuracy": r.metrics["val_accuracy"], "train_pairs": r.metrics["train_pairs"],
                                 "tfidf_logreg_val_accuracy": tfidf_pair_baseline(train_pairs, val_pairs)}
            save("rm", results["reward"])
        if keep("rm_small", out / "rm_small", plan.small_reward_pairs):
            results["reward"].update(kept["rm_small"]["figures"])
        else:
            small_cfg = RewardConfig(model=str(sft_dir), n_pairs=plan.small_reward_pairs, **loop(out / "rm_small", plan.reward_s / 3))
            small = {"small_val_accuracy": train_reward(small_cfg, dcfg).metrics["val_accuracy"],
                     "small_pairs": plan.small_reward_pairs}
            results["reward"].update(small)
            save("rm_small", small, plan.small_reward_pairs)
        print(results["reward"])
    # Two proxies: the reward model of all the pairs, which PPO, GRPO and best-of-n optimise, and a
    # small one (few pairs) whose over-optimisation the gold reward shows (Gao et al.'s setting).
    proxy, small_proxy = str(out / "rm"), str(out / "rm_small")

    model, tok, _ = load(sft_dir)
    rm, _, _ = load_reward(proxy)
    rm.to(DEVICE)
    scorer = Scorer(tok, model=rm, no_end_penalty=1.0, checker_penalty=PPOConfig.checker_penalty)
    train_prompts, _ = policy_prompts(dcfg, plan.eval_prompts)
    normalise_reward(scorer, model, tok, train_prompts[:NORM_PROMPTS], SEED)  # as PPO and GRPO do
    _, prompts = policy_prompts(dcfg, plan.eval_prompts)
    results["sft_eval"] = evaluate_policy(model, model, tok, prompts, scorer, 0, gold)
    results["sft_eval"]["gold_sd"] = _gold_sd(model, tok, prompts, gold)  # the unit of gold improvement
    print("sft eval", results["sft_eval"])

    if "bon" not in skip:
        with timed("bon", results):
            _, bon_prompts = policy_prompts(dcfg, plan.bon_prompts)
            results["bon"] = best_of_n(model, tok, bon_prompts, scorer, plan.bon_n, 0, gold)
    if "ppo" not in skip:
        with timed("ppo", results):
            r = ppo(PPOConfig(model=str(sft_dir), reward=proxy, val_rows=plan.eval_prompts, eval_interval=20,
                              **loop(out / "ppo", plan.ppo_s, lr=plan.ppo_lr)), dcfg, gold=gold)
            results["ppo"] = policy_curve(r.history)
    if "overopt" not in skip:
        with timed("ppo against the small proxy", results):
            r = ppo(PPOConfig(model=str(sft_dir), reward=small_proxy, val_rows=plan.eval_prompts, eval_interval=20,
                              kl_coef=plan.overopt_kl, checker_penalty=plan.overopt_checker_penalty,
                              **loop(out / "ppo_small", plan.overopt_s, lr=plan.overopt_lr)), dcfg, gold=gold)
            results["ppo_small_proxy"] = policy_curve(r.history)
    if "grpo" not in skip:
        with timed("grpo", results):
            r = grpo(GRPOConfig(model=str(sft_dir), reward=proxy, val_rows=plan.eval_prompts, eval_interval=10,
                                **loop(out / "grpo", plan.grpo_s, lr=3e-5)), dcfg, gold=gold)
            results["grpo"] = policy_curve(r.history)
    if "dpo" not in skip:
        results["dpo"] = []
        for beta in plan.dpo_betas:
            with timed(f"dpo beta {beta}", results):
                dpo(DPOConfig(model=str(sft_dir), beta=beta, **loop(out / f"dpo_{beta}", plan.dpo_s)), dcfg)
                pol, _, _ = load(out / f"dpo_{beta}")
                results["dpo"].append({"beta": beta, **evaluate_policy(pol, model, tok, prompts, scorer, 0, gold)})
    if "reflect" not in skip:
        with timed("reflect", results):
            # SFT's own default lr (1e-2): on one SFT model of real reviews and 144 s, one revision fixed
            # 72.4% / 81.8% / 84.1% / 90.1% of 384 held-out drafts at lr 5e-4 / 2e-3 / 5e-3 / 1e-2, on the
            # built-in corpus 97.4% / 97.9% at 5e-3 / 1e-2 (2026-12-02, RESULTS_alignment.md); 384 drafts
            # put the standard error near 2%.
            r = sft(SFTConfig(model=str(sft_dir), reflection=1.0, check_samples=plan.eval_prompts * 4,
                              **loop(out / "reflect", plan.reflect_s)), dcfg)
            results["reflect"] = {k: r.metrics.get(k) for k in ("fix_rate", "revision_gold", "follow_rate")}

    results["fits"] = fits(results)
    results["targets"] = targets(results)
    results["samples"] = side_by_side(out, base, prompts[:4], scorer, gold)
    (out / "alignment.json").write_text(json.dumps(results, indent=2))
    report(out, results)
    print(json.dumps({k: results[k] for k in ("sft", "reward", "fits", "targets", "seconds") if k in results}, indent=2))
    return 0


def _gold_sd(model, tok, prompts, gold: GoldFn) -> float:
    """The standard deviation of the gold reward over the SFT model's responses (one per prompt)."""
    g = torch.Generator(device=DEVICE).manual_seed(1)
    ids = [tok.encode_prompt(p) for p in prompts]
    out = sample_responses(model, tok, ids, max_new=model.cfg.context_length + 1 - max(map(len, ids)), temperature=1.0, generator=g)
    return float(np.std([gold(p, response_text(tok, s.ids), s.ended) for p, s in zip(prompts, out)]))


def fits(results: dict) -> dict:
    base = results["sft_eval"]["gold"]
    out = {}
    if results.get("bon"):
        b = results["bon"]
        out["bon"] = fit_gao([math.sqrt(r["kl"]) for r in b], [r["gold"] - base for r in b], "bon")
    for name in ("ppo", "grpo", "ppo_small_proxy"):
        pts = [p for p in results.get(name, []) if p["gold"] is not None]
        if pts:
            out[name] = fit_gao([math.sqrt(max(p["kl"], 0)) for p in pts], [p["gold"] - base for p in pts], "rl")
    return out


def side_by_side(out: Path, base: Path, prompts: list[str], scorer: Scorer, gold: GoldFn) -> list[dict]:
    """One sample per model for the same prompts, with proxy and gold rewards."""
    rows = []
    for name in ("sft", "ppo", "grpo", "dpo_0.1"):
        folder = out / name
        if not (folder / "config.json").is_file():
            continue
        m, t, _ = load(folder)
        ids = [t.encode_prompt(p) for p in prompts]
        g = torch.Generator(device=DEVICE).manual_seed(0)
        s = sample_responses(m, t, ids, max_new=m.cfg.context_length + 1 - max(map(len, ids)), temperature=1.0, generator=g)
        proxy = scorer(ids, s).tolist()
        for p, x, r in zip(prompts, s, proxy):
            text = response_text(t, x.ids)
            rows.append({"model": name, "prompt": p, "text": text, "proxy": r, "gold": gold(p, text, x.ended)})
    m, t, _ = load(base)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for x in sample_responses(m, t, [t.encode_prompt("wine review :")] * len(prompts), max_new=m.cfg.context_length - 4,
                              temperature=1.0, generator=g):
        text = response_text(t, x.ids)
        rows.append({"model": "base", "prompt": "wine review :", "text": text, "proxy": None,
                     "gold": gold_points(text) if gold is gold_reward else None})  # the base model takes no instruction
    return rows


def targets(results: dict) -> dict:
    """The issue's checks, each with the figures it rests on."""
    # The SFT target counts the asked country and variety; follow_rate (also a province of the
    # country, and an end) is the stricter figure beside it.
    out: dict = {"sft_names_asked_country_and_variety>=0.95": results["sft"]["asked_rate"] >= 0.95,
                 "sft_follow_rate_strict": results["sft"]["follow_rate"]}
    rm = results["reward"]
    out["reward_model_beats_tfidf"] = rm["val_accuracy"] > rm["tfidf_logreg_val_accuracy"]
    base, sd = results["sft_eval"]["gold"], results["sft_eval"]["gold_sd"]
    ppo = [p for p in results.get("ppo", []) if p["gold"] is not None]
    within = [p for p in ppo if p["kl"] <= 10]
    if within and sd > 0:
        best = max(within, key=lambda p: p["gold"])
        out["ppo_best_gold_gain_in_sft_sd_at_kl<=10"] = (best["gold"] - base) / sd
        out["ppo_gold_gain>=1sd"] = (best["gold"] - base) >= sd
    small = [p for p in results.get("ppo_small_proxy", []) if p["gold"] is not None]
    if small:
        # Over-optimisation against the small proxy: the gold reward's peak comes before the end and the
        # last points' gold is below it by more than the evaluation's noise (2 standard errors of a mean
        # over the eval prompts), while the proxy at the end is above the proxy at the peak.
        # The peak is taken on a 3-point moving average: the maximum of single noisy evaluations would
        # sit above the true peak by about the noise, and make a fall easy to "see".
        gold_curve, proxy_curve = (_smooth([p[k] for p in small]) for k in ("gold", "reward"))
        peak = int(np.argmax(gold_curve))
        last = small[-max(len(small) // 4, 1):]
        se = sd / math.sqrt(results["plan"]["eval_prompts"])
        late_gold = float(np.mean([p["gold"] for p in last]))
        late_proxy = float(np.mean([p["reward"] for p in last]))
        out["small_proxy_gold_peak"] = {"step": small[peak]["step"], "kl": small[peak]["kl"], "gold": float(gold_curve[peak]),
                                        "proxy": float(proxy_curve[peak]), "late_gold": late_gold, "late_proxy": late_proxy}
        out["overoptimisation_visible"] = bool(peak < len(small) - len(last) and late_gold < gold_curve[peak] - 2 * se
                                               and late_proxy > proxy_curve[peak])
        f = results.get("fits", {}).get("ppo_small_proxy")
        if f and f["beta"] > 0:
            out["small_proxy_fit_peak_sqrt_kl"] = math.exp(f["alpha"] / f["beta"] - 1)  # argmax of d(a - b log d)
    if results.get("dpo") and len(ppo) >= 2:
        kl = np.array([p["kl"] for p in ppo])
        order = np.argsort(kl)
        out["dpo_vs_ppo_gold_at_equal_kl"] = [
            {"beta": d["beta"], "kl": d["kl"], "dpo_gold": d["gold"],
             "ppo_gold": float(np.interp(d["kl"], kl[order], np.array([p["gold"] for p in ppo])[order]))
             if kl.min() <= d["kl"] <= kl.max() else None}
            for d in results["dpo"]]
    if results.get("reflect") and results["reflect"].get("fix_rate") is not None:
        out["reflection_fix_rate>=0.8"] = results["reflect"]["fix_rate"] >= 0.8
    return out


def _smooth(y: list[float]) -> np.ndarray:
    """A 3-point moving average (the ends keep their own value)."""
    out = np.array(y, dtype=float)
    if len(y) >= 3:
        out[1:-1] = np.convolve(y, np.ones(3) / 3, mode="valid")
    return out


def _num(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def report(out: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    base_gold = results["sft_eval"]["gold"]
    series = []
    if results.get("bon"):
        series.append(("best-of-n", [(math.sqrt(r["kl"]), r["reward"], r["gold"]) for r in results["bon"]], "o-"))
    for name, label in (("ppo", "PPO"), ("grpo", "GRPO"), ("ppo_small_proxy", "PPO, small proxy")):
        pts = [(math.sqrt(max(p["kl"], 0)), p["reward"], p["gold"]) for p in results.get(name, [])]
        if pts:
            series.append((label, pts, ".-"))
    if results.get("dpo"):
        series.append(("DPO (beta sweep)", [(math.sqrt(max(r["kl"], 0)), r["reward"], r["gold"]) for r in results["dpo"]], "s"))
    for label, pts, style in series:
        d, proxy, gold = zip(*pts)
        axes[0].plot(d, proxy, style, label=label)
        axes[1].plot(d, gold, style, label=label)
    for name, f in results.get("fits", {}).items():
        if f is None:
            continue
        # Over its own run's range only: extrapolated, the forms run off the axis and flatten the curves.
        d = np.linspace(1e-3, max([math.sqrt(max(p["kl"], 0)) for p in results.get(name, [])] + [1e-2]), 100)
        y = d * (f["alpha"] - f["beta"] * (d if name == "bon" else np.log(d)))  # Gao et al.'s forms
        axes[1].plot(d, base_gold + y, ":", label=f"Gao fit {name}: a={f['alpha']:.2f}, b={f['beta']:.2f}")
    axes[0].set(xlabel="sqrt(KL to SFT), nats^0.5", ylabel="proxy reward (the reward model the run optimised)", title="proxy")
    axes[1].set(xlabel="sqrt(KL to SFT), nats^0.5", ylabel="gold reward (points the wording encodes)" if results["data"] == "builtin"
               else f"gold reward (points, {results.get('gold_kind', 'tfidf')} gold of the other half)", title="gold")
    for a in axes:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "alignment.png", dpi=120)
    png = base64.b64encode((out / "alignment.png").read_bytes()).decode()
    rows = "".join(f"<tr><td>{html.escape(s['model'])}</td><td>{html.escape(s['prompt'])}</td><td>{html.escape(s['text'])}</td>"
                   f"<td>{_num(s['proxy'], 2)}</td><td>{_num(s['gold'], 1)}</td></tr>" for s in results.get("samples", []))
    summary = html.escape(json.dumps({k: results.get(k) for k in ("sft", "reward", "sft_eval", "reflect", "fits", "targets", "seconds")},
                                     indent=2))
    (out / "alignment.html").write_text(
        "<!doctype html><meta charset=utf-8><title>gptlab alignment</title>"
        "<h1>The ChatGPT recipe on wine reviews</h1>"
        f"<img src='data:image/png;base64,{png}' style='max-width:100%'>"
        f"<h2>Figures</h2><pre>{summary}</pre>"
        "<h2>Samples</h2><table border=1 cellpadding=4><tr><th>model</th><th>prompt</th><th>text</th><th>proxy</th><th>gold</th></tr>"
        f"{rows}</table>", encoding="utf-8")
    print(f"wrote {out / 'alignment.html'} and {out / 'alignment.png'}")


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))
