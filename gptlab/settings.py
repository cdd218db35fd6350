"""Typed settings: a dataclass field declares its default, its help and its valid range once, and
every command (flags, TOML files, the Python API) is checked by the same `check`.

Torch-free, so the data package and the CLI's parsers use it without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from gptlab.errors import UserError


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            above: float | None = None, below: float | None = None,
            choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with its help and range: min/max inclusive, above/below exclusive."""
    meta = {"help": help, "min": min, "max": max, "above": above, "below": below,
            "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, list):  # a mutable default: each instance gets its own copy
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _range_error(f: dataclasses.Field, v: Any) -> str | None:
    if isinstance(v, list):  # a list of numbers: each one in range
        return next((p for p in (_range_error(f, x) for x in v) if p), None)
    m = f.metadata
    if m.get("choices") is not None and v not in m["choices"]:
        return f"must be one of {', '.join(map(str, m['choices']))}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    lo, hi, gt, lt = m.get("min"), m.get("max"), m.get("above"), m.get("below")
    parts = []
    if lo is not None:
        parts.append(f">= {lo}")
    if gt is not None:
        parts.append(f"> {gt}")
    if hi is not None:
        parts.append(f"<= {hi}")
    if lt is not None:
        parts.append(f"< {lt}")
    bad = ((lo is not None and v < lo) or (gt is not None and v <= gt)
           or (hi is not None and v > hi) or (lt is not None and v >= lt))
    return f"must be {' and '.join(parts)}" if bad else None


def check(obj: Any, flags: dict[str, str] | None = None) -> Any:
    """Range- and choice-check every field of a settings dataclass; returns obj.

    flags: field -> flag name where the command line spells it otherwise (data.seed -> data_seed).
    """
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        problem = _range_error(f, v)
        if problem:
            raise UserError(f"{flag_name((flags or {}).get(f.name, f.name))} {problem} (got {v!r})")
    return obj
