"""Which models a server offers, and loading them lazily.

A model's name is its folder's path relative to the models folder ("wine", or "wine/epoch3"). A
name from a request is trusted only after it resolves, symlinks followed, to a folder inside the
models folder that holds a config.json; weights come in through `gptlab.load`, which reads only
safetensors and JSON.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from gptlab.api import LoadedModel, load
from gptlab.checkpoint import CONFIG, WEIGHTS, read_config
from gptlab.errors import UserError

# Folder names we offer: no leading dot (so no "..", no hidden folders), no backslash or NUL.
_PART = r"[\w][\w.+ -]*"
_NAME_RE = re.compile(rf"^{_PART}(/{_PART})?$")
MAX_DEPTH = 2  # runs/wine and runs/wine/epoch3


class ModelNotFound(Exception):
    pass


class ModelBroken(Exception):
    """The folder is there but cannot be loaded (truncated weights, wrong config): the server's problem."""


class ModelRegistry:
    def __init__(self, models_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None, max_loaded: int = 8,
                 on_load: Callable[[LoadedModel], None] | None = None):
        root = Path(models_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"models folder {root} does not exist or is not a folder: "
                            "pass the folder holding your trained models (e.g. --models runs/)")
        self.root = root.resolve()
        self.device = device
        self.dtype = dtype
        self.max_loaded = max_loaded
        self.on_load = on_load
        self._cache: OrderedDict[str, tuple[tuple, LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    @property
    def single(self) -> bool:
        """The models folder is itself one model."""
        return (self.root / CONFIG).is_file()

    # -- discovery ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        if self.single:
            return [self.root.name]
        found = []
        for dirpath, dirnames, _ in os.walk(self.root, followlinks=True):
            rel = Path(dirpath).relative_to(self.root)
            depth = len(rel.parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if depth >= MAX_DEPTH:
                dirnames[:] = []
            if depth == 0:
                continue
            name = rel.as_posix()
            if (Path(dirpath) / CONFIG).is_file() and self._inside(Path(dirpath)) and _NAME_RE.match(name):
                found.append(name)
        return sorted(found)

    def _inside(self, p: Path) -> bool:
        try:
            return p.resolve().is_relative_to(self.root)
        except OSError:
            return False

    def path_of(self, name: str) -> Path:
        """The folder of model `name`, or ModelNotFound; never a path outside the models folder."""
        if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name.split("/"):
            raise ModelNotFound(name)
        if self.single:
            if name != self.root.name:
                raise ModelNotFound(name)
            return self.root
        if len(name.split("/")) > MAX_DEPTH:
            raise ModelNotFound(name)
        p = (self.root / name).resolve()
        if not p.is_relative_to(self.root) or p == self.root or not (p / CONFIG).is_file():
            raise ModelNotFound(name)
        return p

    def info(self, name: str) -> dict:
        """What config.json says, without loading weights (for the model list)."""
        p = self.path_of(name)
        try:
            cfg = read_config(p)
        except UserError as e:
            return {"id": name, "error": str(e)}
        model = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
        return {
            "id": name,
            "kind": cfg.get("kind"),
            "context_length": model.get("context_length"),
            "vocab_size": model.get("vocab_size"),
            "created": int((p / CONFIG).stat().st_mtime),
            "loaded": name in self._cache,
        }

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def _stamp(p: Path) -> tuple:
        # Re-training into the same folder replaces these files: the next request loads the new model.
        out: list[tuple[int, int] | None] = []
        for f in (CONFIG, WEIGHTS):
            try:
                st = (p / f).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def get(self, name: str) -> LoadedModel:
        """The loaded model (blocking: call it from a worker thread, not the event loop)."""
        p = self.path_of(name)
        stamp = self._stamp(p)
        with self._lock:
            hit = self._cache.get(name)
            if hit and hit[0] == stamp:
                self._cache.move_to_end(name)
                return hit[1]
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # one load per model, even when several requests ask at once
            with self._lock:
                hit = self._cache.get(name)
                if hit and hit[0] == stamp:
                    return hit[1]
            try:
                lm = load(p, device=self.device, dtype=self.dtype)
            except UserError as e:
                raise ModelBroken(f"model {name!r} cannot be loaded: {e}") from None
            if self.on_load:
                self.on_load(lm)
            with self._lock:
                self._cache[name] = (stamp, lm)
                self._cache.move_to_end(name)
                while len(self._cache) > self.max_loaded:
                    self._cache.popitem(last=False)
            return lm
