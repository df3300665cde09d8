"""Triplet losses."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_distance
from deepembed.losses.base import LOSSES, MetricLoss
from deepembed.losses.functional import mean_nonzero
from deepembed.miners.base import Pairs, Triplets, label_masks


@LOSSES.register("triplet")
class TripletMarginLoss(MetricLoss):
    """max(0, d(a, p) - d(a, n) + margin) (Schroff et al. 2015), averaged over the
    triplets with a positive loss (pytorch-metric-learning's AvgNonZeroReducer).

    Without mined triplets it uses every valid triplet of the batch, anchor block by anchor
    block (`anchor_block` anchors at a time) and without forming the (B, B, B) loss tensor, so
    memory stays O(B^2), backward included.
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
            return mean_nonzero(losses.sum(), (losses > 0).sum(), embeddings)
        return self._all_triplets(dist, labels)

    def _all_triplets(self, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean positive loss over every valid triplet, in O(B^2 log B) time, O(B^2) memory.

        Triplet (a, p, n) is active iff d_an < d_ap + margin, so for each (a, p) the active
        negatives are the k_ap nearest negatives of a: k_ap comes from a sorted search, and
        the pair's summed loss is k_ap (d_ap + margin) - (sum of those k_ap distances), a
        prefix sum. Nothing of size B^3 is formed, neither forward nor in autograd.
        """
        pos, neg = label_masks(labels)
        total = dist.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=dist.device)
        blocks = zip(*(t.split(self.anchor_block) for t in (dist, pos, neg)), strict=True)
        for d, is_pos, is_neg in blocks:  # (b, B) each
            # each anchor's negative distances ascending; non-negatives sort last as +inf
            neg_sorted = d.masked_fill(~is_neg, float("inf")).sort(1).values
            threshold = d + self.margin
            with torch.no_grad():
                k = torch.searchsorted(neg_sorted, threshold, side="left")  # d_an < threshold
                k = k.masked_fill(~is_pos, 0)  # (b, B): active negatives per (a, p)
            zeros = neg_sorted.new_zeros(len(neg_sorted), 1)
            prefix = torch.cat([zeros, neg_sorted.cumsum(1)], 1)  # finite up to each row's k
            total = total + (k.to(d.dtype) * threshold - prefix.gather(1, k)).sum()
            count = count + k.sum()
        if int(count) == 0:
            return self.zero(dist)
        return total / count
