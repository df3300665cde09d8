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

    @torch.no_grad()
    def init_identity(self) -> None:
        """Weight = I, bias = 0: the head starts as the pooled features (D = F, no BatchNorm)."""
        linear = self.linear
        if linear is None or self.bn is not None or linear.in_features != linear.out_features:
            raise ValueError("an identity head needs a square linear map and no BatchNorm")
        linear.weight.copy_(torch.eye(linear.out_features))
        linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features  # (B, F)
        if self.bn is not None:
            x = self.bn(x)
        if self.linear is not None:
            x = self.linear(x)  # (B, D)
        return F.normalize(x, dim=1) if self.normalize else x


HASH_ACTIVATIONS = ("tanh", "identity")


class HashHead(nn.Module):
    """Optional BatchNorm and a linear map to `bits`, relaxed for training, binary at use.

    Training returns the relaxed codes: tanh(scale * x) ("tanh"; `scale` is 1 unless a
    continuation schedule such as HashNet's raises it), or x itself ("identity", for losses
    that binarise inside, as GreedyHash's straight-through sign does). Evaluation mode
    returns the codes: +1 where x >= 0, else -1 (float, (B, bits)); `embed` packs them
    into bytes.
    """

    def __init__(
        self, in_features: int, bits: int, bn: bool = False, activation: str = "tanh"
    ) -> None:
        super().__init__()
        if activation not in HASH_ACTIVATIONS:
            raise ValueError(
                f"hash activation must be one of {HASH_ACTIVATIONS}, got {activation!r}"
            )
        self.bn = nn.BatchNorm1d(in_features) if bn else None
        self.linear = nn.Linear(in_features, bits)
        self.activation, self.out_features = activation, bits
        self.register_buffer("scale", torch.ones(()))  # saved: a checkpoint resumes it

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features if self.bn is None else self.bn(features)  # (B, F)
        x = self.linear(x)  # (B, bits)
        if not self.training:
            return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
        return torch.tanh(self.scale * x) if self.activation == "tanh" else x
