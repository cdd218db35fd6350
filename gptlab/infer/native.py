"""A GPT's one-token decoding step as one C call, for sampling one text at a time on a CPU.

Why: at batch 1 a step of the course's model is ~0.8M multiply-adds and the output layer's
matrix-vector product. Through torch it is ~30 operator calls of a few microseconds each, and its
small matrix-vector products run well below the memory's speed (MKL's, on an AMD EPYC: 256 x 1,536 in 43 us, ~9 G multiply-adds/s).
`native/decode.c` does the whole step in one call that reads each weight once, in memory order,
with the output layer split over the threads. The course's model at batch 1 (random weights, 2 cores,
AMD EPYC, benchmarks/generate_speed.py): a step 108 against 242 us with the int8 output layer, 139
against 351 in fp32; a whole generation 5,858 against 3,107 new tokens/s (benchmarks/RESULTS.md).

How: the C file is compiled with the machine's C compiler (`cc`, or $CC) the first time it is
needed, into gptlab's cache folder (~/.cache/gptlab/native, or $GPTLAB_CACHE/native), named by a
hash of the source, the compiler and the CPU, so it is built once per machine (~0.5 s). Weights
are packed once per model (and again when they change) into tiles the kernel streams.

When: `decoder(model, batch)` gives this path on a CPU for up to MAX_ROWS rows of one length (one
call per row: `generate -n 3`; 2-8 rows 1.05-1.9x torch's batched step, benchmarks/RESULTS.md), in
fp32 with an fp32 or int8 output layer (`--dtype fp32|int8`), for GPT blocks as gptlab builds them
(pre- or post-LN, GELU or ReLU, biases or none, no QK-norm), an explanation's capture of attention
and residual streams included (one row). Anything else -- more rows, left padding, bf16 -- goes
through `GPT.decoder()` as before, call by call; `slot_decoder` serves a serving engine's slots. No
compiler, a failed build or GPTLAB_NATIVE=0: torch's path, silently
(`status()` says why). The logits match torch's to float rounding (fp32 ~1e-6; the int8 layer
rounds its input and output to bf16 as torch's kernel does), so a seed gives the same text as on
torch's path, unless a draw falls within that rounding of a boundary between two tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from gptlab.model.gpt import GPT
from gptlab.model.layers import Block, KVCache
from gptlab.model.quant import Int8Linear

SOURCE = Path(__file__).with_name("native") / "decode.c"
NT = 128  # outputs per weight tile: decode.c's NT
FLAGS = ["-O3", "-shared", "-fPIC"]
# Tried in order: OpenMP splits the output layer over torch's threads; without it, one thread.
VARIANTS: tuple[list[str], ...] = (["-march=native", "-fopenmp"], ["-march=native", "-fopenmp-simd"], ["-fopenmp-simd"], [])
# The packed copy doubles the weights' memory: a few MB for the workbench's CPU-sized models, another
# 0.5 GB for a GPT-2-sized one (124M parameters), for which the gain was not measured.
MAX_PARAMS = 50_000_000
MAX_ROWS = 8  # rows a generation may have and still take the C step (see `decoder`)
_FP = ctypes.POINTER(ctypes.c_float)
_why_not = ""  # why the native path is off, once the library was asked for


class _Layer(ctypes.Structure):
    _fields_ = [(n, _FP) for n in ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "out_w", "out_b",
                                   "ln2_w", "ln2_b", "up_w", "up_b", "down_w", "down_b")]


class _Model(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int) for n in ("C", "H", "D", "F", "V", "n_layer", "pre_norm", "gelu", "final_norm",
                                             "int8_head")]
                + [("eps", ctypes.c_float), ("tok_emb", _FP), ("pos_emb", _FP), ("layers", ctypes.POINTER(_Layer)),
                   ("lnf_w", _FP), ("lnf_b", _FP), ("head_w", _FP), ("head_w8", ctypes.POINTER(ctypes.c_int8)),
                   ("head_scale", _FP), ("head_b", _FP)])  # type: ignore[assignment]


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "".join(line for line in info.splitlines() if line.startswith(("flags", "model name")))[:4000]
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("GPTLAB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                          os.path.join(os.path.expanduser("~"), ".cache"), "gptlab")
    return Path(root) / "native"


def _build(cc: str, out: Path, variants: tuple[list[str], ...] = VARIANTS) -> str:
    """Compile SOURCE to `out` (a temporary name, then renamed: never half-written); '' or why not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    why = ""
    # -march=native for AVX2 / AVX-512 where the CPU has them; plain C where the compiler lacks it.
    for arch in variants:
        try:
            r = subprocess.run([cc, *FLAGS, *arch, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                               timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"{cc} failed: {e}"
            continue
        if r.returncode == 0:
            os.replace(tmp, out)
            return ""
        why = f"{cc} failed: {(r.stderr.strip().splitlines() or ['no message'])[-1]}"
    Path(tmp).unlink(missing_ok=True)
    return why


@functools.cache
def _library() -> ctypes.CDLL | None:
    global _why_not
    if os.environ.get("GPTLAB_NATIVE", "1") == "0":
        _why_not = "GPTLAB_NATIVE=0"
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        _why_not = "no C compiler (cc, gcc or clang) on PATH"
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *FLAGS, str(VARIANTS), _cpu_id(), platform.platform()]).encode())
    path = _cache_dir() / f"decode-{key.hexdigest()[:16]}.so"
    if not path.exists():
        try:
            _why_not = _build(cc, path)
        except OSError as e:  # the cache folder cannot be written: build in a temporary one
            path = Path(tempfile.mkdtemp(prefix="gptlab-native-")) / path.name
            _why_not = _build(cc, path) if path.parent.exists() else str(e)
        if _why_not:
            return None
    lib, _why_not = _open(path)
    return lib


