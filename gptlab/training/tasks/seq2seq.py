"""The encoder-decoder's task: translation pairs, teacher-forced (`gptlab seq2seq train`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptlab.data.pairs import BOS, EncodedPairs, encode_pairs, number_pairs, read_pairs, split_pairs, train_tokenizer
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.infer.translate import evaluate_translation
from gptlab.model import IGNORE_INDEX
from gptlab.model.padding import pad_batch
from gptlab.model.seq2seq import SEQ2SEQ_PRESETS, Seq2Seq, Seq2SeqConfig
from gptlab.settings import setting
from gptlab.training.batches import RowBatches, same_length_batches
from gptlab.training.config import FamilyLoopConfig, fit_vocab
from gptlab.training.env import Runtime
from gptlab.training.loop import Batch, Task, TrainResult, fit, prepare_out, runtime_for

KIND = "seq2seq"
Pairs = list[tuple[str, str]]


@dataclass
class Seq2SeqTrainConfig(FamilyLoopConfig):
    data: str = setting("numbers", "'numbers' (built-in English -> Spanish number words) or a TSV pairs file (source<TAB>target, e.g. Tatoeba spa-eng.txt)")
    out: str = setting("runs/seq2seq", "output folder for the model")
    preset: str = setting("small", f"model preset: {', '.join(SEQ2SEQ_PRESETS)}", choices=tuple(SEQ2SEQ_PRESETS))
    reverse: bool = setting(False, "translate column 2 -> column 1 instead")
    max_number: int = setting(9999, "numbers task: numbers 0..N", min=10)
    max_pairs: int = setting(0, "pairs file: read only the first N pairs (0 = all)", min=0)
    val_fraction: float = setting(0.1, "pairs (or numbers) held out for validation", min=0, below=0.5)
    test_fraction: float = setting(0.1, "pairs (or numbers) held out for the final test", min=0, below=0.5)
    data_seed: int = setting(0, "seed of the train/val/test split", min=0)
    eval_pairs: int = setting(500, "validation pairs translated for exact match at the end", min=0)
    vocab_size: int = setting(15000, "vocabulary cap (one vocabulary for source and target)", min=2)
    max_steps: int = setting(3000, "optimizer steps; 0 = from --epochs", min=0)
    adam_eps: float = setting(1e-9, "Adam epsilon (Vaswani: 1e-9)", above=0)


def load_splits(t: Seq2SeqTrainConfig) -> dict[str, Pairs]:
    if t.data == "numbers":
        return number_pairs(t.max_number, t.data_seed, t.val_fraction, t.test_fraction, t.reverse)
    pairs = read_pairs(t.data, t.reverse, t.max_pairs)
    return split_pairs(pairs, t.data_seed, t.val_fraction, t.test_fraction)


def collate_pairs(data: EncodedPairs, rows: Any, pad_id: int) -> dict[str, torch.Tensor]:
    src, src_mask = pad_batch([data.src[i] for i in rows], pad_id)
    tgt, tgt_mask = pad_batch([data.tgt[i] for i in rows], pad_id)
    targets = tgt[:, 1:].masked_fill(~tgt_mask[:, 1:], IGNORE_INDEX)
    return {"src": src, "src_mask": src_mask, "tgt_in": tgt[:, :-1], "targets": targets}


class Translation(Task[Seq2Seq]):
    kind = KIND

    def __init__(self, t: Seq2SeqTrainConfig, mcfg: Seq2SeqConfig, splits: dict[str, Pairs],
                 tokenizer: Tokenizer | None = None):
        self.t, self.mcfg, self.splits = t, mcfg, splits
        if not splits.get("train"):
            raise UserError("no training pairs: pass a bigger pairs file or lower --val-fraction/--test-fraction")
        self.tokenizer = tok = tokenizer or train_tokenizer(splits["train"], t.tokenizer, t.vocab_size)
        fit_vocab(mcfg, tok.vocab_size)
        self.train_data = encode_pairs(tok, splits["train"], mcfg.context_length)
        self.val_data = encode_pairs(tok, splits.get("val", []), mcfg.context_length)
        if not self.train_data.src:
            raise UserError(f"every training pair is longer than --context-length {mcfg.context_length} tokens: raise it")
        if self.train_data.dropped:
            print(f"seq2seq: dropped {self.train_data.dropped} training pairs longer than {mcfg.context_length} "
                  "tokens (raise --context-length to keep them)", file=sys.stderr)
        # Batches of same-length sources: no source padding, so no source mask is needed.
        self.rows = RowBatches([len(s) for s in self.train_data.src], t.batch_size, t.seed, same_length=True)
        torch.manual_seed(t.seed)
        self.model = Seq2Seq(mcfg)

    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def batch(self, step: int) -> Batch:
        b = collate_pairs(self.train_data, self.rows.rows(step), self.tokenizer.pad_id)
        del b["src_mask"]
        return Batch(b, int((b["targets"] != IGNORE_INDEX).sum()))

    def loss_sum(self, model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(tensors["src"], tensors["tgt_in"], tensors["targets"]).nll_sum

    @torch.no_grad()
    def evaluate(self, model: Seq2Seq, rt: Runtime, batch_size: int = 256, limit: int = 2000) -> dict[str, float]:
        """Teacher-forced NLL per target token over (up to `limit`) validation pairs."""
        data = self.val_data
        if not data.src:
            return {}
        model.eval()
        n = min(len(data.src), limit)
        total, count = 0.0, 0
        for rows in same_length_batches(np.array([len(s) for s in data.src[:n]]), batch_size):
            b = {k: v.to(rt.device) for k, v in collate_pairs(data, rows, self.tokenizer.pad_id).items()}
            with rt.autocast():
                out = model(b["src"], b["tgt_in"], b["targets"])
            total += float(out.nll_sum)
            count += out.n_tokens
        return {"val_loss": total / max(count, 1)}

    def final_metrics(self, model: Seq2Seq, rt: Runtime) -> dict[str, Any]:
        if not self.val_data.src or not self.t.eval_pairs:
            return {}
        ev = evaluate_translation(model, self.tokenizer, self.splits["val"][:self.t.eval_pairs])
        return {"val_exact_match": ev["exact_match"], "val_chrf": ev["chrf"]}

    def config(self) -> dict[str, Any]:
        return {"model": self.mcfg.to_dict(), "seq2seq": {"bos_token": BOS, "data": self.t.data, "reverse": self.t.reverse}}

    def describe(self) -> str:
        return (f"gptlab seq2seq train: {len(self.train_data.src):,} training pairs; "
                f"vocab {self.tokenizer.vocab_size:,}; ")


@dataclass
class Seq2SeqResult(TrainResult[Seq2Seq]):
    splits: dict[str, Pairs] | None = None


def train(t: Seq2SeqTrainConfig, model_cfg: Seq2SeqConfig | None = None,
          splits: dict[str, Pairs] | None = None, save: bool = True, on_eval=None) -> Seq2SeqResult:
    """Train a translation model and (unless save=False) write it to t.out.

    model_cfg: None = the preset's; its vocab_size is set from the tokenizer.
    splits: {"train", "val", "test"} pair lists; None = read t.data.
    """
    rt = runtime_for(t, save)
    mcfg = model_cfg if model_cfg is not None else SEQ2SEQ_PRESETS[t.preset]()
    saved_tok = prepare_out(t, KIND, mcfg.to_dict(), "gptlab seq2seq train")
    splits = splits if splits is not None else load_splits(t)
    r = fit(Translation(t, mcfg, splits, saved_tok), t, rt, on_eval=on_eval)
    return Seq2SeqResult(**vars(r), splits=splits)
