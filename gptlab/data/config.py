"""Configuration of the corpus: where the text comes from and how records become documents."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from gptlab.errors import UserError

WINE_TEMPLATE = "wine review : {country} : {province} : {variety} : {description}"
FORMATS = ("auto", "wine", "csv", "jsonl", "json", "text")
# Ten million synthetic reviews take minutes and gigabytes to make: far past any use of them.
MAX_BUILTIN = 10_000_000
SEED_MAX = 2**63 - 1


def _setting(default: Any, help: str, **limits: Any) -> Any:
    """A field as `gptlab.settings.setting` declares one (help, min/max/below, choices), which
    `settings.check` and the CLI read from its metadata; spelled out here because the data package
    imports nothing of gptlab but its errors."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class DataConfig:
    data: str = _setting("builtin", "corpus: 'builtin' (synthetic wine reviews, offline), a .csv/.json/.jsonl/.txt "
                                    "file (or a folder holding one), or 'hf:GroNLP/ik-nlp-22_winemag'")
    format: str = _setting("auto", "file format: auto (by extension and columns) | wine | csv | jsonl | json | text",
                           choices=FORMATS)
    template: str = _setting(WINE_TEMPLATE, "how a tabular record becomes one document; {name} is a column "
                                            "(ignored for plain text)")
    normalize: bool = _setting(True, "lowercase and pad punctuation with spaces, as the course notebook does")
    builtin_size: int = _setting(20000, "number of synthetic reviews when --data builtin", min=1, max=MAX_BUILTIN)
    max_records: int = _setting(0, "keep only the first N usable records (0 = all)", min=0)
    val_fraction: float = _setting(0.05, "fraction of records held out for validation", min=0, below=1)
    seed: int = _setting(42, "seed for the train/validation split and the built-in corpus", min=0, max=SEED_MAX)
    encoding: str = _setting("utf-8", "text encoding of the corpus file (e.g. latin-1)")

    def validate(self) -> None:
        """Raise UserError for values no corpus could satisfy (the flags are checked against the
        declared ranges before; this also covers a DataConfig made in Python)."""
        if self.format not in FORMATS:
            raise UserError(f"unknown --format {self.format!r}; use one of {', '.join(FORMATS)}")
        if not self.data.strip():
            raise UserError("--data is empty; pass 'builtin', a corpus file path or 'hf:NAME'")
        if not 1 <= self.builtin_size <= MAX_BUILTIN:
            raise UserError(f"--builtin-size must be 1..{MAX_BUILTIN}, got {self.builtin_size}")
        if self.max_records < 0:
            raise UserError(f"--max-records must be 0 (all) or positive, got {self.max_records}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UserError(f"--data-seed must be 0..{SEED_MAX}, got {self.seed}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown data config keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**d)
