"""Pair-based losses."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_similarity
from deepembed.losses.base import LOSSES, MetricLoss
from deepembed.losses.functional import masked_log1p_sum_exp
from deepembed.miners.base import Pairs, Triplets, label_masks


@LOSSES.register("multi_similarity")
class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang et al. 2019) on cosine similarities S.

    Per anchor i: 1/alpha log(1 + sum_p exp(-alpha (S_ip - base)))
                + 1/beta  log(1 + sum_n exp( beta (S_in - base))), averaged over the batch.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.base = alpha, beta, base

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if isinstance(mined, Triplets):
            raise TypeError("multi_similarity takes Pairs, not Triplets")
        if mined is None:
            pos, neg = label_masks(labels)
        else:
            pos, neg = mined.masks(len(labels))
        sim = pairwise_similarity(embeddings)  # (B, B)
        pos_loss = masked_log1p_sum_exp(-self.alpha * (sim - self.base), pos) / self.alpha
        neg_loss = masked_log1p_sum_exp(self.beta * (sim - self.base), neg) / self.beta
        return (pos_loss + neg_loss).mean()
