"""Where a run executes: device, autocast precision, CPU threads and torchrun's processes."""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return dev


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls are then ~2-4x faster than fp32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bf16: use --precision fp32")
        return torch.bfloat16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else None
        return None
    raise UserError(f"unknown precision {name!r}: use auto, fp32 or bf16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _destroy_group() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if torch.cuda.is_available() and device_name in ("auto", "cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        # Destroyed before the interpreter tears down: a gloo group left to its destructor at exit
        # can abort the process ("terminate called without an active exception", seen once in
        # tests/test_align.py's two-process SFT after the run had finished and saved). The CLI's
        # workers also skip the interpreter's teardown after this runs (gptlab.cli._leave_worker).
        atexit.register(_destroy_group)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class Runtime:
    """The device, autocast dtype (None = fp32) and process group a task trains and evaluates with."""
    device: torch.device
    amp: torch.dtype | None
    dist: Dist

    @classmethod
    def create(cls, device: str, precision: str, threads: int = 0) -> Runtime:
        dist = init_distributed(device)
        dev = resolve_device(device)
        if dist.world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(dev)
        if threads:
            torch.set_num_threads(threads)
        return cls(dev, resolve_precision(precision, dev), dist)

    def autocast(self) -> Any:
        return autocast(self.device, self.amp)
