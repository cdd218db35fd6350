"""The encoder's fine-tuning task: a classifier over a labelled column (`gptlab encoder classify`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptlab.data import DataConfig
from gptlab.data.texts import (
    Labelled,
    encode_texts,
    labelled_rows,
    mask_id,
    n_special,
    train_tokenizer,
    warn_if_other_split,
)
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.classify import KIND_CLASSIFIER, KIND_ENCODER, accuracy, load_encoder
from gptlab.model import ModelConfig
from gptlab.model.encoder import ENCODER_PRESETS, POOLINGS, Classifier
from gptlab.model.padding import pad_batch
from gptlab.settings import setting
from gptlab.training.batches import RowBatches
from gptlab.training.config import FamilyLoopConfig, fit_vocab
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for


@dataclass
class ClassifyConfig(FamilyLoopConfig):
    out: str = setting("runs/classifier", "output folder for the classifier")
    model: str = setting("", "pretrained encoder folder (from `gptlab encoder pretrain`); '' = train from scratch")
    preset: str = setting("small", f"model preset when training from scratch: {', '.join(ENCODER_PRESETS)}", choices=tuple(ENCODER_PRESETS))
    label: str = setting("variety", "column to predict (variety, country, or any column of a CSV/JSONL)")
    text_field: str = setting("description", "column to read the text from")
    top: int = setting(20, "keep the N most common labels (0 = all)", min=0)
    pooling: str = setting("mean", "sentence vector: mean (over real tokens), cls, or meanmax (mean and per-feature max, concatenated)", choices=POOLINGS)
    dev_fraction: float = setting(0.1, "training rows held out to pick the best step by accuracy (with --keep-best; evaluated every --eval-interval steps); 0 = none", min=0, below=0.5)
    word_dropout: float = setting(0.2, "fraction of the words of each training batch hidden as [MASK]: a regularizer for small labelled sets (0 = off)", min=0, below=1)
    # The loop's settings where fine-tuning differs from pretraining.
    epochs: float = setting(3.0, "passes over the training rows (ignored when --max-steps > 0)", min=0)
    lr: float = setting(3e-4, "peak learning rate", min=0)
    warmup_steps: int = setting(100, "linear warmup steps (a run shorter than 4x this warms up for a quarter of its steps)", min=0)
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine", min=0)
    ema: float = setting(0.999, "decay of an exponential moving average of the weights, which is what is evaluated and kept (0 = off)", min=0, below=1)
    keep_best: bool = setting(True, "end with the weights of the best dev-slice accuracy (early stopping)")
    eval_interval: int = setting(500, "steps between dev-slice accuracies (0 = only at the end)", min=0)


def hide_words(ids_BxT: torch.Tensor, p: float, *, first_word: int, mask_id: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Each word token (never a special or padding) replaced by [MASK] with probability p.

    Fine-tuning on a few thousand labelled rows, a classifier soon keys on a handful of words per
    class and stops improving on unseen rows; hiding words at random makes it use the rest of the
    sentence too (the inputs also look like the masked-LM pretraining's).
    """
    if p <= 0:
        return ids_BxT
    hide_BxT = (torch.rand(ids_BxT.shape, generator=generator) < p).to(ids_BxT.device) & (ids_BxT >= first_word)
    return ids_BxT.masked_fill(hide_BxT, mask_id)


