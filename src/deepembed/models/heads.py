"""Heads: map backbone features to the embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """Linear projection to `embedding_dim`, L2-normalised when `normalize`."""

    def __init__(self, in_features: int, embedding_dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, embedding_dim)
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(features)  # (B, D)
        return F.normalize(x, dim=1) if self.normalize else x
