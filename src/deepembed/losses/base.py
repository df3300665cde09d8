"""The MetricLoss base class: input validation and the call signature shared by all losses."""

from __future__ import annotations

import torch
from torch import nn

from deepembed.miners.base import Pairs, Triplets


class MetricLoss(nn.Module):
    """Called as `loss(embeddings (B, D), labels (B,), mined=None) -> scalar`.

    `mined` restricts the loss to a miner's pairs or triplets; None uses every valid tuple
    of the batch. Subclasses implement `compute` with validated tensors on one device.
    """

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mined: Pairs | Triplets | None = None,
    ) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError(
                f"embeddings must be (batch, dim), got shape {tuple(embeddings.shape)}"
            )
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        # Pairwise math in float32 at least: float16 exp/logsumexp would overflow.
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        return self.compute(embeddings, labels, mined)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def zero(embeddings: torch.Tensor) -> torch.Tensor:
        """A zero loss still connected to the graph (so backward() works on tuple-free batches)."""
        return embeddings.sum() * 0.0