def _open(path: Path) -> tuple[ctypes.CDLL | None, str]:
    """The built library, with its function's argument types set; or None and why not."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"{path} cannot be loaded ({e}): delete it to rebuild"
    if lib.gptlab_native_abi() != ctypes.sizeof(_Model) * 100 + ctypes.sizeof(_Layer):
        return None, f"{path} does not match this gptlab: delete it to rebuild"
    lib.gptlab_decode.restype = None
    lib.gptlab_decode.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int] * 6 + [ctypes.c_void_p] * 4)
    return lib, ""


_switched_off = False


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Within it, `decoder` gives None (torch's path): for comparing the two in one process."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def status() -> str:
    """'on' or why the native step is off (for benchmarks and bug reports)."""
    return "on" if _library() is not None else f"off ({_why_not})"


def pack(w_NxK: torch.Tensor) -> torch.Tensor:
    """W (N, K) -> tiles (ceil(N / NT), K, NT), contiguous: decode.c's layout (its comment above NT)."""
    N, K = w_NxK.shape
    pad = -N % NT
    if pad:
        w_NxK = torch.cat([w_NxK, w_NxK.new_zeros(pad, K)])
    return w_NxK.reshape(-1, NT, K).transpose(1, 2).contiguous()


def _unsupported(model: nn.Module) -> str:
    """'' when decode.c computes what this model's decoder computes; else what it lacks."""
    if type(model) is not GPT or not model.causal or model.training:
        return "not a GPT in eval mode"
    if model.num_params() > MAX_PARAMS:
        return f"more than {MAX_PARAMS:,} parameters"
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        return "weights not fp32 on the CPU"
    head = model.lm_head
    if not (type(head) is nn.Linear or type(head) is Int8Linear):
        return "an output layer other than nn.Linear or Int8Linear"
    norms = [model.ln_f] if model.cfg.final_norm else []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if block.cross_attn is not None or attn.q_norm is not None or getattr(attn, "qkv", None) is None:
            return "cross-attention or QK-norm"
        if not (isinstance(mlp.act, nn.ReLU) or (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "tanh")):
            return "an activation other than ReLU or GELU (tanh)"
        norms += [block.ln_attn, block.ln_mlp]
    if any(type(n) is not nn.LayerNorm or n.weight is None or n.bias is None for n in norms):
        return "a norm other than LayerNorm with weight and bias"
    return ""


