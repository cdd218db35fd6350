"""Which models a server offers, and loading them lazily.

A model's name is its folder's path relative to the models folder ("wine", or "wine/epoch3"). A
name from a request is trusted only after it resolves, symlinks followed, to a folder inside the
models folder whose config.json does too; before a load, so must its weights and tokenizer (a link
out of the folder is refused, not followed). Weights come in through `gptlab.load`, which reads only
safetensors and JSON.

Models stay loaded, most recently used last, up to `max_loaded` of them and, when `max_memory`
(bytes) is set, up to that much memory as `size_of` counts it (the server counts the weights and
the engine's slot caches); the least recently used go first, and `on_unload` hears of each.

A load that fails is remembered with the folder's files as they were, so a broken model costs one
failed load, not one per request (a config that asks for a huge model would otherwise allocate it
again each time); changing any of its files retries.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from gptlab.api import LoadedModel, load
from gptlab.checkpoint import CONFIG, TOKENIZER, WEIGHTS, read_config
from gptlab.checkpoint.hf import MERGES, VOCAB
from gptlab.errors import UserError
from gptlab.serve.redact import hide_paths

log = logging.getLogger("gptlab.serve")

# Folder names we offer: no leading dot (so no "..", no hidden folders), no backslash or NUL.
_PART = r"[\w][\w.+ -]*"
_NAME_RE = re.compile(rf"^{_PART}(/{_PART})?$")
MAX_DEPTH = 2  # runs/wine and runs/wine/epoch3
# What `gptlab.load` reads from a folder: gptlab's files, and a Hugging Face GPT-2 folder's tokenizer.
MODEL_FILES = (CONFIG, WEIGHTS, TOKENIZER, VOCAB, MERGES)

Stamp = tuple[tuple[int, ...] | None, ...]


class ModelNotFound(Exception):
    pass


class ModelBroken(Exception):
    """The folder is there but cannot be loaded (truncated weights, wrong config): the server's problem."""


class ModelRefused(Exception):
    """A file of the model's folder lies outside the models folder (a symlink out of it): not read.

    args: (model name, file name); never the path, which is the server's business.
    """


