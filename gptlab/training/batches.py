"""Turning tokenized records into training batches.

Every epoch's batch order is a pure function of (seed, epoch), so a run resumed at step s sees
exactly the batches an uninterrupted run would, and every DDP rank agrees on the global batch
without talking.

Three layouts (`--batching`):
- pad: each record truncated/padded to context+1 tokens, as the notebook's TextVectorization does;
- bucket: the same records, batched with others of similar length and padded only to the longest
  in the batch: little compute is spent on padding, and every sequence still starts at its record's
  first word (which is what the template needs);
- pack: all records concatenated with <|endoftext|> between them and cut into context+1 windows:
  no padding at all, but windows start mid-record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gptlab.model import IGNORE_INDEX


@dataclass
class Batch:
    x_BxT: torch.Tensor
    y_BxT: torch.Tensor       # IGNORE_INDEX on padding
    n_tokens: int             # targets that count (not IGNORE_INDEX)


def encode_records(tokenizer, records: list[str], context_length: int, truncate: bool = True) -> list[np.ndarray]:
    """Token ids of each record followed by <|endoftext|>, truncated to context+1 unless packing."""
    eot = tokenizer.eot_id
    out = []
    for ids in tokenizer.encode_batch(records):
        seq = np.asarray(ids + [eot], dtype=np.int64)
        out.append(seq[: context_length + 1] if truncate else seq)
    return out


def collate(seqs: list[np.ndarray], pad_id: int, length: int | None = None) -> Batch:
    """Right-pad sequences to `length` (default: the longest) and shift into inputs/targets."""
    L = length or max(len(s) for s in seqs)
    arr = np.full((len(seqs), L), pad_id, dtype=np.int64)
    tgt = np.full((len(seqs), L), IGNORE_INDEX, dtype=np.int64)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
        tgt[i, : len(s)] = s
    x = torch.from_numpy(arr[:, :-1])
    y = torch.from_numpy(tgt[:, 1:].copy())
    return Batch(x, y, int((y != IGNORE_INDEX).sum()))


class BatchPlan:
    """Global batches of one epoch, deterministic in (seed, epoch)."""

    def __init__(self, seqs: list[np.ndarray], batch_size: int, context_length: int, pad_id: int,
                 mode: str, seed: int):
        if mode not in ("pad", "bucket", "pack"):
            raise ValueError(f"batching must be pad, bucket or pack (got {mode!r})")
        self.mode, self.batch_size, self.ctx, self.pad_id, self.seed = mode, batch_size, context_length, pad_id, seed
        if mode == "pack":
            stream = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
            n = max((len(stream) - 1) // context_length, 0)
            # Windows overlap by one token so every token is a target exactly once.
            self.seqs = [stream[i * context_length: (i + 1) * context_length + 1] for i in range(n)]
        else:
            self.seqs = seqs
        self.lengths = np.array([len(s) for s in self.seqs])

    @property
    def steps_per_epoch(self) -> int:
        return max(len(self.seqs) // self.batch_size, 1 if self.seqs else 0)

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """Row indices of each global batch in this epoch (a dropped remainder, as Keras would not)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.seqs))
        B = self.batch_size
        n = self.steps_per_epoch
        if len(order) < B:  # a tiny corpus: repeat it to fill one batch
            order = np.resize(order, B)
        if self.mode == "bucket":
            # Sort within chunks of 64 batches by length, then shuffle the batches: batches are
            # homogeneous in length but their order (and membership across chunks) stays random.
            chunk = 64 * B
            parts = []
            for i in range(0, n * B, chunk):
                part = order[i: min(i + chunk, n * B)]
                parts.append(part[np.argsort(self.lengths[part], kind="stable")])
            order = np.concatenate(parts)
            batches = [order[i * B:(i + 1) * B] for i in range(n)]
            return [batches[j] for j in rng.permutation(n)]
        return [order[i * B:(i + 1) * B] for i in range(n)]

    def make(self, rows: np.ndarray) -> Batch:
        length = self.ctx + 1 if self.mode == "pad" else None
        return collate([self.seqs[i] for i in rows], self.pad_id, length)


def eval_batches(seqs: list[np.ndarray], batch_size: int, pad_id: int, context_length: int, limit: int = 0):
    """Validation batches in a fixed order, padded to context+1 as the notebook measures them."""
    n = len(seqs)
    count = (n + batch_size - 1) // batch_size
    if limit:
        count = min(count, limit)
    for i in range(count):
        yield collate(seqs[i * batch_size:(i + 1) * batch_size], pad_id, context_length + 1)
