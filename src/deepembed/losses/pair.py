"""Pair-based losses."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_similarity
from deepembed.losses.base import MetricLoss
from deepembed.miners.base import Pairs, Triplets, label_masks


def masked_log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + sum_j mask_ij exp(x_ij)), stable; rows with no True give 0. (B,)."""
    x = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)  # the "1 +" term
    return torch.logsumexp(torch.cat([x, zeros], 1), dim=1)


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
