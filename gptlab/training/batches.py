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
    """Token ids of each record followed by <|endoftext|> (and preceded by it when the tokenizer
    starts texts so), truncated to context+1 unless packing."""
    eot = tokenizer.eot_id
    start = [eot] if tokenizer.starts_with_eot else []
    out = []
    for k, ids in enumerate(tokenizer.encode_batch(records)):
        # Packed records share their separators: the <|endoftext|> ending one also starts the next.
        seq = np.asarray((start if truncate or k == 0 else []) + ids + [eot], dtype=np.int64)
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


# -- batches of the other families: rows of a table, in an order that is a pure function of (seed, epoch)
def same_length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Batches of row indices whose sequences all have the same length (one pass; shuffled with rng).

    No padding: no compute spent on it and no mask to build (seq2seq sources; targets are still
    padded, which causality hides).
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths.tolist()):
        groups.setdefault(n, []).append(i)
    batches = []
    for members in groups.values():
        rows = np.asarray(members)
        if rng is not None:
            rows = rows[rng.permutation(len(rows))]
        batches += [rows[j:j + batch_size] for j in range(0, len(rows), batch_size)]
    if rng is not None:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def similar_length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass of batches of similar length (little padding), in random order: rows are shuffled,
    cut into chunks of 50 batches, each chunk sorted by length and cut into batches."""
    order = rng.permutation(len(lengths))
    chunk = 50 * batch_size
    batches = []
    for i in range(0, len(lengths), chunk):
        part = order[i:i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]


class RowBatches:
    """The row indices of step s's batch, a pure function of (seed, s): epoch e is laid out by a
    generator seeded with (seed, e), so a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, same_length: bool = False):
        if not lengths:
            raise ValueError("no rows to batch")
        self.lengths = np.asarray(lengths)
        self.batch_size = min(batch_size, len(lengths))
        self.seed = seed
        self.layout = same_length_batches if same_length else similar_length_batches
        self._epoch: tuple[int, list[np.ndarray]] | None = None
        self.steps_per_epoch = len(self._batches(0))

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch = (epoch, self.layout(self.lengths, self.batch_size, rng))
        return self._epoch[1]

    def rows(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self._batches(epoch)[i]