class _Packed:
    """A model's weights as decode.c reads them, and the struct that points at them."""

    def __init__(self, model: GPT, version: tuple):
        cfg, keep = model.cfg, []

        def ptr(t: torch.Tensor | None, kind: Any = _FP) -> Any:
            if t is None:
                return None
            t = t.detach().contiguous()
            keep.append(t)
            return ctypes.cast(t.data_ptr(), kind)

        def lin(m: nn.Linear) -> tuple[Any, Any]:
            return ptr(pack(m.weight.detach())), ptr(m.bias)

        layers = (_Layer * cfg.n_layer)()
        for L, block in zip(layers, cast("Iterable[Block]", model.blocks)):
            L.ln1_w, L.ln1_b = ptr(block.ln_attn.weight), ptr(block.ln_attn.bias)
            L.qkv_w, L.qkv_b = lin(block.attn.qkv)
            L.out_w, L.out_b = lin(block.attn.out)
            L.ln2_w, L.ln2_b = ptr(block.ln_mlp.weight), ptr(block.ln_mlp.bias)
            L.up_w, L.up_b = lin(block.mlp.up)
            L.down_w, L.down_b = lin(block.mlp.down)
        m = _Model(C=cfg.d_model, H=cfg.n_head, D=cfg.head_size, F=cfg.d_ff, V=cfg.vocab_size, n_layer=cfg.n_layer,
                   pre_norm=int(cfg.norm == "pre"), gelu=int(cfg.activation == "gelu"),
                   final_norm=int(cfg.final_norm), eps=cfg.ln_eps)
        m.layers = layers
        m.tok_emb, m.pos_emb = ptr(model.tok_emb.weight), ptr(model.pos_emb.weight)
        if cfg.final_norm:
            ln_f = cast(nn.LayerNorm, model.ln_f)
            m.lnf_w, m.lnf_b = ptr(ln_f.weight), ptr(ln_f.bias)
        head = model.lm_head
        if isinstance(head, Int8Linear):
            m.int8_head = 1
            m.head_w8 = ptr(pack(cast(torch.Tensor, head.weight_int8)), ctypes.POINTER(ctypes.c_int8))
            m.head_scale = ptr(cast(torch.Tensor, head.scale).float())
        else:
            m.head_w = ptr(pack(head.weight.detach()))
        m.head_b = ptr(head.bias)
        self.struct, self.layers, self.keep = m, layers, keep
        self.version = version  # _version(model) when packed


def _version(model: GPT) -> tuple:
    """Changes when any weight changes. A tensor's data pointer and version counter catch most
    writes, but not all: torch's fused CPU AdamW updates parameters without bumping their counter
    (seen as stale samples in an alignment run's rollouts). So each parameter's sum is part of the
    key too (0.2-0.4 ms per generation for the course's model); buffers (the int8 output layer) are
    only ever replaced. A tensor made under inference_mode has no version counter."""
    params = [p.detach() for p in model.parameters()]
    with torch.no_grad():
        sums = torch.stack([p.sum() for p in params]).tolist()
    return (tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in (*params, *model.buffers())),
            tuple(sums))


_PACKED: weakref.WeakKeyDictionary[GPT, _Packed] = weakref.WeakKeyDictionary()


def _packed(model: GPT) -> _Packed:
    p, version = _PACKED.get(model), _version(model)
    if p is None or p.version != version:
        p = _PACKED[model] = _Packed(model, version)
    return p


class _Kernel:
    """What both entry points share: the library, the model's packed weights, a scratch buffer of
    this caller's own (threads decoding one model must not share one), the token embedding's hooks."""

    def __init__(self, model: GPT, lib: ctypes.CDLL):
        cfg = model.cfg
        self.packed = _packed(model)  # holds the weights the struct points at
        self.scratch = torch.empty(lib.gptlab_scratch_floats(cfg.d_model, cfg.n_head, cfg.head_size, cfg.d_ff,
                                                             cfg.context_length))
        self.fn, self.struct, self.tok_emb = lib.gptlab_decode, ctypes.addressof(self.packed.struct), model.tok_emb
        self.cache_shape = (cfg.n_layer, cfg.n_head, cfg.head_size)

    def fits(self, cache: KVCache, B: int) -> bool:
        """A plain contiguous fp32 cache (or a SlotCache) of this model with B rows."""
        k, v = cache.k_LxBxHxSxD, cache.v_LxBxHxSxD
        L, H, D = self.cache_shape
        return (k.shape == (L, B, H, cache.max_len, D) and k.dtype == torch.float32 and k.is_contiguous()
                and v.is_contiguous())

    def run_hooks(self, ids: torch.Tensor) -> None:
        """The token embedding's hooks see every step, as on torch's path (the server's deadline check)."""
        if self.tok_emb._forward_pre_hooks or self.tok_emb._forward_hooks:
            self.tok_emb(ids)

    def __call__(self, cache: KVCache, B: int, row: int, token: int, pos: int, t: int, logits_ptr: int,
                 attn_ptr: int | None = None, streams_ptr: int | None = None) -> None:
        self.fn(self.struct, cache.k_LxBxHxSxD.data_ptr(), cache.v_LxBxHxSxD.data_ptr(), B, cache.max_len, row, token,
                pos, t, logits_ptr, self.scratch.data_ptr(), attn_ptr, streams_ptr)


