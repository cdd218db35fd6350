"""Weight layout for sampling on a CPU: each linear layer's weight stored transposed in memory.

Why: `nn.Linear` keeps W as (out, in) rows, so one token's product x @ W^T is a matrix-vector
product with a dot product per output: a horizontal sum for each of the 10,000 outputs of the
output layer. With the same W held column-major (its memory is W^T, (in, out), contiguous) the
product streams W^T's rows and accumulates every output at once. Measured on 2 cores (AMD EPYC,
AVX-512, torch 2.13, benchmarks/RESULTS.md): one row through the course model's output layer
(256 x 10,176, fp32) 270 -> 178 us, its 256 x 1,536 attention input 44 -> 31 us; a whole batch-1
fp32 decoding step 1.3x faster; from 8 rows up the two layouts are within a few percent either way.

What: the values, shapes and state-dict keys do not change, only the strides (W.stride() is
(1, out)); the same matrix product gives the same logits to float rounding. Checkpoints are
written contiguous (checkpoint.atomic_save_tensors). For inference only (`gptlab.load`): a model
being trained keeps the usual layout. A weight shared with an embedding (a tied output layer) is
left alone, since looking up one token's row would then read 256 scattered floats.
"""

from __future__ import annotations

import torch.nn as nn


def column_major_linears(model: nn.Module) -> nn.Module:
    """Store every `nn.Linear` weight of `model` transposed in memory (column-major), in place;
    returns the model. Weights shared with an `nn.Embedding` keep their layout."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in embedded:
            module.weight.data = module.weight.data.t().contiguous().t()
    return model
