"""Shared directions for groups of output rows: a training-time reparametrization of the output layer.

At T=1 a sample leaves a structured text's template where the output layer leaves probability on
words that cannot stand in a slot (a description word where the variety goes). Cross-entropy pushes
each such word down by its own tiny probability, and a rare name's row moves as rarely as the name
is seen, so after minutes of training the rare names and the thousands of wrong words share one
thin tail. Here each group of rows (the words of one label field, say) also gets one learned
direction that all its rows share, W_eff = W + F @ U with F the (V, G) 0/1 membership: what the
frequent names teach about "a variety goes here" moves every variety's row, the rare ones
included, and the hidden state can lift the whole group above the other words along one direction.

Registered with torch's `parametrize`, so `head.weight` is W_eff everywhere it is read (the fused
loss, sampling during training). `fold` turns the layer back into a plain `nn.Linear` holding W_eff:
a saved model is a standard GPT, and nothing that loads, samples, quantizes or exports it changes.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize


class SharedDirections(nn.Module):
    """weight (V, C) -> weight + F @ U: F (V, G) group membership (fixed), U (G, C) learned, from 0.

    F is 0/1 and sparse (a few thousand memberships of V * G): added row by row, not as a (V, G)
    matrix product, so hundreds of groups cost what a few do."""

    rows_M: torch.Tensor
    groups_M: torch.Tensor

    def __init__(self, groups_VxG: torch.Tensor, d_model: int):
        super().__init__()
        rows_M, groups_M = torch.nonzero(groups_VxG, as_tuple=True)  # membership m: row rows_M[m] in group groups_M[m]
        # Not saved with the parameters: rebuilt from the same data and tokenizer (a resumed run).
        self.register_buffer("rows_M", rows_M, persistent=False)
        self.register_buffer("groups_M", groups_M, persistent=False)
        self.vocab_size = groups_VxG.shape[0]
        self.directions_GxC = nn.Parameter(torch.zeros(groups_VxG.shape[1], d_model))

    @property
    def groups_VxG(self) -> torch.Tensor:
        """F, the (V, G) 0/1 membership."""
        f = torch.zeros(self.vocab_size, self.directions_GxC.shape[0], device=self.rows_M.device)
        f[self.rows_M, self.groups_M] = 1.0
        return f

    def forward(self, weight_VxC: torch.Tensor) -> torch.Tensor:
        return weight_VxC.index_add(0, self.rows_M, self.directions_GxC[self.groups_M].to(weight_VxC.dtype))


def share_directions(head: nn.Linear, groups_VxG: torch.Tensor) -> None:
    """Give `head`'s rows the groups' shared directions (U = 0: the layer computes what it did)."""
    if groups_VxG.dim() != 2 or groups_VxG.shape[0] != head.weight.shape[0]:
        raise ValueError(f"groups must be (vocab {head.weight.shape[0]}, G), got {tuple(groups_VxG.shape)}")
    parametrize.register_parametrization(head, "weight",
                                         SharedDirections(groups_VxG.to(head.weight.device), head.weight.shape[1]))


def fold(model: nn.Module) -> None:
    """Every parametrized tensor of `model` becomes a plain parameter holding its current value."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations)):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def computed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with each parametrized tensor as the model computes it, under its plain
    name (`lm_head.weight`), and the parametrization's own tensors left out: the saved model."""
    sd = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in f".{k}"}
    for prefix, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in cast(nn.ModuleDict, module.parametrizations):
                sd[f"{prefix}.{name}" if prefix else name] = getattr(module, name).detach()
    return sd


def saved_params(model: nn.Module) -> int:
    """The parameters the saved model holds: a parametrization's own (U) are left out, its
    original (W) counts once as the tensor it computes."""
    return sum(p.numel() for name, p in model.named_parameters()
               if ".parametrizations." not in f".{name}" or name.endswith(".original"))


def raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parametrizations' own tensors (W and U), which a resumed run needs besides the saved model."""
    return {k: v for k, v in model.state_dict().items() if ".parametrizations." in f".{k}"}
