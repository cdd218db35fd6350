"""The tokenizers: the notebook's normalisation, the vocabulary cap, special tokens, round trips."""

import re
import string

import pytest

from gptlab.data import normalize_text
from gptlab.data.tokenizer import EOT, PAD, UNK, Tokenizer
from gptlab.errors import UserError

FIXTURES = [
    "Wine review : US : California : It's tart, with 13.5% alcohol.",
    "wine review : Germany : Mosel : Riesling : While demure in color, this off-dry Riesling (from old vines) is a delight!",
    'Wine review : France : Rhône Valley : Syrah : "Smoky"; black-fruited & firm—drink 2020–2030.',
]


def notebook_pad_punctuation(s: str) -> str:
    """The course notebook's code, verbatim, followed by its TextVectorization(standardize='lower')."""
    s = re.sub(f"([{string.punctuation}])", r" \1 ", s)
    s = re.sub(" +", " ", s)
    return s.lower()


@pytest.mark.parametrize("line", FIXTURES)
def test_word_tokenizer_reproduces_the_notebooks_normalisation(line):
    tok = Tokenizer.train(FIXTURES, kind="word", vocab_size=1000)
    expected = notebook_pad_punctuation(line).split()
    assert tok.tokens(line) == expected
    # Pre-normalised text (what the corpus loader produces) tokenizes the same way.
    assert tok.tokens(normalize_text(line)) == expected
    assert tok.decode(tok.encode(line)) == " ".join(expected)


def test_notebook_examples():
    tok = Tokenizer.train(FIXTURES, kind="word", vocab_size=1000)
    assert " ".join(tok.tokens("wine review: US: it's")) == "wine review : us : it ' s"


def test_vocabulary_cap_specials_and_unknown_words():
    lines = [f"w{i} " * (100 - i) for i in range(100)]
    tok = Tokenizer.train(lines, kind="word", vocab_size=20)
    assert tok.vocab_size == 20
    assert (tok.pad_id, tok.unk_id, tok.eot_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == [PAD, UNK, EOT]
    assert tok.token_to_id("w0") is not None and tok.token_to_id("w99") is None  # most frequent kept
    assert tok.encode("w0 w99") == [tok.token_to_id("w0"), tok.unk_id]
    assert tok.unknown_words("w0 w99 zz") == ["w99", "zz"]


def test_bpe_round_trips_any_text(tmp_path):
    tok = Tokenizer.train(FIXTURES * 5, kind="bpe", vocab_size=300, lowercase=False)
    text = "Zweigelt from Österreich — 100% ✓"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode(text) == tok.encode(text) and again.kind == "bpe"


def test_save_load_and_bad_files(tmp_path):
    tok = Tokenizer.train(FIXTURES, kind="word", vocab_size=100)
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "tokenizer.json").encode(FIXTURES[0]) == tok.encode(FIXTURES[0])
    (tmp_path / "bad.json").write_text("{ nope")
    with pytest.raises(UserError, match="tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="vocab_size"):
        Tokenizer.train(FIXTURES, vocab_size=2)


def test_kept_words_join_the_vocabulary_after_the_frequent_ones():
    lines = [f"w{i} " * (100 - i) for i in range(100)]
    plain = Tokenizer.train(lines, kind="word", vocab_size=20)
    tok = Tokenizer.train(lines, kind="word", vocab_size=20, keep=["W99 w0", "Nowhere-Else"])
    # w99 (rare), then nowhere, -, else (unseen); w0 is among the frequent words already.
    assert tok.vocab_size == 24
    assert [tok.id_to_token(i) for i in range(20, 24)] == ["w99", "nowhere", "-", "else"]
    assert [tok.id_to_token(i) for i in range(20)] == [plain.id_to_token(i) for i in range(20)]
    assert tok.encode("w0 w3 zz") == plain.encode("w0 w3 zz")  # a text without kept words: same ids
    assert tok.unk_id not in tok.encode("w99 nowhere-else") and tok.unknown_words("w99 w98") == ["w98"]
    assert tok.decode(tok.encode("Nowhere-Else w99")) == "nowhere - else w99"
    two = Tokenizer.train(lines, kind="word", vocab_size=20, keep=["W99 w0", "Nowhere-Else"], keep_at_most=2)
    assert two.vocab_size == 22 and two.unknown_words("w99 nowhere - else") == ["-", "else"]
    # A byte-level BPE knows every text already.
    bpe = Tokenizer.train(FIXTURES * 5, kind="bpe", vocab_size=300, keep=["Zweigelt"])
    assert bpe.vocab_size == Tokenizer.train(FIXTURES * 5, kind="bpe", vocab_size=300).vocab_size
