"""Texts for the encoder-only family (BERT): its special tokens, ids with [CLS] in front, and
labelled rows of a table for classification. Torch-free, like the rest of the data package."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

from gptlab.data.config import DataConfig
from gptlab.data.corpora import load_corpus
from gptlab.data.records import Corpus, split_records
from gptlab.data.tokenizer import SPECIALS, Tokenizer
from gptlab.errors import UserError

CLS, MASK = "[CLS]", "[MASK]"


def train_tokenizer(texts: list[str], kind: str = "word", vocab_size: int = 10000) -> Tokenizer:
    return Tokenizer.train(texts, kind=kind, vocab_size=vocab_size, extra_specials=(CLS, MASK))


def n_special(tok: Tokenizer) -> int:
    """Specials take the first ids ([PAD] [UNK] <|endoftext|> [CLS] [MASK]); words come after."""
    specials = (*SPECIALS, CLS, MASK)
    ids = [i for i in (tok.token_to_id(s) for s in specials) if i is not None]
    if len(ids) < len(specials):
        raise UserError("this tokenizer lacks [CLS]/[MASK]: it is not from `gptlab encoder pretrain`")
    return max(ids) + 1


def mask_id(tok: Tokenizer) -> int:
    """The id of [MASK]; a one-line error for a tokenizer without it."""
    i = tok.token_to_id(MASK)
    if i is None:
        raise UserError("this tokenizer lacks [MASK]: it is not from `gptlab encoder pretrain`")
    return i


def encode_texts(tok: Tokenizer, texts: list[str], context_length: int) -> list[list[int]]:
    """[CLS] + the text's tokens, cut to the context."""
    cls = tok.token_to_id(CLS)
    if cls is None:
        raise UserError("this tokenizer lacks [CLS]: it is not from `gptlab encoder pretrain`")
    return [[cls] + ids[: context_length - 1] for ids in tok.encode_batch(texts)]


def corpus_texts(dcfg: DataConfig, text_field: str = "") -> tuple[Corpus, list[str]]:
    """(corpus, texts): the corpus's documents, or one column of it (`text_field`) as documents."""
    if text_field:
        dcfg.template = "{" + text_field + "}"
    corpus = load_corpus(dcfg)
    return corpus, corpus.records


@dataclass
class Labelled:
    texts: list[str]
    labels: list[int]
    names: list[str]          # label index -> label value
    train: list[int]          # row indices
    val: list[int]
    dropped: int              # rows without a label, or with a label outside the top N


def labelled_rows(dcfg: DataConfig, label: str, text_field: str = "description", top: int = 20) -> Labelled:
    """Texts with labels from a table's column, split by record BEFORE filtering by label, so the
    split matches `gptlab encoder pretrain` on the same data (its validation rows stay unseen)."""
    if not label:
        raise UserError("--label is empty: name a column, e.g. --label variety")
    corpus, texts = corpus_texts(dcfg, text_field)
    if corpus.fields is None:
        raise UserError(f"{corpus.source} has no columns, so no labels: classification needs a CSV, "
                        "JSON or JSONL file (or the built-in corpus)")
    columns = dict.fromkeys(k for row in corpus.fields[:1000] for k in row)
    if label not in columns:
        raise UserError(f"{corpus.source} has no column {label!r}: pass --label with one of "
                        f"{', '.join(map(str, columns))}")
    values = [str(row.get(label) if row.get(label) is not None else "").strip() for row in corpus.fields]
    train_idx, val_idx = split_records(texts, dcfg.val_fraction, dcfg.seed)
    counts = Counter(values[i] for i in train_idx if values[i])
    names = [v for v, _ in counts.most_common(top if top > 0 else None)]
    if len(names) < 2:
        raise UserError(f"column {label!r} has {len(names)} distinct value(s) in the training rows: "
                        "a classifier needs at least 2")
    index = {v: i for i, v in enumerate(names)}
    keep = lambda idx: [i for i in idx if values[i] in index]  # noqa: E731
    tr, va = keep(train_idx), keep(val_idx)
    return Labelled(texts, [index.get(v, -1) for v in values], names, tr, va,
                    len(texts) - len(tr) - len(va))


def warn_if_other_split(cfg: dict, dcfg: DataConfig) -> None:
    """Say so when a saved encoder saw another corpus or split: its text may include our validation rows."""
    seen = cfg.get("data", {})
    if any(seen.get(k) != getattr(dcfg, k) for k in ("data", "seed", "val_fraction")):
        print("gptlab encoder: warning: the encoder was pretrained with another --data/--data-seed/--val-fraction, "
              "so some validation rows may have been pretraining text", file=sys.stderr)