def decoder(model: nn.Module, batch: int, *, lib: ctypes.CDLL | None = None) -> Callable[..., torch.Tensor] | None:
    """`model.decoder()`'s function, with the steps it can take run by decode.c (one call per row,
    up to MAX_ROWS rows); None when no step can (more rows, a model it does not cover, no library):
    use model.decoder(). `lib`: a library built by `_build` (tests build the kernel's plainer
    variants); else this machine's."""
    lib = lib or _library()
    if _switched_off or not 1 <= batch <= MAX_ROWS or _unsupported(model) or lib is None:
        return None
    assert isinstance(model, GPT)
    kernel, cfg, torch_decode = _Kernel(model, lib), model.cfg, model.decoder()
    V, C_max, n_layer, H, C = cfg.vocab_size, cfg.context_length, cfg.n_layer, cfg.n_head, cfg.d_model

    def decode(idx_B: torch.Tensor, pos_B: torch.Tensor, cache: KVCache, key_mask_BxS: torch.Tensor | None = None, *,
               attn_out: list[torch.Tensor] | None = None, streams_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        B = idx_B.shape[0] if idx_B.dim() == 1 else 0
        capture = attn_out is not None or streams_out is not None
        if (key_mask_BxS is not None or type(cache) is not KVCache or not 1 <= B <= MAX_ROWS or (capture and B > 1)
                or not kernel.fits(cache, B)):
            return torch_decode(idx_B, pos_B, cache, key_mask_BxS, attn_out=attn_out, streams_out=streams_out)
        tokens, positions, t = idx_B.tolist(), pos_B.tolist(), cache.length
        if not (all(0 <= i < V for i in tokens) and all(0 <= p < C_max for p in positions)) or not t < min(cache.max_len, C_max):
            return torch_decode(idx_B, pos_B, cache)  # torch's path raises the error (C would read past the end)
        kernel.run_hooks(idx_B)
        logits_BxV = torch.empty(B, V)
        # An explanation's capture (one row), shaped as torch's path gives it: per layer (1, H, 1, t + 1) and (1, C).
        attn = None if attn_out is None else torch.empty(n_layer, 1, H, 1, t + 1)
        streams = None if streams_out is None else torch.empty(n_layer + 1, 1, C)
        out = logits_BxV.data_ptr()
        for b in range(B):
            kernel(cache, B, b, tokens[b], positions[b], t, out + 4 * b * V,
                   None if attn is None else attn.data_ptr(), None if streams is None else streams.data_ptr())
        cache.length += 1
        if attn_out is not None and attn is not None:
            attn_out.extend(attn.unbind(0))
        if streams_out is not None and streams is not None:
            streams_out.extend(streams.unbind(0))
        return logits_BxV

    decode.kernel = kernel  # type: ignore[attr-defined]  # keeps the weights and scratch alive while decoding
    return decode


def slot_decoder(model: nn.Module, *, lib: ctypes.CDLL | None = None) -> Callable[..., None] | None:
    """For a serving engine's slots (model/layers.py SlotCache): `step(cache, rows, ids, positions,
    logits_BxV)` feeds each of `rows` its id at its position (the key written there, attention over
    the row's slots up to it) and writes that row of logits_BxV (B, V); other rows are not touched,
    so a step costs its live rows only. A row may come several times: its ids go in order (a
    prompt, each position's key written before the next attends to it), its logits are the last's.
    A row's bits depend on that row alone, as the engine's determinism needs. The token
    embedding's hooks run once per call. None where the native step does not cover the model."""
    lib = lib or _library()
    if _switched_off or _unsupported(model) or lib is None:
        return None
    assert isinstance(model, GPT)
    kernel, V, C_max = _Kernel(model, lib), model.cfg.vocab_size, model.cfg.context_length

    def step(cache: KVCache, rows: list[int], ids: list[int], positions: list[int], logits_BxV: torch.Tensor) -> None:
        B, S = cache.k_LxBxHxSxD.shape[1], cache.max_len
        if (not kernel.fits(cache, B) or logits_BxV.shape != (B, V) or logits_BxV.dtype != torch.float32
                or not logits_BxV.is_contiguous()):
            raise ValueError("slot_decoder: a contiguous fp32 cache of this model and (B, V) fp32 logits are needed")
        if not all(0 <= r < B for r in rows) or not all(0 <= t < V for t in ids) or not all(
                0 <= p < min(S, C_max) for p in positions):
            raise ValueError(f"slot_decoder: rows in [0, {B}), ids in [0, {V}) and positions in [0, {S}) are needed")
        kernel.run_hooks(torch.tensor(ids))
        out = logits_BxV.data_ptr()
        for r, t, p in zip(rows, ids, positions):
            kernel(cache, B, r, t, p, p, out + 4 * r * V)

    step.kernel = kernel  # type: ignore[attr-defined]  # keeps the weights and scratch alive
    return step
