"""Checkpoint units: the files of one training checkpoint as one all-or-nothing folder.

A unit is `ROOT/step-000123/`: whatever files the writer puts there, then `manifest.json` (each
file's size and sha256, the step) written last, then the folder renamed from `step-000123.tmp`
into place. A kill at any moment therefore leaves either a complete unit or a `.tmp` folder; a
`.tmp` folder whose manifest verifies was complete and only missed its rename (recovery finishes
it), any other is removed. Verification re-hashes every file, so a unit damaged later (a bad
copy, a truncated disk, an edit) is detected instead of being mixed with its neighbours.

Nothing here knows what the files are: the training loop decides what a unit holds and which
files it requires (`training/loop.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.checkpoint import atomic_write_json

MANIFEST = "manifest.json"
TMP = ".tmp"
FORMAT = "gptlab-checkpoint"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Unit:
    path: Path
    step: int

    @property
    def name(self) -> str:
        return self.path.name


def unit_name(step: int) -> str:
    return f"step-{step:06d}"


def units(root: Path) -> list[Unit]:
    """The unit folders under root (complete or not; temporaries excluded), oldest step first."""
    found = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for e in entries:
        m = _NAME.match(e.name)
        if m and e.is_dir():
            found.append(Unit(Path(e.path), int(m.group(1))))
    return sorted(found, key=lambda u: u.step)


# -- hashing and durability -----------------------------------------------------------------------
# Verified digests by file identity: resume checks a unit twice (the --out check, then the loop's
# restore) and a large optimizer state should be hashed once.
_digests: dict[tuple[str, int, int, int], str] = {}


def _digest(path: Path, sync: bool = False) -> tuple[int, str]:
    """(size, sha256) of a file; sync=True also forces it to disk (a unit must survive power loss
    once its manifest claims it is complete)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _digests and not sync:
        return st.st_size, _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    if len(_digests) > 1024:
        _digests.clear()
    _digests[key] = h.hexdigest()
    return st.st_size, _digests[key]


def _sync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading --------------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(m, dict) and m.get("format") == FORMAT and isinstance(m.get("files"), dict)
            and all(isinstance(f, dict) for f in m["files"].values())):
        return None
    return m


def problem(path: Path, step: int, required: Sequence[str] = ()) -> str | None:
    """Why the unit folder `path` cannot be trusted as the checkpoint of `step`, or None when
    every file is there with the size and hash its manifest recorded."""
    m = read_manifest(path)
    if m is None:
        return f"no readable {MANIFEST}"
    if m.get("step") != step:
        return f"{MANIFEST} says step {m.get('step')}"
    missing = [n for n in required if n not in m["files"]]
    if missing:
        return f"{missing[0]} is not in {MANIFEST}"
    for name, want in m["files"].items():
        try:
            size, sha = _digest(path / name)
        except OSError:
            return f"{name} is missing"
        if size != want.get("bytes") or sha != want.get("sha256"):
            return f"{name} differs from what was written"
    return None


def newest_intact(root: Path, required: Sequence[str]) -> tuple[Unit | None, list[tuple[Unit, str]]]:
    """The newest unit that verifies, and the newer ones that did not (with why)."""
    damaged: list[tuple[Unit, str]] = []
    for u in reversed(units(root)):
        why = problem(u.path, u.step, required)
        if why is None:
            return u, damaged
        damaged.append((u, why))
    return None, damaged


# -- writing --------------------------------------------------------------------------------------
def write_unit(root: Path, step: int, fill: Callable[[Path], None], info: dict[str, Any] | None = None) -> Unit:
    """Create ROOT/step-N all at once: fill(folder) writes the files into a temporary folder, the
    manifest goes last, then the rename. A unit already there for this step is replaced."""
    final = root / unit_name(step)
    tmp = final.with_name(final.name + TMP)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        files = {}
        for p in sorted(tmp.iterdir()):
            if p.is_file():
                size, sha = _digest(p, sync=True)
                files[p.name] = {"bytes": size, "sha256": sha}
        atomic_write_json(tmp / MANIFEST, {"format": FORMAT, "version": 1, "step": step, **(info or {}),
                                           "files": files})
        _digest(tmp / MANIFEST, sync=True)
        _sync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The temporary folder is complete from here: a crash before the rename leaves a folder that
    # recover() promotes, so replacing an older unit of the same step never loses both.
    _promote(tmp, final)
    return Unit(final, step)


def _promote(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _sync_dir(final.parent)


def recover(root: Path, required: Sequence[str]) -> None:
    """Finish or remove what a killed writer left under root: a temporary folder whose manifest
    verifies becomes its unit; any other temporary is deleted."""
    try:
        entries = [Path(e.path) for e in os.scandir(root) if e.name.endswith(TMP)]
    except FileNotFoundError:
        return
    for tmp in entries:
        m = _NAME.match(tmp.name[: -len(TMP)])
        if m and tmp.is_dir() and problem(tmp, int(m.group(1)), required) is None:
            _promote(tmp, root / m.group(0))
        elif tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` units."""
    for u in units(root)[:-keep]:
        shutil.rmtree(u.path, ignore_errors=True)


def copy_files(src: Path, out: Path, names: Iterable[str]) -> None:
    """Copy `names` from folder src into out, each by a temporary file and a rename, in the order
    given (the caller puts the file that marks a complete folder last). Copies, not hard links:
    a file edited in place in `out` must not change the checkpoint it came from."""
    for name in names:
        tmp = out / (name + TMP)
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, out / name)


def remove_temporaries(out: Path, names: Iterable[str]) -> None:
    """Delete `out/NAME.tmp` left by a writer killed between its write and its rename."""
    for name in names:
        (out / (name + TMP)).unlink(missing_ok=True)