class Classification(Task[Classifier]):
    unit = "row"
    kind = KIND_CLASSIFIER

    def __init__(self, t: ClassifyConfig, dcfg: DataConfig, mcfg: ModelConfig | None, data: Labelled,
                 tokenizer: Tokenizer | None = None):
        self.t, self.dcfg, self.data = t, dcfg, data
        encoder = None
        if t.model:
            encoder, pre_tok, pre_cfg = load_encoder(t.model, "cpu", kinds=(KIND_ENCODER,))
            tokenizer, mcfg = tokenizer or pre_tok, ModelConfig.from_dict(pre_cfg["model"])
            warn_if_other_split(pre_cfg, dcfg)
        if not data.train:
            raise UserError(f"no training rows carry one of the labels of {t.label!r}")
        self.tokenizer = tok = tokenizer or train_tokenizer([data.texts[i] for i in data.train], t.tokenizer, t.vocab_size)
        self.mcfg = mcfg = fit_vocab(mcfg if mcfg is not None else ENCODER_PRESETS[t.preset](), tok.vocab_size)
        torch.manual_seed(t.seed)
        self.model = Classifier(mcfg, len(data.names), t.pooling)
        if encoder is not None:
            self.model.encoder.load_state_dict(encoder.state_dict())
        self._split(encode_texts(tok, data.texts, mcfg.context_length))
        self.first_word, self.mask_id = n_special(tok), mask_id(tok)
        self.best_metric = "dev_accuracy" if self.dev_seqs else None

    def _split(self, seqs: list[list[int]]) -> None:
        """A dev slice of the training rows picks the best step, so the validation rows stay unseen."""
        data, train_rows = self.data, list(self.data.train)
        n_dev = int(len(train_rows) * self.t.dev_fraction) if len(train_rows) >= 20 else 0
        dev_rows: list[int] = []
        if n_dev:
            perm = np.random.default_rng(self.t.seed).permutation(len(train_rows))
            dev_rows = [train_rows[i] for i in sorted(perm[:n_dev])]
            train_rows = [train_rows[i] for i in sorted(perm[n_dev:])]
        self.tr_seqs = [seqs[i] for i in train_rows]
        self.tr_y = torch.tensor([data.labels[i] for i in train_rows])
        self.dev_seqs, self.dev_y = [seqs[i] for i in dev_rows], [data.labels[i] for i in dev_rows]
        self.va_seqs, self.va_y = [seqs[i] for i in data.val], [data.labels[i] for i in data.val]
        self.rows = RowBatches([len(s) for s in self.tr_seqs], self.t.batch_size, self.t.seed)

    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def batch(self, step: int) -> Batch:
        rows = self.rows.rows(step)
        ids, key_mask = pad_batch([self.tr_seqs[i] for i in rows], self.tokenizer.pad_id)
        g = torch.Generator().manual_seed(self.t.seed * 1_000_003 + step)  # resume hides the same words
        ids = hide_words(ids, self.t.word_dropout, first_word=self.first_word, mask_id=self.mask_id, generator=g)
        return Batch({"x": ids, "y": self.tr_y[rows], "key_mask": key_mask}, len(rows))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(tensors["x"], tensors["y"], key_mask_BxT=tensors["key_mask"])
        return out.loss * tensors["y"].shape[0]  # the mean over these rows, as a sum

    def evaluate(self, model: Classifier, rt: Runtime) -> dict[str, float]:
        if self.dev_seqs:
            return {"dev_accuracy": accuracy(model, self.dev_seqs, self.dev_y, self.tokenizer.pad_id)}
        if self.va_seqs:
            return {"val_accuracy": accuracy(model, self.va_seqs, self.va_y, self.tokenizer.pad_id)}
        return {}

    def final_metrics(self, model: Classifier, rt: Runtime) -> dict[str, Any]:
        majority = Counter(self.tr_y.tolist()).most_common(1)[0][0]
        va_y = self.va_y
        return {"val_accuracy": accuracy(model, self.va_seqs, va_y, self.tokenizer.pad_id),
                "val_majority_baseline": (sum(y == majority for y in va_y) / len(va_y)) if va_y else float("nan"),
                "train_rows": len(self.tr_seqs), "dev_rows": len(self.dev_seqs), "val_rows": len(self.va_seqs),
                "dropped_rows": self.data.dropped}

    def config(self) -> dict[str, Any]:
        t = self.t
        return {"model": self.mcfg.to_dict(),
                "classifier": {"labels": self.data.names, "label": t.label, "text_field": t.text_field,
                               "pooling": t.pooling, "normalize": self.dcfg.normalize, "pretrained": t.model or None},
                "data": self.dcfg.to_dict()}

    def describe(self) -> str:
        return (f"gptlab encoder classify {self.t.label}: {len(self.tr_seqs):,} train / {len(self.dev_seqs):,} dev / "
                f"{len(self.va_seqs):,} val rows, {len(self.data.names)} labels; ")


def classify(t: ClassifyConfig, dcfg: DataConfig | None = None, model_cfg: ModelConfig | None = None,
             save: bool = True, data: Labelled | None = None, on_eval=None) -> TrainResult[Classifier]:
    """Fine-tune a classifier on t.label (from a pretrained encoder, or from scratch)."""
    rt = runtime_for(t, save)
    dcfg = dcfg or DataConfig()
    dcfg.validate()
    mcfg = None if t.model else (model_cfg if model_cfg is not None else ENCODER_PRESETS[t.preset]())
    saved_tok = prepare_out(t, KIND_CLASSIFIER, mcfg.to_dict() if mcfg else {}, "gptlab encoder classify")
    data = data or labelled_rows(dcfg, t.label, t.text_field, t.top)
    return fit(Classification(t, dcfg, mcfg, data, saved_tok), t, rt, on_eval=on_eval)
