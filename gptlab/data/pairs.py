"""Sentence pairs for translation: a tab-separated pairs file (`source<TAB>target[<TAB>anything...]`:
the Anki/Tatoeba `spa-eng` files of the Keras English-to-Spanish example fit as they are), or the
built-in `numbers` task: English number words to Spanish number words for 0..9999 made with
num2words, split by number so every test number is one the model never saw ("three hundred
forty-two" -> "trescientos cuarenta y dos").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError

BOS = "<s>"  # the decoder's start token; <|endoftext|> ends a target


def read_pairs(path: str | Path, reverse: bool = False, max_pairs: int = 0,
               encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(source, target) from a TSV file: first two columns of each non-blank line.

    Any line without a tab or with an empty side is an error naming its line number: a half-read
    pairs file would silently train on garbage.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"pairs file {p} not found: pass a TSV file (source<TAB>target per line) or --data numbers")
    try:
        text = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not {encoding} text (byte {e.start}): pass --encoding latin-1 or convert it") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise UserError(f"{p} line {n} has no tab: each line must be source<TAB>target "
                            f"(got {line[:40]!r})")
        src, tgt = cols[0].strip(), cols[1].strip()
        if not src or not tgt:
            side = "source" if not src else "target"
            raise UserError(f"{p} line {n} has an empty {side}: fill it or delete the line")
        pairs.append((tgt, src) if reverse else (src, tgt))
        if max_pairs and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise UserError(f"{p} holds no pairs, only blank lines: pass a file with source<TAB>target lines")
    return pairs


def english_number(n: int) -> str:
    """US style, as the issue writes it: "three hundred forty-two" (no "and", no commas)."""
    from num2words import num2words
    return num2words(n, lang="en").replace(",", "").replace(" and ", " ")


def spanish_number(n: int) -> str:
    from num2words import num2words
    return num2words(n, lang="es")


def number_pairs(max_number: int = 9999, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, reverse: bool = False) -> dict[str, list[tuple[str, str]]]:
    """The built-in task, split BY NUMBER with a fixed seed: {"train", "val", "test"} pair lists."""
    try:
        import num2words  # noqa: F401
    except ImportError:
        raise UserError("the built-in number task needs num2words: pip install num2words "
                        "(or 'gptlab[families]'), or pass --data PAIRS.tsv") from None
    if max_number < 10:
        raise UserError(f"--max-number must be >= 10 (got {max_number})")
    numbers = list(range(max_number + 1))
    random.Random(seed).shuffle(numbers)
    n_test = round(len(numbers) * test_fraction)
    n_val = round(len(numbers) * val_fraction)
    splits = {"test": numbers[:n_test], "val": numbers[n_test:n_test + n_val],
              "train": numbers[n_test + n_val:]}
    out = {}
    for name, nums in splits.items():
        pairs = [(english_number(n), spanish_number(n)) for n in sorted(nums)]
        out[name] = [(b, a) for a, b in pairs] if reverse else pairs
    return out


def split_pairs(pairs: list[tuple[str, str]], seed: int, val_fraction: float,
                test_fraction: float) -> dict[str, list[tuple[str, str]]]:
    """Random split of a pairs file by pair."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(len(pairs) * test_fraction)
    n_val = round(len(pairs) * val_fraction)
    if len(pairs) - n_test - n_val < 1:
        raise UserError(f"only {len(pairs)} pairs: too few to hold out {n_val + n_test}; lower --val-fraction/--test-fraction")
    pick = lambda idx: [pairs[i] for i in idx]  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]),
            "train": pick(order[n_test + n_val:])}


def train_tokenizer(pairs: list[tuple[str, str]], kind: str = "word", vocab_size: int = 15000) -> Tokenizer:
    """One vocabulary for both languages (see gptlab/model/seq2seq.py for why), with <s>."""
    texts = [s for pair in pairs for s in pair]
    return Tokenizer.train(texts, kind=kind, vocab_size=vocab_size, extra_specials=(BOS,))


def normalize(tok: Tokenizer, text: str) -> str:
    """The text as the model reads and writes it (lowercased, punctuation split): exact match
    compares these."""
    return tok.decode(tok.encode(text))


@dataclass
class EncodedPairs:
    src: list[np.ndarray]
    tgt: list[np.ndarray]   # <s> target <|endoftext|>
    dropped: int            # pairs longer than the context


def encode_pairs(tok: Tokenizer, pairs: list[tuple[str, str]], context_length: int) -> EncodedPairs:
    bos = tok.token_to_id(BOS)
    srcs = tok.encode_batch([s for s, _ in pairs])
    tgts = tok.encode_batch([t for _, t in pairs])
    out = EncodedPairs([], [], 0)
    for s, t in zip(srcs, tgts):
        # A target cut short would teach the model to stop mid-sentence: drop such pairs instead.
        if not s or len(s) > context_length or len(t) + 1 > context_length:
            out.dropped += 1
            continue
        out.src.append(np.asarray(s, dtype=np.int64))
        out.tgt.append(np.asarray([bos] + t + [tok.eot_id], dtype=np.int64))
    return out
