"""`gptlab scale`: a ladder of GPT sizes on one corpus, the power law fitted to it (Kaplan et al. 2020)."""

from __future__ import annotations

import argparse
import sys

from gptlab.cli.options import add_options, given
from gptlab.cli.train import config_from_args, run_sections
from gptlab.errors import UserError

# Settings the sweep chooses for every run unless the user gives them (flag or TOML key).
SCALE_DEFAULTS = {
    ("train", "out"): "runs/scale",
    # Runs of a few hundred steps are step-limited at the small preset's 1e-3: on the built-in corpus
    # d_model 16 ends at 5.04 nats/token with 1e-3 and 2.36 with 1e-2, and d_model 128 is best near
    # 1e-2 (1.10; 1.16 at 3e-2). See benchmarks/RESULTS_scale.md.
    ("train", "lr"): 1e-2,
    ("model", "dropout"): 0.0,          # one pass over the data (or early stopping): nothing to regularise
    ("train", "eval_interval"): 0,      # one evaluation at the end (the data sweep sets its own)
    ("train", "eval_batches"): 0,       # the whole held-out split
    ("train", "sample_prompt"): "",
    ("train", "save_interval"): 0,      # a checkpoint at the end, and on Ctrl-C
    ("train", "progress"): False,       # one bar over the runs instead
    ("train", "tensorboard"): False,
}
# Settings the sweep owns: giving one is an error that says what to use instead.
CONTROLLED = {
    ("train", "max_steps"): "it is set from --tokens",
    ("train", "epochs"): "the budget is --tokens",
    ("train", "time_budget"): "the budget is --tokens",
    ("train", "resume"): "the sweep resumes by itself: rerun the same command",
    ("train", "batching"): "the sweep packs batches so tokens per step are exact",
    ("model", "d_model"): "it is the size dial: use --sizes",
    ("model", "d_ff"): "it is 4 x d_model on every rung",
    ("model", "head_dim"): "heads are d_model / n_head wide on every rung",
}


def _counts(values: list[str]) -> list[str]:
    """`--sizes 32 64`, `--sizes 32,64` and `--sizes "32 64"` all mean the same."""
    return [v for s in values for v in s.replace(",", " ").split()]


def register(sub) -> None:
    p = sub.add_parser(
        "scale", help="scaling laws: train a ladder of model sizes, fit L(N) ~ N^-alpha (Kaplan et al. 2020)",
        description="Train GPTs of several widths (d_model; n_layer and n_head fixed, d_ff = 4 d_model) on "
                    "the same corpus for the same token budget, and fit the held-out loss to "
                    "L(N) = (N_c/N)^alpha_N, N = non-embedding parameters. With --data-sizes, also train one "
                    "size on subsets of the corpus and fit L(D). Writes OUT/points.csv, OUT/fit.json and "
                    "OUT/scaling.png/.svg; rerunning the same command skips finished runs. Every training "
                    "flag of `gptlab train` applies to every run (e.g. --device cuda --precision bf16 "
                    "--n-layer 6 --lr 2e-3).",
    )
    g = p.add_argument_group("scaling sweep")
    g.add_argument("--sizes", nargs="+", metavar="D_MODEL",
                   help="d_model of each rung, multiples of --n-head "
                        "(default: 16 24 32 48 64 96 128: 13k to 0.8M non-embedding parameters at 4 layers)")
    g.add_argument("--tokens", metavar="N",
                   help="training tokens per run, e.g. 500k, 1M, 2e9 (default: 1M, about 0.8 epoch of --data builtin)")
    g.add_argument("--data-sizes", nargs="+", metavar="TOKENS",
                   help="also fit L(D): train --data-model-size on random subsets of this many training tokens "
                        "(each for --tokens, keeping the best held-out loss); 'auto' = 1/32, 1/16 .. 1 of --tokens")
    g.add_argument("--data-model-size", type=int, default=0, metavar="D_MODEL",
                   help="d_model of the data sweep (default: the largest of --sizes)")
    g.add_argument("--irreducible", action="store_true",
                   help="fit L = E + (x_c/x)^alpha (an entropy floor E) instead of L = (x_c/x)^alpha")
    g.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the exponent's 95%% interval (0 = Jacobian error only)")
    add_options(p, run_sections(_help_base()))
    p.set_defaults(func=run)