class ModelRegistry:
    def __init__(self, models_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None, max_loaded: int = 8,
                 on_load: Callable[[LoadedModel], None] | None = None, *, max_memory: int = 0,
                 size_of: Callable[[LoadedModel], int] | None = None,
                 on_unload: Callable[[str, LoadedModel], None] | None = None):
        root = Path(models_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"models folder {root} does not exist or is not a folder: "
                            "pass the folder holding your trained models (e.g. --models runs/)")
        self.root = root.resolve()
        self.device = device
        self.dtype = dtype
        self.max_loaded = max_loaded
        self.on_load = on_load
        self.max_memory = max_memory
        self.size_of = size_of or weight_bytes
        self.on_unload = on_unload
        self._cache: OrderedDict[str, tuple[Stamp, LoadedModel]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._failed: dict[str, tuple[Stamp, str]] = {}  # name -> (files when it failed, the error)
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
            if _NAME_RE.match(name) and self._is_model(Path(dirpath)):
                found.append(name)
        return sorted(found)

    def _inside(self, p: Path) -> bool:
        """`p`, symlinks followed, lies in the models folder."""
        try:
            return p.resolve().is_relative_to(self.root)
        except OSError:  # a symlink loop
            return False

    def _is_model(self, folder: Path) -> bool:
        """A folder in the models folder whose config.json is a file in it too (not a link out)."""
        config = folder / CONFIG
        return self._inside(folder) and config.is_file() and self._inside(config)

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
        if not p.is_relative_to(self.root) or p == self.root or not self._is_model(p):
            raise ModelNotFound(name)
        return p

    def check_files(self, name: str, folder: Path) -> None:
        """ModelRefused if a file the load would read is a link out of the models folder, or not a plain file.

        A missing file is left to the load, which says which one is missing.
        """
        for f in MODEL_FILES:
            p = folder / f
            if (p.exists() or p.is_symlink()) and not (self._inside(p) and p.is_file()):
                log.warning("model %r: refusing %s, which resolves outside %s or is not a file", name, p, self.root)
                raise ModelRefused(name, f)

    def public_error(self, name: str, folder: Path, message: str) -> str:
        """`message` with the model's folder named as the client names it, and no other server path."""
        return hide_paths(message, {str(folder): name, str(self.root): self.root.name})

    def info(self, name: str) -> dict:
        """What config.json says, without loading weights (for the model list)."""
        p = self.path_of(name)
        if not self._inside(p / CONFIG):  # only a models folder that is one model gets here (`single`)
            return {"id": name, "error": f"its {CONFIG} is a link out of the models folder: not read"}
        try:
            cfg = read_config(p)
        except UserError as e:
            return {"id": name, "error": self.public_error(name, p, str(e))}
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
    def _stamp(p: Path) -> Stamp:
        # Re-training into the same folder replaces these files (a new inode, mtime and size): the next
        # request loads the new model, or retries one that failed.
        out: list[tuple[int, ...] | None] = []
        for f in MODEL_FILES:
            try:
                st = (p / f).stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _known(self, name: str, stamp: Stamp) -> LoadedModel | None:
        """The cached model for these files, or ModelBroken if they failed to load before (under self._lock)."""
        hit = self._cache.get(name)
        if hit and hit[0] == stamp:
            self._cache.move_to_end(name)
            return hit[1]
        failed = self._failed.get(name)
        if failed and failed[0] == stamp:
            raise ModelBroken(failed[1])
        return None

    def get(self, name: str) -> LoadedModel:
        """The loaded model (blocking: call it from a worker thread, not the event loop)."""
        p = self.path_of(name)
        self.check_files(name, p)
        stamp = self._stamp(p)
        with self._lock:
            lm = self._known(name, stamp)
            if lm is not None:
                return lm
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # one load per model, even when several requests ask at once
            with self._lock:
                lm = self._known(name, stamp)  # loaded, or failed, while this request waited
                if lm is not None:
                    return lm
            lm = self._load(name, p, stamp)
            size = self.size_of(lm)
            if self.max_memory and size > self.max_memory:
                message = (f"model {name!r} needs {size / 2**20:.0f} MiB, more than this server's memory cap of "
                           f"{self.max_memory / 2**20:.0f} MiB: raise --max-memory-mb or serve fewer --slots")
                with self._lock:
                    self._failed[name] = (stamp, message)
                raise ModelBroken(message)
            with self._lock:
                self._failed.pop(name, None)
                old = self._cache.pop(name, None)
                self._cache[name] = (stamp, lm)
                self._sizes[name] = size
                unloaded = [(name, old[1])] if old else []
                while len(self._cache) > 1 and (len(self._cache) > self.max_loaded or self._over_memory()):
                    gone, (_, gone_lm) = self._cache.popitem(last=False)
                    self._sizes.pop(gone, None)
                    unloaded.append((gone, gone_lm))
            for gone, gone_lm in unloaded:
                log.info("model %r unloaded (least recently used)", gone)
                if self.on_unload:
                    self.on_unload(gone, gone_lm)
            return lm

    def _over_memory(self) -> bool:
        return bool(self.max_memory) and sum(self._sizes.values()) > self.max_memory

    def loaded(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _load(self, name: str, p: Path, stamp: Stamp) -> LoadedModel:
        """Load the folder; on failure remember the error for these files and raise ModelBroken."""
        try:
            lm = load(p, device=self.device, dtype=self.dtype)
            if self.on_load:
                self.on_load(lm)
            return lm
        except UserError as e:
            message = f"model {name!r} cannot be loaded: {self.public_error(name, p, str(e))}"
        except Exception as e:  # noqa: BLE001 - out of memory, a config the model classes choke on: still one line
            log.exception("model %r: loading %s failed", name, p)
            message = (f"model {name!r} cannot be loaded ({type(e).__name__}; the server log has the details): "
                       "fix or re-create its folder")
        with self._lock:
            self._failed[name] = (stamp, message)
        raise ModelBroken(message)


def weight_bytes(lm: LoadedModel) -> int:
    """Bytes of a model's parameters and buffers (a tied weight counted once)."""
    tensors = {id(t): t for t in [*lm.model.parameters(), *lm.model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
