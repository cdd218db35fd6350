"""Model inputs from id lists of different lengths."""

from __future__ import annotations

import torch


def pad_batch(seqs: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences: (ids_BxL, mask_BxL with True on real tokens)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    return ids, mask
