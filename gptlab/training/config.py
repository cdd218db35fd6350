"""Training settings: the loop's own (LoopConfig, shared by every family) and the GPT's run
(RunConfig = model + data + train), with named presets as plain functions.

Precedence on the command line: preset < TOML file (`--config run.toml`) < flags typed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from gptlab.data.config import DataConfig
from gptlab.errors import UserError
from gptlab.model.config import PRESETS as MODEL_PRESETS
from gptlab.model.config import ModelConfig
from gptlab.settings import check, setting

DEVICES_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"


# build_optimizer's names; one tuple, so a family that changes the default keeps the same choices.
OPTIMIZERS = ("adamw", "adam", "muon")


@dataclass
class LoopConfig:
    """What the one training loop reads. Each family's config adds its data and model fields and
    may change a default (a translator warms up longer than a GPT)."""
    out: str = setting("runs/model", "output folder for the model, checkpoints and TensorBoard logs ('' = keep nothing)")
    max_steps: int = setting(0, "optimizer steps to run; 0 = from --epochs", min=0)
    epochs: float = setting(1.0, "passes over the training data (ignored when --max-steps is set)", min=0)
    time_budget: float = setting(0.0, "stop after this many seconds of training (0 = no limit); the LR schedule is planned for the budget", min=0)
    batch_size: int = setting(32, "items (sequences, pairs, rows) per optimizer step, split over --grad-accum and processes", min=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", min=1)
    optimizer: str = setting("adamw", "adamw; adam (the notebook's Keras Adam); or muon (Muon on the blocks' weight matrices, AdamW on the embeddings, output layer, biases and norms, at one learning rate)", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "peak learning rate", min=0)
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine schedule", min=0)
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)", min=0)
    beta1: float = setting(0.9, "Adam beta1", min=0, below=1)
    beta2: float = setting(0.95, "Adam beta2", min=0, below=1)
    adam_eps: float = setting(1e-8, "Adam epsilon", above=0)
    warmup_steps: int = setting(100, "linear learning-rate warmup steps (a run shorter than 4x this warms up for a quarter of its steps)", min=0)
    schedule: str = setting("cosine", "cosine (after warmup) or constant", choices=("cosine", "constant"))
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)", min=0)
    ema: float = setting(0.0, "decay of an exponential moving average of the weights, which is what is evaluated and kept (e.g. 0.999; 0 = off)", min=0, below=1)
    keep_best: bool = setting(False, "end with the weights of the best evaluation by the task's metric (early stopping)")
    precision: str = setting("auto", "auto (bf16 where the hardware is fast at it), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    compile: bool = setting(False, "torch.compile the model")
    device: str = setting("auto", DEVICES_HELP)
    threads: int = setting(0, "CPU threads for torch (0 = torch's default: all cores)", min=0)
    eval_interval: int = setting(200, "steps between evaluations (0 = only at the end)", min=0)
    save_interval: int = setting(500, "steps between checkpoints (0 = only at the end)", min=0)
    keep_checkpoints: int = setting(2, "checkpoints kept in OUT/checkpoints, newest first (an older one is what --resume falls back to when the newest is damaged)", min=1)
    log_interval: int = setting(10, "steps between TensorBoard/progress updates", min=1)
    seed: int = setting(1337, "seed for initialisation, data order, masking and dropout", min=0, max=2**63 - 1)
    resume: bool = setting(False, "continue the run saved in --out exactly where it stopped")
    overwrite: bool = setting(False, "replace a model already in --out")
    tensorboard: bool = setting(True, "write TensorBoard scalars to OUT/tb")
    progress: bool = setting(True, "show a progress bar")

    def validate(self) -> None:
        check(self)
        if self.batch_size % self.grad_accum:
            raise UserError(f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum}")
        if self.max_steps == 0 and self.epochs == 0 and self.time_budget == 0:
            raise UserError("nothing to train: set --epochs, --max-steps or --time-budget above 0")
        if self.resume and not self.out:
            raise UserError("--resume needs --out: the folder of the run to continue")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def own_fields(cls: type, also: tuple[str, ...] = ("out",)) -> list[str]:
    """A family config's fields that are not the loop's (and `also`): the CLI lists them first."""
    loop = {f.name for f in fields(LoopConfig)}
    return [f.name for f in fields(cls) if f.name not in loop or f.name in also]


@dataclass
class FamilyLoopConfig(LoopConfig):
    """The loop's defaults for the encoder and encoder-decoder families: BERT's and Vaswani's
    recipes rather than the GPT's (bigger batches, longer warmup, light weight decay, beta2 0.98,
    fp32), and the tokenizer they fit on their training text."""
    tokenizer: str = setting("word", "word or bpe", choices=("word", "bpe"))
    vocab_size: int = setting(10000, "vocabulary cap", min=2)
    batch_size: int = setting(64, "items (texts, pairs, rows) per step, split over --grad-accum and processes", min=1)
    warmup_steps: int = setting(200, "linear warmup steps (a run shorter than 4x this warms up for a quarter of its steps)", min=0)
    weight_decay: float = setting(0.01, "AdamW weight decay (matrices only)", min=0)
    beta2: float = setting(0.98, "Adam beta2 (Vaswani et al.: 0.98)", min=0, below=1)
    eval_interval: int = setting(500, "steps between evaluations (0 = only at the end)", min=0)
    precision: str = setting("fp32", "fp32, bf16 or auto (bf16 where the hardware is fast at it)", choices=("auto", "fp32", "bf16"))


def fit_vocab(mcfg: Any, vocab_size: int) -> Any:
    """The model config sized for the tokenizer, checked: a bad shape is a one-line error."""
    mcfg.vocab_size = vocab_size
    try:
        mcfg.validate()
    except ValueError as e:
        raise UserError(f"bad model setting: {e}") from None
    return mcfg


@dataclass
class TrainConfig(LoopConfig):
    """`gptlab train`: the loop's settings with the GPT's defaults, and its own."""
    out: str = setting("runs/gpt", "output folder for the model, checkpoints and TensorBoard logs")
    preset: str = setting("small", "starting point for every other setting: fast (the best held-out loss for the time on a CPU; give --time-budget), book (the course notebook's model and recipe, exactly), small, tiny (seconds) or gpt2 (GPT-2 small's shape)", choices=tuple(MODEL_PRESETS))
    tokenizer: str = setting("word", "word (the notebook's, with a vocabulary cap) or bpe (byte-level)", choices=("word", "bpe"))
    label_words: bool = setting(True, "the word tokenizer also keeps every word of the label fields (template fields with few distinct values: the wine reviews' country, province, variety) beyond the vocabulary cap (up to a tenth of it more), so no rare name becomes [UNK]")
    label_directions: bool = setting(True, "while training, the output layer's rows of each label field's words (country, province, variety) share one learned direction besides their own, so a rare name moves with the frequent ones and fewer samples stray from the template at T=1; folded into a plain output layer when saved (word tokenizer, untied output layer)")
    label_weight: float = setting(10.0, "each target of a record's header (the template through its last label field: `wine review : country : province : variety :`) counts this many times in the training loss, so fewer samples at T=1 stray from the template; the training loss shown counts each target once, as the held-out loss does (TensorBoard's train/objective is the weighted one); 1 = plain cross-entropy (word tokenizer; not with --batching pack)", min=0)
    epochs: float = setting(5.0, "passes over the training records (ignored when --max-steps is set)", min=0)
    batching: str = setting("bucket", "pad (the notebook: every record padded to the context), bucket (records of similar length together: little padding) or pack (records concatenated: no padding)", choices=("pad", "bucket", "pack"))
    eval_batches: int = setting(20, "validation batches per evaluation (0 = the whole split)", min=0)
    sample_prompt: str = setting("wine review :", "prompt for the sample printed at each evaluation ('' = no samples)")
    sample_temperature: float = setting(1.0, "temperature of that sample", min=0)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return cls(ModelConfig(**d["model"]), DataConfig(**d["data"]), TrainConfig(**d["train"]))


# -- presets: plain functions returning a whole run -------------------------------------------------
def preset_book() -> RunConfig:
    """The course notebook: its model, Keras Adam at 1e-3, batch 32, every record padded to 80, 5 epochs,
    and its vocabulary: the 10,000 most frequent words, nothing kept besides."""
    return RunConfig(
        model=MODEL_PRESETS["book"](),
        train=TrainConfig(preset="book", optimizer="adam", lr=1e-3, min_lr=1e-3, weight_decay=0.0,
                          beta1=0.9, beta2=0.999, adam_eps=1e-7, warmup_steps=0, schedule="constant",
                          grad_clip=0.0, batching="pad", epochs=5.0, batch_size=32, label_words=False,
                          label_directions=False, label_weight=1.0),
    )


def preset_small() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["small"](), train=TrainConfig(preset="small"))


def preset_fast() -> RunConfig:
    """The recipe with the best held-out loss for the time on a CPU (benchmarks/RESULTS.md, issue 18):
    the `fast` model, batch 256, Muon on the blocks' matrices and AdamW on the rest at 2e-2 on a
    cosine schedule (planned for --time-budget when there is one), records bucketed by length, and
    an average of the weights (EMA) as the result, which smooths the last steps' noise out of the
    learned probabilities. Muon at 2e-2 against AdamW at 6e-3, side by side in 240 s on a 2-core AVX2
    CPU: held-out loss 0.922 vs 1.040 and 97.1% vs 90.9% of samples keeping the template; at 1,400
    steps 99.3% vs 98.7% (the loss 0.885 vs 0.877). Batch 256 against 128, 10 minutes of real reviews
    on 2 cores, two seeds: half the steps, the same held-out loss (2.751, 2.747 vs 2.747, 2.749) and
    less of a T=1 sample's probability off the template (0.90% vs 1.08%); batch 64: 2.771, 1.37%.
    No weight decay: in a run of minutes it does not help the held-out loss, and by holding the
    weights small it keeps the logits soft, so samples at T=1 stray from the template more often.
    Epochs are many: give --time-budget, and the schedule ends with it."""
    return RunConfig(model=MODEL_PRESETS["fast"](),
                     train=TrainConfig(preset="fast", optimizer="muon", lr=2e-2, batch_size=256, epochs=20.0,
                                       ema=0.995, weight_decay=0.0))


def preset_tiny() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["tiny"](),
                     train=TrainConfig(preset="tiny", warmup_steps=10, eval_interval=50, epochs=1.0))


def preset_gpt2() -> RunConfig:
    return RunConfig(model=MODEL_PRESETS["gpt2"](),
                     train=TrainConfig(preset="gpt2", lr=6e-4, min_lr=6e-5, batching="pack", batch_size=64))


RUN_PRESETS = {"book": preset_book, "small": preset_small, "fast": preset_fast, "tiny": preset_tiny,
               "gpt2": preset_gpt2}
