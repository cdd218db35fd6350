"""Limits of `gptlab serve`: one typed dataclass; the CLI flags map onto it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gptlab.infer.dtypes import DTYPE_HELP, DTYPE_NAMES
from gptlab.serve.hosts import check_allowed_hosts
from gptlab.settings import setting

ALLOWED_HOSTS_HELP = ("a host name or address requests may name in their Host header, besides localhost names, "
                      "loopback addresses and --host; '*' allows any (the server then answers pages of any "
                      "site that resolves to it: DNS rebinding)")


@dataclass
class ServeSettings:
    max_tokens: int = field(default=256, metadata={"help": "most new tokens one completion may ask for"})
    default_max_tokens: int = field(default=16, metadata={"help": "new tokens when a request names none (OpenAI's default)"})
    max_prompt_chars: int = field(default=4000, metadata={"help": "longest prompt accepted, in characters"})
    max_choices: int = field(default=8, metadata={"help": "most completions per request (prompts x n)"})
    max_explain_steps: int = field(default=32, metadata={"help": "most steps one explanation may trace"})
    max_body_bytes: int = field(default=64_000, metadata={"help": "largest request body; larger ones get 413"})
    workers: int = field(default=2, metadata={"help": "threads for explanation traces (and for completions with --engine off)"})
    queue: int = field(default=64, metadata={"help": "requests waiting for a slot (or a worker); more get 429"})
    engine: str = setting("on", "on: completions of a model are decoded together, one token per request per "
                          "step (continuous batching); off: each request decodes alone on a worker (the old path)",
                          choices=("on", "off"))
    slots: int = setting(16, "requests one model decodes together (--engine on); each step costs a whole batch "
                         "of this size and each slot holds a context of keys and values", min=1, max=4096)
    max_memory_mb: float = setting(0.0, "unload the least recently used models to keep the loaded ones (weights "
                                   "+ slot caches) under this many MiB (0: no cap)", min=0)
    timeout_s: float = field(default=60.0, metadata={"help": "seconds a request may take, queue included; then 504"})
    max_loaded: int = field(default=8, metadata={"help": "models kept in memory (least recently used is dropped)"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if present, else cpu)"})
    dtype: str | None = field(default=None, metadata={"help": DTYPE_HELP})
    allowed_hosts: list[str] = field(default_factory=list, metadata={"help": ALLOWED_HOSTS_HELP})

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "timeout_s":
                if not v > 0:
                    raise ValueError(f"timeout_s must be > 0 (got {v})")
            elif f.name == "max_memory_mb":
                if not (isinstance(v, (int, float)) and v >= 0):
                    raise ValueError(f"max_memory_mb must be >= 0 (got {v}); 0 means no cap")
            elif isinstance(v, int) and not isinstance(v, bool) and v < (0 if f.name == "queue" else 1):
                raise ValueError(f"{f.name} must be >= {0 if f.name == 'queue' else 1} (got {v})")
        if self.engine not in ("on", "off"):
            raise ValueError(f"engine must be on or off (got {self.engine!r})")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (got {self.dtype!r})")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens {self.max_tokens}")
        check_allowed_hosts(self.allowed_hosts)

    def public(self) -> dict:
        """The limits a client may want to know (the page sizes its sliders with them)."""
        # Not the device, nor which host names are let in: how the server is set up is not a client's business.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("device", "dtype", "allowed_hosts", "max_memory_mb")}
