"""Tokenizers, built on Hugging Face `tokenizers` and saved as a standard `tokenizer.json`.

- "word": word-level with a vocabulary cap, the notebook's TextVectorization: lowercase, split on
  whitespace and on every ASCII punctuation character (so "it's" -> it ' s), the most frequent
  words kept, the rest mapped to [UNK].
- "bpe": byte-level BPE (GPT-2 style): no unknown words, any text round-trips.

Special tokens come first, so their ids are fixed: [PAD]=0, [UNK]=1, <|endoftext|>=2, then any
extras a model family asks for ([MASK], [CLS], <s>, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from gptlab.errors import UserError

PAD, UNK, EOT = "[PAD]", "[UNK]", "<|endoftext|>"
SPECIALS = (PAD, UNK, EOT)
# string.punctuation as a regex class: the notebook pads exactly these characters.
ASCII_PUNCT = r"[!-/:-@\[-`{-~]"


def check_text(text: str, what: str = "the input") -> str:
    """`text` if it can be encoded (UTF-8, as the tokenizer needs); a one-line UserError otherwise.

    Bytes that are not UTF-8 reach Python as lone surrogates (the command line decodes them so), and
    the tokenizer's Rust side cannot take those: it would fail with a UnicodeEncodeError.
    """
    if not isinstance(text, str):
        raise UserError(f"{what} must be text (got {type(text).__name__})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{what} is not valid text: {text[e.start]!r} at character {e.start} stands for a byte "
                        "that is not UTF-8: pass UTF-8 text") from None
    return text


def _add_words(hf: HFTokenizer, texts: Iterable[str], at_most: int | None) -> None:
    """Give each word of `texts` that a trained word-level vocabulary lacks the next free id, in
    order of first appearance (so the same texts give the same ids), `at_most` of them."""
    vocab = hf.get_vocab()
    next_id = start = max(vocab.values()) + 1
    limit = start + (at_most if at_most is not None else 1 << 62)
    for text in texts:
        norm = hf.normalizer.normalize_str(text) if hf.normalizer is not None else text
        for word, _span in hf.pre_tokenizer.pre_tokenize_str(norm):
            if word not in vocab and next_id < limit:
                vocab[word] = next_id
                next_id += 1
    if next_id > start:
        hf.model = models.WordLevel(vocab=vocab, unk_token=UNK)


def _special_id(hf: HFTokenizer, tok: str) -> int:
    """The id of a special token every gptlab tokenizer has; a UserError for a foreign tokenizer."""
    i = hf.token_to_id(tok)
    if i is None:
        raise UserError(f"tokenizer lacks the special token {tok}: train a new one with gptlab")
    return i


def starts_with(hf: HFTokenizer, token_id: int) -> bool:
    """Whether the tokenizer's post-processor puts `token_id` before every text."""
    return hf.encode("", add_special_tokens=True).ids[:1] == [token_id]


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with gptlab's special tokens."""

    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf = hf
        self.kind = kind
        # Checked in this order: the first missing special is the one named in the error.
        self.pad_id = _special_id(hf, PAD)
        self.unk_id = _special_id(hf, UNK)
        self.eot_id = _special_id(hf, EOT)
        # A GPT's texts begin with <|endoftext|> when its tokenizer.json says so (the post-processor
        # `start_with_eot` writes); older models' tokenizers do not, and their prompts stay as they were.
        self.starts_with_eot = starts_with(hf, self.eot_id)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "word", vocab_size: int = 10000,
              lowercase: bool = True, extra_specials: tuple[str, ...] = (),
              start_with_eot: bool = False, keep: Iterable[str] = (), keep_at_most: int | None = None) -> Tokenizer:
        """A tokenizer trained on `texts`; `start_with_eot` (for GPTs) makes every text begin with
        <|endoftext|>, GPT-2's convention, so the model learns how a text starts and an empty prompt
        samples a whole record. It is stored in tokenizer.json as the post-processor, so a
        `transformers` tokenizer loaded from an exported folder adds the same start token.

        keep: texts (a corpus's names: provinces, varieties) every word of which a word-level
        vocabulary holds, after the `vocab_size` most frequent words: a rare name seen twice would
        otherwise become [UNK], which no sample can turn back into the name. The words come after
        the frequent ones, so the frequent words keep their ids and a text without the kept words
        encodes exactly as without `keep`; `keep_at_most` bounds how many (the first ones of `keep`
        that are missing). A byte-level BPE has no unknown word and ignores both."""
        specials = list(SPECIALS) + [s for s in extra_specials if s not in SPECIALS]
        if vocab_size < len(specials) + 1:
            raise UserError(f"vocab_size {vocab_size} is too small: use at least {len(specials) + 1}")
        trainer: trainers.Trainer
        if kind == "word":
            hf = HFTokenizer(models.WordLevel(unk_token=UNK))
            if lowercase:
                hf.normalizer = normalizers.Lowercase()
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(ASCII_PUNCT), behavior="isolated"),
            ])
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials)
        elif kind == "bpe":
            hf = HFTokenizer(models.BPE(unk_token=UNK))
            if lowercase:
                hf.normalizer = normalizers.Lowercase()
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        else:
            raise UserError(f"unknown tokenizer {kind!r}: use 'word' or 'bpe'")
        hf.train_from_iterator(texts, trainer)
        if kind == "word":
            _add_words(hf, keep, keep_at_most)
        if start_with_eot:
            hf.post_processor = processors.TemplateProcessing(
                single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, hf.token_to_id(EOT))])
        return cls(hf, kind)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.hf.save(str(tmp))
            os.replace(tmp, path)
        except BaseException:  # nothing half-written left behind
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a plain Exception with a parse message
            raise UserError(f"{path} is not a readable tokenizer.json ({str(e).splitlines()[0][:120]}): "
                            "re-train the model or copy its tokenizer.json again") from None
        kind = "bpe" if isinstance(hf.model, models.BPE) else "word"
        try:
            return cls(hf, kind)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    # -- use --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(check_text(text), add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's ids as the model saw texts begin: after <|endoftext|> when it was trained so.
        An empty prompt is <|endoftext|> alone either way (the state after a finished text)."""
        ids = self.encode(text)
        return [self.eot_id] + ids if self.starts_with_eot or not ids else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        try:  # checked only on failure: this is the hot path of encoding a corpus
            return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        except (UnicodeEncodeError, TypeError):
            for t in texts:
                check_text(t)
            raise

    def tokens(self, text: str) -> list[str]:
        return self.hf.encode(check_text(text), add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        if self.kind == "word":
            # Word-level has no decoder: words are joined by spaces, [UNK] shown where it stood.
            # The model's ids are the tokenizer's (training sizes the vocabulary from it, loading
            # checks it), so id_to_token finds every one; None means an id outside the vocabulary.
            found = [self.hf.id_to_token(i) for i in ids]
            if None in found:
                bad = next(i for i, t in zip(ids, found) if t is None)
                raise UserError(f"token id {bad} is outside the tokenizer's vocabulary of {self.vocab_size}: "
                                "the model and its tokenizer.json do not belong together")
            toks = cast("list[str]", found)
            if skip_special:
                toks = [t for t in toks if t not in (PAD, EOT)]
            return " ".join(toks)
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def id_to_token(self, i: int) -> str:
        """The token of id `i`, which must be in the vocabulary (outside it the result is None)."""
        return cast(str, self.hf.id_to_token(int(i)))

    def token_to_id(self, tok: str) -> int | None:
        return self.hf.token_to_id(tok)

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the vocabulary lacks (they encode as [UNK]); empty for byte-level BPE."""
        if self.kind != "word":
            return []
        check_text(text)
        pre = self.hf.pre_tokenizer.pre_tokenize_str(self.hf.normalizer.normalize_str(text)
                                                      if self.hf.normalizer else text)
        return [w for w, _ in pre if self.hf.token_to_id(w) is None]
