"""The course notebook's text normalisation, as one pure function.

The notebook lowercases each line, then runs
``re.sub(f"([{string.punctuation}])", r" \\1 ", s)`` and ``re.sub(" +", " ", s)``, so that a
word-level tokenizer sees punctuation as separate tokens (``it ' s``, ``13 . 5 %``).
"""

from __future__ import annotations

import re
import string

# re.escape keeps the class exact: the notebook's unescaped f-string reads `\]` as an escaped
# bracket, so it never pads the backslash itself. That is the only difference in output.
_PUNCTUATION_RE = re.compile(f"([{re.escape(string.punctuation)}])")
# \s+ rather than the notebook's " +": a document is one line, so newlines and tabs inside a
# CSV cell collapse to one space like repeated spaces do.
_WHITESPACE_RE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Lowercase, pad every ASCII punctuation character with spaces, collapse whitespace.

    Like the notebook, the result is not stripped: text that ends with punctuation keeps one
    trailing space (``"... alcohol."`` -> ``"... alcohol . "``), text that starts with it one
    leading space. Non-ASCII punctuation (en dashes, curly quotes) is left alone.
    """
    s = _PUNCTUATION_RE.sub(r" \1 ", s.lower())
    return _WHITESPACE_RE.sub(" ", s)
