"""Heads: pooled backbone features (B, F) -> embeddings (B, D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """Optional BatchNorm, a linear map to `embedding_dim`, L2 normalisation.

    `embedding_dim` 0 keeps the pooled features themselves (D = F): the off-the-shelf
    baseline. BatchNorm before the projection (`bn`) is the usual recipe for fine-tuned
    retrieval heads (it evens out feature scales that pretrained backbones leave uneven).
    """

    def __init__(
        self, in_features: int, embedding_dim: int, normalize: bool = True, bn: bool = False
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features) if bn else None
        self.linear = nn.Linear(in_features, embedding_dim) if embedding_dim > 0 else None
        self.normalize = normalize
        self.out_features = embedding_dim if embedding_dim > 0 else in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features  # (B, F)
        if self.bn is not None:
            x = self.bn(x)
        if self.linear is not None:
            x = self.linear(x)  # (B, D)
        return F.normalize(x, dim=1) if self.normalize else x
