"""Weight-only int8 for inference: the output layer's weights as int8 with one scale per row.

Why: decoding one sequence at a time on a CPU is bound by memory bandwidth, not arithmetic. Each
new token reads every weight once, and the output layer (d_model x vocabulary: 10 MB in fp32 for
the course's model) is most of those bytes; on the 2-core machine its fp32 matrix-vector product
alone takes ~0.19 ms of a ~0.5 ms step. In int8 it reads a quarter of the bytes
(0.04 ms alone; ~0.09 ms inside the decoding loop, where the caches are cold).

What: rows of W (V, C) are scaled to [-127, 127] (symmetric, per output row) and rounded; the
product runs in torch's int8 weight-only kernel with bf16 inputs and outputs, then returns to
the model's dtype. Only the output layer is converted: the blocks' small matrices are no faster
in int8 here (their cost is the call, not the bytes: 419 vs 425 us per token, benchmarks/RESULTS.md),
and leaving them alone keeps the rest of the computation exactly as trained.

It is a loading option (`gptlab.load(path, dtype="int8")`, `--dtype int8`): checkpoints stay
fp32. Logits move by about 1% of their size (bf16 rounding of the product plus the int8 grid);
tests check the next-token distributions against fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn

# torch's int8 kernel reads its inputs in blocks of 16: with other widths it returns garbage or
# crashes (checked on torch 2.13 CPU: widths 8, 24 wrong, 7 a segfault; every multiple of 16 right).
INT8_WIDTH_MULTIPLE = 16


@functools.cache
def _int8_mm():
    """The kernel's overload itself: calling the packet (torch.ops.aten._weight_int8pack_mm) first
    checks its arguments in Python for script objects, a few microseconds per token at batch 1.
    Looked up on first use, not at import: an older torch may lack the kernel, and gptlab must
    still import there (only --dtype int8 needs it)."""
    return torch.ops.aten._weight_int8pack_mm.default


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 (V, C) and a bf16 scale per row; x and y in any float dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features % INT8_WIDTH_MULTIPLE:
            raise ValueError(f"it needs an input width (the model's d_model) divisible by {INT8_WIDTH_MULTIPLE} "
                             f"(got {linear.in_features})")
        w_VxC = linear.weight.detach().float().contiguous()  # the kernel reads rows (a loaded model's may be column-major)
        # The kernel takes the scales in the input's dtype (bf16); rounding them is part of the ~1%.
        scale_V = (w_VxC.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.bfloat16).tiny)
        self.register_buffer("weight_int8", torch.round(w_VxC / scale_V[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale_V.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x_NxC: torch.Tensor) -> torch.Tensor:
        return self.as_function()(x_NxC)

    def as_function(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """forward() with the tensors bound (GPT.decoder builds it once per generation)."""
        mm, w_int8, scale, bias = _int8_mm(), self.weight_int8, self.scale, self.bias
        C, V = self.in_features, self.out_features

        def linear(x_NxC: torch.Tensor) -> torch.Tensor:
            lead = x_NxC.shape[:-1]
            y_NxV = mm(x_NxC.reshape(-1, C).to(torch.bfloat16), w_int8, scale)
            # The bf16 product plus a bias in x's dtype (fp32 or bf16) is already x's dtype by type
            # promotion, with the same bits as a cast first: one call fewer per token.
            if bias is None or bias.dtype != x_NxC.dtype or x_NxC.dtype not in (torch.float32, torch.bfloat16):
                y_NxV = y_NxV.to(x_NxC.dtype)
            if bias is not None:
                y_NxV = y_NxV + bias
            return y_NxV if len(lead) == 1 else y_NxV.view(*lead, V)
        return linear


def quantize_output_layer(model: nn.Module) -> nn.Module:
    """Replace `model.lm_head` (an nn.Linear) by its Int8Linear, in place; returns the model.

    A tied output layer keeps its embedding in fp32: the int8 copy is the output layer's own.
    """
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("it is for GPT models, whose output layer covers the vocabulary; this model has none")
    model.lm_head = Int8Linear(head)
    return model