def _help_base():
    """The small preset with the sweep's defaults, so --help shows what a run of the sweep uses."""
    from gptlab.training.config import preset_small
    cfg = preset_small()
    for (section, name), value in SCALE_DEFAULTS.items():
        setattr(getattr(cfg, section), name, value)
    cfg.train.batching = "pack"
    return cfg


def user_set(args: argparse.Namespace) -> set[tuple[str, str]]:
    """(section, field) of every setting given by a flag or in the --config TOML file."""
    return {(s, k) for s, vals in given(args, "scale").items() for k in vals}


def build_configs(args: argparse.Namespace):
    from gptlab.training.scale import DATA_FRACTIONS, DEFAULT_SIZES, DEFAULT_TOKENS, ScaleConfig, parse_count

    cfg = config_from_args(args, "scale")
    given = user_set(args)
    for key, why in CONTROLLED.items():
        if key in given:
            raise UserError(f"--{args._options.flags[key].replace('_', '-')} is not a setting of gptlab scale: {why}")
    for (section, name), value in SCALE_DEFAULTS.items():
        if (section, name) not in given:
            setattr(getattr(cfg, section), name, value)
    cfg.train.batching = "pack"
    if args.sizes is None:
        sizes = list(DEFAULT_SIZES)
    else:
        sizes = []
        for s in _counts(args.sizes):
            try:
                sizes.append(int(s))
            except ValueError:
                raise UserError(f"--sizes {s!r} is not a whole number: give d_model values, e.g. --sizes 32 64 128") from None
    tokens = DEFAULT_TOKENS if args.tokens is None else parse_count(args.tokens)
    data_sizes: list[int] = []
    if args.data_sizes is not None:
        words = _counts(args.data_sizes)
        if not words:
            raise UserError("--data-sizes is empty: give token counts (e.g. 62k 125k 250k) or 'auto'")
        if words == ["auto"]:
            data_sizes = [max(int(tokens * f), 1) for f in DATA_FRACTIONS]
        else:
            data_sizes = [parse_count(w) for w in words]
    sc = ScaleConfig(sizes=sizes, tokens=tokens, data_sizes=data_sizes, data_model_size=args.data_model_size,
                     irreducible=args.irreducible, bootstrap=args.bootstrap, overwrite=cfg.train.overwrite)
    cfg.train.overwrite = False
    return cfg, sc


def run(args) -> int:
    from gptlab.training.scale import KAPLAN, run_scale

    cfg, sc = build_configs(args)
    try:
        result = run_scale(cfg, sc)
    except KeyboardInterrupt:
        print(f"gptlab scale: interrupted; finished runs in {cfg.train.out} are kept and the one in progress "
              "saved a checkpoint: rerun the same command to continue", file=sys.stderr)
        return 130
    for sweep, sym in (("params", "N"), ("data", "D")):
        f = result.fits.get(sweep)
        if f is None:
            continue
        lo, hi = f.alpha_ci95
        ci = f", 95% interval {lo:.3f} to {hi:.3f}" if lo == lo else ""
        floor = f", floor E = {f.E:.3f}" if f.irreducible else ""
        print(f"alpha_{sym} = {f.alpha:.3f} +- {f.alpha_stderr:.3f}{ci}{floor} "
              f"(Kaplan et al. 2020: {KAPLAN['alpha_' + sym]})")
    print(f"{len(result.points)} runs ({len(result.trained)} trained now); "
          f"{result.out}/points.csv, fit.json, scaling.png, scaling.svg")
    return 0

