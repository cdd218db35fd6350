"""Configuration of the corpus: where the text comes from and how records become documents."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gptlab.errors import UserError

WINE_TEMPLATE = "wine review : {country} : {province} : {variety} : {description}"
FORMATS = ("auto", "wine", "csv", "jsonl", "json", "text")


@dataclass
class DataConfig:
    data: str = field(
        default="builtin",
        metadata={
            "help": "corpus: 'builtin' (synthetic wine reviews, offline), a .csv/.json/.jsonl/.txt "
            "file (or a folder holding one), or 'hf:GroNLP/ik-nlp-22_winemag'"
        },
    )
    format: str = field(
        default="auto",
        metadata={"help": "file format: auto (by extension and columns) | wine | csv | jsonl | json | text"},
    )
    template: str = field(
        default=WINE_TEMPLATE,
        metadata={
            "help": "how a tabular record becomes one document; {name} is a column "
            "(ignored for plain text)"
        },
    )
    normalize: bool = field(
        default=True,
        metadata={"help": "lowercase and pad punctuation with spaces, as the course notebook does"},
    )
    builtin_size: int = field(
        default=20000, metadata={"help": "number of synthetic reviews when --data builtin"}
    )
    max_records: int = field(
        default=0, metadata={"help": "keep only the first N usable records (0 = all)"}
    )
    val_fraction: float = field(
        default=0.05, metadata={"help": "fraction of records held out for validation"}
    )
    seed: int = field(
        default=42, metadata={"help": "seed for the train/validation split and the built-in corpus"}
    )
    encoding: str = field(
        default="utf-8", metadata={"help": "text encoding of the corpus file (e.g. latin-1)"}
    )

    def validate(self) -> None:
        """Raise UserError for values no corpus could satisfy."""
        if self.format not in FORMATS:
            raise UserError(f"unknown --format {self.format!r}; use one of {', '.join(FORMATS)}")
        if not self.data.strip():
            raise UserError("--data is empty; pass 'builtin', a corpus file path or 'hf:NAME'")
        if self.builtin_size < 1:
            raise UserError(f"--builtin-size must be at least 1, got {self.builtin_size}")
        if self.max_records < 0:
            raise UserError(f"--max-records must be 0 (all) or positive, got {self.max_records}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown data config keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**d)
