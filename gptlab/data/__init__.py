"""Corpora: the built-in synthetic wine reviews, Kaggle Wine Reviews, and any text, CSV or JSON file.

This package is pure Python (no torch): it turns a data source into a list of documents.
"""

from gptlab.data.catalog import WineCatalog
from gptlab.data.config import DataConfig
from gptlab.data.corpora import load_corpus
from gptlab.data.normalize import normalize_text
from gptlab.data.records import Corpus, split_records
from gptlab.data.synthetic import builtin_corpus, synthetic_reviews

__all__ = [
    "DataConfig",
    "Corpus",
    "load_corpus",
    "normalize_text",
    "split_records",
    "WineCatalog",
    "synthetic_reviews",
    "builtin_corpus",
]
