"""The mini-GenEval checker's shape classifier: a small CNN over one segmented shape's mask.

What a shape is comes from this network; where it is and what colour it has are measured on its
pixels (data/shapes.py `segment`), so the checker needs no box regression. Its hidden vector is
also the feature an FID-style distance between generated and real images is computed on.

Shapes in names: N shapes, S crop side, F extra features, K classes, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShapeChecker(nn.Module):
    def __init__(self, n_classes: int = 4, side: int = 12, n_features: int = 2, width: int = 64):
        super().__init__()
        self.side, self.n_features, self.width = side, n_features, width
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
        )
        flat = 32 * ((side + 1) // 2) ** 2
        self.embed = nn.Sequential(nn.Linear(flat + n_features, width), nn.GELU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, crops_NxSxS: torch.Tensor, feats_NxF: torch.Tensor,
                labels_N: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits (N, K), embedding (N, E), summed cross-entropy when labels are given)."""
        h = self.conv(crops_NxSxS[:, None]).flatten(1)
        emb_NxE = self.embed(torch.cat([h, feats_NxF], dim=1))
        logits_NxK = self.head(emb_NxE)
        loss = F.cross_entropy(logits_NxK, labels_N, reduction="sum") if labels_N is not None else None
        return logits_NxK, emb_NxE, loss
