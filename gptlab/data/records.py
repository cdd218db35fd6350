"""A corpus as gptlab trains on it: documents made from records by a template, and the split of
records into training and validation."""

from __future__ import annotations

import collections
import math
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gptlab.data.config import DataConfig
from gptlab.data.normalize import normalize_text
from gptlab.errors import UserError


@dataclass
class Corpus:
    records: list[str]  # one document per entry, template applied, normalised if asked
    source: str  # human description, e.g. "wine-reviews.csv (Kaggle wine layout)"
    skipped: int  # rows dropped because a template field was missing or empty
    fields: list[dict] | None = None  # raw row per record for tabular sources, same order

    def __len__(self) -> int:
        return len(self.records)

def split_records(records: list, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split record indices into (train, val), each sorted, reproducible by seed.

    Whole records go to one side, so no document leaks across the split. Validation gets
    round(n * val_fraction) records, at least one when n >= 2 and val_fraction > 0, and never
    all of them.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n = len(records)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])

def template_fields(template: str) -> list[str]:
    """The distinct ``{name}`` fields of a str.format template, in order of appearance."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(
            f"bad --template {template!r}: {e}; write fields as {{name}} and literal braces as {{{{ }}}}"
        ) from None
    names: list[str] = []
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit() or "." in name or "[" in name:
            raise UserError(
                f"--template field {{{name}}} must be a plain column name, e.g. {{description}}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise UserError(f"--template {template!r} names no field; use e.g. '{{title}} : {{body}}'")
    return names

def header_template(template: str, names: list[str]) -> str | None:
    """The template up to the end of its last field named in `names`, with the text that follows
    that field up to the next field (`wine review : {country} : {province} : {variety} :` of
    `... : {variety} : {description}`); None when no field is named."""
    parts = list(string.Formatter().parse(template))
    last = max((k for k, (_, name, _, _) in enumerate(parts) if name in names), default=None)
    if last is None:
        return None
    esc = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731 - parse() unescaped them
    out = "".join(esc(lit) + ("" if name is None else "{" + name + "}") for lit, name, _, _ in parts[:last + 1])
    for lit, name, _, _ in parts[last + 1:]:
        out += esc(lit)  # parse() splits a literal at each escaped brace
        if name is not None:
            break
    return out


def apply_template(
    rows: Iterable[dict], template: str, names: list[str], cfg: DataConfig
) -> tuple[list[str], list[dict], int]:
    """Render each row with the template: (documents, the rows used, rows skipped)."""
    records: list[str] = []
    used: list[dict] = []
    skipped = 0
    for row in rows:
        values = {}
        for name in names:
            value = cell_text(row.get(name))
            if not value:
                break
            values[name] = value
        else:
            doc = template.format_map(values)
            records.append(normalize_text(doc) if cfg.normalize else doc)
            used.append(row)
            if cfg.max_records and len(records) >= cfg.max_records:
                break
            continue
        skipped += 1
    return records, used, skipped


def cell_text(value: Any) -> str:
    """A field as text; missing values (None, NaN, blank) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def label_fields(rows: list[dict], names: list[str], max_share: float = 0.05) -> dict[str, collections.Counter[str]]:
    """The template's label fields in `rows` with their values' counts: the fields whose values
    repeat (at most `max_share` of the rows distinct, and at least twice as many rows as values),
    as a wine review's country, province and variety do and its description does not."""
    out: dict[str, collections.Counter[str]] = {}
    for name in names:
        field = collections.Counter(cell_text(row.get(name)) for row in rows)
        field.pop("", None)
        if field and len(field) <= max(1, max_share * len(rows)) and 2 * len(field) <= len(rows):
            out[name] = field
    return out


def label_values(rows: list[dict], names: list[str], max_share: float = 0.05) -> list[str]:
    """The distinct values of the template's label fields in `rows` (`label_fields`), the most
    frequent first (ties alphabetical). A word tokenizer keeps their words, so a rare name never
    becomes [UNK]."""
    counts: collections.Counter[str] = collections.Counter()
    for field in label_fields(rows, names, max_share).values():
        counts.update(field)
    return sorted(counts, key=lambda v: (-counts[v], v))
