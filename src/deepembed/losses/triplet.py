"""Triplet losses."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_distance
from deepembed.losses.base import MetricLoss
from deepembed.miners.base import Pairs, Triplets, label_masks


class TripletMarginLoss(MetricLoss):
    """max(0, d(a, p) - d(a, n) + margin) (Schroff et al. 2015), averaged over the
    triplets with a positive loss (pytorch-metric-learning's AvgNonZeroReducer).

    Without mined triplets it uses every valid triplet of the batch, computed anchor block
    by anchor block so memory stays O(B^2) rather than O(B^3).
    """

    def __init__(
        self, margin: float = 0.05, distance: str = "euclidean", anchor_block: int = 64
    ) -> None:
        super().__init__()
        self.margin, self.distance, self.anchor_block = margin, distance, anchor_block

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if isinstance(mined, Pairs):
            raise TypeError("triplet takes Triplets, not Pairs")
        dist = pairwise_distance(embeddings, kind=self.distance)  # (B, B)
        if mined is not None:
            if len(mined) == 0:
                return self.zero(embeddings)
            losses = torch.relu(
                dist[mined.anchor, mined.positive]
                - dist[mined.anchor, mined.negative]
                + self.margin
            )
            return _mean_nonzero(losses.sum(), (losses > 0).sum(), embeddings)
        pos, neg = label_masks(labels)
        total = embeddings.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=embeddings.device)
        for start in range(0, len(labels), self.anchor_block):
            block = slice(start, start + self.anchor_block)
            # (b, B, B): anchor a, positive p, negative n
            losses = torch.relu(dist[block, :, None] - dist[block, None, :] + self.margin)
            valid = pos[block, :, None] & neg[block, None, :]
            losses = losses * valid
            total = total + losses.sum()
            count = count + (losses > 0).sum()
        return _mean_nonzero(total, count, embeddings)


def _mean_nonzero(
    total: torch.Tensor, count: torch.Tensor, embeddings: torch.Tensor
) -> torch.Tensor:
    if int(count) == 0:
        return MetricLoss.zero(embeddings) + total * 0.0
    return total / count
