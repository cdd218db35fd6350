"""Typed settings: a dataclass field declares its default, its help and its valid range once, and
every command (flags, TOML files, the Python API) is checked by the same `check`.

Torch-free, so the data package and the CLI's parsers use it without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
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


# Every int setting fits 64 bits (signed, or unsigned as torch's seeds are) unless it says less:
# torch and the OS take no more (a seed of 10**23 used to overflow deep inside torch).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1; an unseeded run's seed is one of them


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
    if bad:
        return f"must be {' and '.join(parts)}"
    if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
        return f"must be between {INT_MIN} and {INT_MAX} (64 bits)"
    return None


def check(obj: Any, flags: dict[str, str] | None = None, *, where: str | None = None) -> Any:
    """Range- and choice-check every field of a settings dataclass; returns obj.

    flags: field -> flag name where the command line spells it otherwise (data.seed -> data_seed).
    where: name fields as where + field (e.g. "config.json model.") instead of as flags, for
    settings read from a file.
    """
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        problem = _range_error(f, v)
        if problem:
            name = where + f.name if where is not None else flag_name((flags or {}).get(f.name, f.name))
            raise UserError(f"{name} {problem} (got {v!r})")
    return obj


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, flag: str, *, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder that is a file (or
    a file that is a folder), or a place under a file or under a folder this user cannot write.

    folder=True: `path` is a folder that may not exist yet (its missing parents are created);
    folder=False: a file, whose folder must exist.
    """
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file: pass a folder")
    if not folder and p.is_dir():
        raise UserError(f"{flag} {p} is a folder: pass a file name")
    if not folder and not p.resolve().parent.is_dir():
        raise UserError(f"cannot write {p}: its folder does not exist; create it or pick another path")
    base = _nearest_existing(p.absolute() if folder else p.absolute().parent)
    if not base.is_dir():
        raise UserError(f"{flag} {p}: {base} is a file, so nothing can be created under it; pick another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: {base} is not writable by this user; pick another path or fix its permissions")
