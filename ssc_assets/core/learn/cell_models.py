"""Small CNN for single-cell crops (issue 11). Pure torch: no Dagster, no MLflow.

:class:`CellCNN`: ``n_blocks`` blocks of (3x3 conv, padding 1 -> BatchNorm -> ReLU -> 2x2 max
pool), ``width`` channels each, global average pooling, dropout, a linear ``embedding_size``-d
embedding (no activation) and a linear logit on that embedding (SSc = 1 vs HC = 0). The logit
is a linear function of the embedding, so a linear classifier on embeddings can recover it.

Input float32 (B, C, S, S) with S divisible by 2**n_blocks being the natural case (any S >=
2**n_blocks works: pooling floors); output logits (B,) float32; ``embed`` (B, E).
Default (3 channels, width 32, 4 blocks, E = 16): ~29 k parameters; a 3 x 64 x 64 crop costs
~16 M multiply-adds forward. On CPU, channels-last tensors (``x.to(memory_format=
torch.channels_last)`` and ``model.to(memory_format=torch.channels_last)``) train ~1.8x faster
(measured on 2 cores); :mod:`cell_training` does this.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_blocks(in_channels: int, width: int, n_blocks: int) -> list[nn.Module]:
    """``n_blocks`` x (3x3 conv, no bias -> BatchNorm -> ReLU -> 2x2 max pool), ``width`` channels:
    (B, in_channels, S, S) -> (B, width, S / 2**n_blocks, S / 2**n_blocks) (pooling floors)."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(n_blocks):
        layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c = width
    return layers


class CellCNN(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 32, n_blocks: int = 4, embedding_size: int = 16,
                 dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(*conv_blocks(in_channels, width, n_blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(width, embedding_size)
        self.classifier = nn.Linear(embedding_size, 1)
        self.config = {"in_channels": in_channels, "width": width, "n_blocks": n_blocks,
                       "embedding_size": embedding_size, "dropout": dropout}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, embedding_size) float32."""
        return self.embedding(self.dropout(self.pool(self.features(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> logits (B,)."""
        return self.classifier(self.embed(x)).squeeze(1)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B, E), logit (B,)) in one pass."""
        e = self.embed(x)
        return e, self.classifier(e).squeeze(1)
