"""One way to configure a run: typed dataclasses, presets as functions, TOML files and CLI flags
all mapping onto the same fields.

Precedence: preset < TOML file (`--config run.toml`) < flags given on the command line.
A TOML file may use sections ([model], [data], [train]) or flat keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from gptlab.data.config import DataConfig
from gptlab.errors import UserError
from gptlab.model.config import PRESETS as MODEL_PRESETS
from gptlab.model.config import ModelConfig


@dataclass
class TrainConfig:
    out: str = field(default="runs/gpt", metadata={"help": "output folder for the model, checkpoints and TensorBoard logs"})
    preset: str = field(default="small", metadata={"help": f"starting point for every other setting: {', '.join(MODEL_PRESETS)}"})
    tokenizer: str = field(default="word", metadata={"help": "word (the notebook's, with a vocabulary cap) or bpe (byte-level)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step (split over --grad-accum and GPUs)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    epochs: float = field(default=5.0, metadata={"help": "passes over the training records (ignored when --max-steps is set)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps to run; 0 = from --epochs"})
    time_budget: float = field(default=0.0, metadata={"help": "stop after this many seconds of training (0 = no limit); the LR schedule is planned for the budget"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, or adam (the notebook's Keras Adam)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the end of the cosine schedule"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)"})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.95, metadata={"help": "Adam beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warmup steps"})
    schedule: str = field(default="cosine", metadata={"help": "cosine (after warmup) or constant"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0 = off)"})
    batching: str = field(default="bucket", metadata={"help": "pad (the notebook: every record padded to the context), bucket (records of similar length together: little padding) or pack (records concatenated: no padding)"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware is fast at it), fp32 or bf16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = all cores)"})
    eval_interval: int = field(default=200, metadata={"help": "steps between validation losses (0 = only at the end)"})
    eval_batches: int = field(default=20, metadata={"help": "validation batches per evaluation (0 = the whole split)"})
    sample_prompt: str = field(default="wine review :", metadata={"help": "prompt for the sample printed at each evaluation ('' = no samples)"})
    sample_temperature: float = field(default=1.0, metadata={"help": "temperature of that sample"})
    save_interval: int = field(default=500, metadata={"help": "steps between checkpoints (0 = only at the end)"})
    log_interval: int = field(default=10, metadata={"help": "steps between TensorBoard/progress updates"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, data order and dropout"})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in --out exactly where it stopped"})
    overwrite: bool = field(default=False, metadata={"help": "replace a model already in --out"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars to OUT/tb"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(ModelConfig(**d["model"]), DataConfig(**d["data"]), TrainConfig(**d["train"]))


# -- presets: plain functions returning a whole run -------------------------------------------------
def preset_book() -> RunConfig:
    """The course notebook: its model, Keras Adam at 1e-3, batch 32, every record padded to 80, 5 epochs."""
    return RunConfig(
        model=MODEL_PRESETS["book"](),
        train=TrainConfig(preset="book", optimizer="adam", lr=1e-3, min_lr=1e-3, weight_decay=0.0,
                          beta1=0.9, beta2=0.999, adam_eps=1e-7, warmup_steps=0, schedule="constant",
                          grad_clip=0.0, batching="pad", epochs=5.0, batch_size=32),
    )


def preset_small() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["small"](), train=TrainConfig(preset="small"))


def preset_tiny() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["tiny"](),
                     train=TrainConfig(preset="tiny", warmup_steps=10, eval_interval=50, epochs=1.0))


def preset_gpt2() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["gpt2"](),
                     train=TrainConfig(preset="gpt2", lr=6e-4, min_lr=6e-5, batching="pack", batch_size=64))


RUN_PRESETS = {"book": preset_book, "small": preset_small, "tiny": preset_tiny, "gpt2": preset_gpt2}

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _flag_names() -> dict[tuple[str, str], str]:
    """(section, field) -> flag name. A field name used by two sections gets its section as prefix
    in the later one (data.seed -> --data-seed)."""
    names: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for section in ("train", "model", "data"):
        for f in fields(SECTIONS[section]):
            name = f.name if f.name not in used else f"{section}_{f.name}"
            used.add(name)
            names[(section, f.name)] = name
    return names


FLAG_NAMES = _flag_names()


def add_config_args(parser: argparse.ArgumentParser, base: RunConfig | None = None) -> None:
    """Add one flag per config field. Defaults are shown in help but kept as None in the namespace,
    so only flags the user typed override the preset and the TOML file."""
    base = base or preset_small()
    parser.add_argument("--config", metavar="TOML", help="TOML file with settings ([model]/[data]/[train] sections or flat keys)")
    titles = {"train": "training", "model": "model (defaults shown are the small preset's)", "data": "data"}
    for section in ("train", "model", "data"):
        group = parser.add_argument_group(titles[section])
        obj = getattr(base, section)
        for f in fields(obj):
            flag = "--" + FLAG_NAMES[(section, f.name)].replace("_", "-")
            default = getattr(obj, f.name)
            help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
            dest = f"cfg__{section}__{f.name}"
            if f.type in (bool, "bool"):
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
                metavar = {int: "N", float: "X", str: "S"}[typ]
                group.add_argument(flag, dest=dest, type=typ, default=None, metavar=metavar, help=help_text)


def _coerce(section: str, name: str, value: Any, typ) -> Any:
    tname = typ if isinstance(typ, str) else typ.__name__
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}[tname]
    if not ok(value):
        raise UserError(f"config key {section}.{name} must be {tname}, got {value!r}")
    return float(value) if tname == "float" else value


def load_toml(path: str) -> dict[str, dict[str, Any]]:
    """Read a TOML file into {section: {field: value}}; flat keys are placed by their flag name."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} not found: check the path")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML ({e}): fix it") from None
    by_flag = {flag: key for key, flag in FLAG_NAMES.items()}
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            known = {f.name: f.type for f in fields(SECTIONS[key])}
            for k, v in value.items():
                if k not in known:
                    raise UserError(f"config file {path}: unknown key {key}.{k}; known: {', '.join(known)}")
                out[key][k] = _coerce(key, k, v, known[k])
        elif key.replace("-", "_") in by_flag:
            section, name = by_flag[key.replace("-", "_")]
            typ = {f.name: f.type for f in fields(SECTIONS[section])}[name]
            out[section][name] = _coerce(section, name, value, typ)
        else:
            raise UserError(f"config file {path}: unknown key {key!r}; see `gptlab train --help` for the names")
    return out


def config_from_args(args: argparse.Namespace) -> RunConfig:
    toml = load_toml(args.config) if getattr(args, "config", None) else {s: {} for s in SECTIONS}
    flags: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for dest, value in vars(args).items():
        if dest.startswith("cfg__") and value is not None:
            _, section, name = dest.split("__")
            flags[section][name] = value
    preset = flags["train"].get("preset") or toml["train"].get("preset") or "small"
    if preset not in RUN_PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(RUN_PRESETS)}")
    cfg = RUN_PRESETS[preset]()
    for layer in (toml, flags):
        for section, values in layer.items():
            obj = getattr(cfg, section)
            for k, v in values.items():
                setattr(obj, k, v)
    return cfg
