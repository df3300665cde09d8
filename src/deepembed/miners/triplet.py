"""Triplet miners."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_distance
from deepembed.miners.base import MINERS, Miner, Triplets, label_masks


@MINERS.register("batch_hard")
class BatchHardMiner(Miner):
    """For each anchor: its farthest positive and nearest negative (Hermans et al. 2017).

    Anchors without a positive or a negative in the batch give no triplet.
    """

    def __init__(self, distance: str = "euclidean") -> None:
        super().__init__()
        self.distance = distance

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        dist = pairwise_distance(embeddings, kind=self.distance)  # (B, B)
        pos, neg = label_masks(labels)
        inf = torch.finfo(dist.dtype).max
        hardest_pos = dist.masked_fill(~pos, -inf).argmax(1)  # (B,) farthest positive
        hardest_neg = dist.masked_fill(~neg, inf).argmin(1)  # (B,) nearest negative
        valid = pos.any(1) & neg.any(1)
        anchors = torch.nonzero(valid, as_tuple=True)[0]
        return Triplets(anchors, hardest_pos[anchors], hardest_neg[anchors])
