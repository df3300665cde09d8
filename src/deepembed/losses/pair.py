"""Pair-based losses: each works on one (B, B) distance or similarity matrix and pair masks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from deepembed.distances import pairwise_distance, pairwise_similarity
from deepembed.losses.base import LOSSES, MetricLoss
from deepembed.losses.functional import masked_log1p_sum_exp, masked_logsumexp, mean_nonzero
from deepembed.losses.triplet import sample_triplets
from deepembed.miners.base import Pairs, Triplets, label_masks


def pair_masks(
    labels: torch.Tensor, mined: Pairs | Triplets | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) bool masks of the positive and negative pairs a pair loss uses.

    None means every pair of the batch (diagonal excluded); mined Pairs select a subset
    (a pair listed twice counts once). The base class has already refused Triplets.
    """
    if mined is None:
        return label_masks(labels)
    return mined.masks(len(labels))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True; a graph-connected 0 when nothing is selected."""
    return mean_nonzero(torch.where(mask, values, 0.0).sum(), mask.sum(), values)


@LOSSES.register("multi_similarity")
class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss (Wang et al. 2019) on cosine similarities S.

    Per anchor i: 1/alpha log(1 + sum_p exp(-alpha (S_ip - base)))
                + 1/beta  log(1 + sum_n exp( beta (S_in - base))), averaged over the batch.
    """

    accepts = (Pairs,)

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.base = alpha, beta, base

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *pair_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks."""
        sim = pairwise_similarity(embeddings, ref_emb)  # (B, M)
        pos_loss = masked_log1p_sum_exp(-self.alpha * (sim - self.base), pos) / self.alpha
        neg_loss = masked_log1p_sum_exp(self.beta * (sim - self.base), neg) / self.beta
        return (pos_loss + neg_loss).mean()


@LOSSES.register("contrastive")
class ContrastiveLoss(MetricLoss):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) on distances d.

    Positive pair: max(0, d - pos_margin); negative pair: max(0, neg_margin - d). Each side
    is averaged over its pairs with a positive loss and the two averages are added
    (pytorch-metric-learning's AvgNonZeroReducer per sub-loss). Time and memory O(B^2).

    Args:
        pos_margin: distance under which a positive pair costs nothing.
        neg_margin: distance beyond which a negative pair costs nothing.
        distance: "euclidean" (default, as PML's LpDistance, which also L2-normalises the
            embeddings: ours does not, so normalise in the model head), "squared_euclidean"
            or "cosine" (1 - cos; PML's CosineSimilarity margins m become 1 - m here).

    Unlike PML, a batch whose pair lists all have at most one entry is not forced to 0, and
    mined pairs are a set (PML counts a pair listed twice twice; our miners list each once).
    """

    accepts = (Pairs,)

    def __init__(
        self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "euclidean"
    ) -> None:
        super().__init__()
        self.pos_margin, self.neg_margin, self.distance = pos_margin, neg_margin, distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *pair_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks."""
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        pos_sum, pos_n, neg_sum, neg_n = _HingePairSums.apply(
            dist, pos, neg, self.pos_margin, self.neg_margin
        )
        return mean_nonzero(pos_sum, pos_n, embeddings) + mean_nonzero(neg_sum, neg_n, embeddings)


class _HingePairSums(torch.autograd.Function):
    """The contrastive loss's sums on a (B, M) distance matrix, in a few fused passes:
    (sum of d - pos_margin over positives with d > pos_margin, their count, sum of
    neg_margin - d over negatives with d < neg_margin, their count). The gradient w.r.t. d
    is +1 on the active positives and -1 on the active negatives (times each sum's incoming
    gradient), so only the two (B, M) bool masks are saved.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        dist: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        pos_margin: float,
        neg_margin: float,
    ) -> tuple[torch.Tensor, ...]:
        pos_act = (dist > pos_margin).logical_and_(pos)  # (B, M) positives with a loss
        neg_act = (dist < neg_margin).logical_and_(neg)  # (B, M) negatives with a loss
        pos_n, neg_n = torch.count_nonzero(pos_act), torch.count_nonzero(neg_act)
        pos_sum = torch.where(pos_act, dist, 0.0).sum() - pos_margin * pos_n
        neg_sum = neg_margin * neg_n - torch.where(neg_act, dist, 0.0).sum()
        ctx.save_for_backward(pos_act, neg_act)
        ctx.mark_non_differentiable(pos_n, neg_n)
        return pos_sum, pos_n, neg_sum, neg_n

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_pos: torch.Tensor, _gp: Any, g_neg: torch.Tensor, _gn: Any
    ) -> tuple[torch.Tensor | None, ...]:
        pos_act, neg_act = ctx.saved_tensors
        grad = torch.where(neg_act, -g_neg, torch.zeros_like(g_neg))  # (B, M)
        return torch.where(pos_act, g_pos, grad), None, None, None, None


@LOSSES.register("binomial_deviance")
class BinomialDevianceLoss(MetricLoss):
    """Binomial deviance loss (Yi, Lei, Liao & Li 2014, "Deep Metric Learning for Person
    Re-Identification") on cosine similarities s.

    The paper's J = sum_ij W_ij log(1 + exp(-alpha (s_ij - beta) M_ij)) with M_ij = 1 for a
    positive pair and M_ij = -neg_cost (the paper's -C) for a negative pair, and
    W_ij = 1 / (number of positive pairs) or 1 / (number of negative pairs). So:

        loss = mean over positive pairs of log(1 + exp(-alpha (s - beta)))
             + mean over negative pairs of log(1 + exp(alpha * neg_cost * (s - beta)))

    Pairs are ordered (i, j), i != j, over the whole batch (or the mined Pairs); a side with
    no pair contributes 0. Defaults alpha=2, beta=0.5, C=25 as in the paper's follow-ups
    (BIER, Opitz et al. 2017). PML has no such loss. Time and memory O(B^2).
    """

    accepts = (Pairs,)

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, neg_cost: float = 25.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.neg_cost = alpha, beta, neg_cost

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *pair_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks."""
        shifted = self.alpha * (pairwise_similarity(embeddings, ref_emb) - self.beta)  # (B, M)
        # log(1 + exp(-alpha (s - beta) M)); one softplus pass, as pos and neg are disjoint
        losses = F.softplus(torch.where(pos, -shifted, self.neg_cost * shifted))
        return masked_mean(losses, pos) + masked_mean(losses, neg)


@LOSSES.register("circle")
class CircleLoss(MetricLoss):
    """Circle loss (Sun et al. 2020), pair-label form, on cosine similarities s.

    Per anchor: softplus(logsumexp_p(-gamma a_p (s_p - (1 - m)))
                         + logsumexp_n(gamma a_n (s_n - m))),
    with a_p = max(0, 1 + m - s_p) and a_n = max(0, s_n + m) held constant in backward
    (as the official code and PML do). Averaged over the anchors that have at least one
    positive and one negative pair (PML: AvgNonZeroReducer; the same, since a valid anchor's
    loss is > 0). Time and memory O(B^2).

    Args:
        m: relaxation margin; gamma: scale (PML's defaults, the paper's fine-grained setting).

    Unlike PML, a batch whose pair lists all have at most one entry is not forced to 0.
    """

    accepts = (Pairs,)

    def __init__(self, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__()
        self.m, self.gamma = m, gamma

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *pair_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks."""
        sim = pairwise_similarity(embeddings, ref_emb)  # (B, M)
        alpha_pos = torch.relu(1.0 + self.m - sim.detach())
        alpha_neg = torch.relu(sim.detach() + self.m)
        pos_logits = -self.gamma * alpha_pos * (sim - (1.0 - self.m))
        neg_logits = self.gamma * alpha_neg * (sim - self.m)
        losses = F.softplus(masked_logsumexp(pos_logits, pos) + masked_logsumexp(neg_logits, neg))
        return masked_mean(losses, pos.any(1) & neg.any(1))


@LOSSES.register("margin")
class MarginLoss(MetricLoss):
    """Margin loss (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling Matters").

    Per triplet (a, p, n): max(0, d_ap - beta + margin) + max(0, beta - d_an + margin), where
    beta is a fixed boundary, or a learned one (`learn_beta`: global, or per anchor class
    when `num_classes` is given; labels must then be class indices in [0, num_classes)).
    The sum is divided by the number of positive pair terms plus the number of positive
    negative-pair terms over all triplets (PML's DivisorReducer). With `learn_beta`, the
    regulariser nu * beta is added (global beta), or nu * sum of the triplets' beta divided
    by that same count (per-class beta), as PML does.

    Triplets: `mined` Triplets, else every valid triplet ("all") or `triplets_per_anchor`
    random ones per anchor (positive and negative each uniform, with replacement). For
    "all", nothing of size B^3 is formed: a pair (a, p) occurs in one triplet per negative
    of a, and a pair (a, n) in one per positive of a, so the triplet sums are pair sums
    weighted by those counts, O(B^2) time and memory, with PML's value exactly.

    Args:
        margin, nu, beta, triplets_per_anchor, learn_beta, num_classes: as PML's MarginLoss.
        distance: "euclidean" (default; PML's LpDistance also normalises the embeddings,
            ours does not), "squared_euclidean" or "cosine" (1 - cos; a PML
            CosineSimilarity boundary beta is 1 - beta here). beta is always a distance,
            so nu * beta pulls the boundary inwards, as in the paper; with a similarity,
            PML's nu * beta pulls it the other way, so cosine matches PML only at nu = 0.
    """

    accepts = (Triplets,)

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0.0,
        beta: float = 1.2,
        triplets_per_anchor: int | str = "all",
        learn_beta: bool = False,
        num_classes: int | None = None,
        distance: str = "euclidean",
    ) -> None:
        super().__init__()
        if triplets_per_anchor != "all" and (
            not isinstance(triplets_per_anchor, int) or triplets_per_anchor < 1
        ):
            raise ValueError(
                f'triplets_per_anchor must be "all" or an int >= 1, got {triplets_per_anchor!r}'
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.margin, self.nu, self.distance = margin, nu, distance
        self.triplets_per_anchor = triplets_per_anchor
        self.learn_beta, self.num_classes = learn_beta, num_classes
        init = torch.full((num_classes or 1,), float(beta))  # (1,) or (num_classes,)
        if learn_beta:
            self.beta = nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if self.num_classes is not None and labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"labels must be class indices in [0, {self.num_classes}) when "
                    f"num_classes is set, got [{low}, {high}]"
                )
        if mined is None and self.triplets_per_anchor != "all":
            mined = sample_triplets(labels, int(self.triplets_per_anchor))
        dist = pairwise_distance(embeddings, kind=self.distance)  # (B, B)
        beta = self.beta.to(dist.dtype)
        if mined is None:
            return self._all_triplets(dist, labels, beta, embeddings)
        a, p, n = mined.anchor, mined.positive, mined.negative
        beta_a = beta if self.num_classes is None else beta[labels[a]]  # (1,) or (T,)
        pos_loss = torch.relu(dist[a, p] - beta_a + self.margin)  # (T,)
        neg_loss = torch.relu(beta_a - dist[a, n] + self.margin)
        active = (pos_loss > 0).sum() + (neg_loss > 0).sum()
        beta_sum = beta_a.sum() if self.num_classes is not None else beta_a[0]
        return self._reduce((pos_loss + neg_loss).sum(), active, len(a), beta_sum, beta, embeddings)

    def _all_triplets(
        self, dist: torch.Tensor, labels: torch.Tensor, beta: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """Every valid triplet as pair terms weighted by their triplet counts, O(B^2)."""
        pos, neg = label_masks(labels)
        n_pos, n_neg = pos.sum(1), neg.sum(1)  # (B,) positives / negatives of each anchor
        # triplets each pair is in: (a, p) one per negative of a, (a, n) one per positive
        weight = torch.where(pos, n_neg[:, None].to(dist.dtype), neg * n_pos[:, None])  # (B, B)
        beta_a = (beta if self.num_classes is None else beta[labels])[:, None]  # (B|1, 1)
        gap = dist - beta_a
        # pos and neg pairs are disjoint: one (B, B) matrix holds both kinds of term
        losses = torch.relu(torch.where(pos, gap, -gap) + self.margin)
        hit = losses > 0
        # positive terms over all triplets, counted exactly in integers (the divisor)
        active = ((hit & pos).sum(1) * n_neg + (hit & neg).sum(1) * n_pos).sum()
        per_anchor = n_pos * n_neg  # (B,) triplets of each anchor
        beta_sum = beta[0]
        if self.num_classes is not None:
            beta_sum = (per_anchor * beta_a[:, 0]).sum()
        total = (weight * losses).sum()
        return self._reduce(total, active, int(per_anchor.sum()), beta_sum, beta, like)

    def _reduce(
        self,
        total: torch.Tensor,
        active: torch.Tensor,
        n_triplets: int,
        beta_sum: torch.Tensor,
        beta: torch.Tensor,
        like: torch.Tensor,
    ) -> torch.Tensor:
        """total / active, plus the beta regulariser; 0 when there is no triplet (as PML)."""
        if n_triplets == 0:
            return self.zero(like)
        loss = mean_nonzero(total, active, like)
        if not self.learn_beta:
            return loss
        if self.num_classes is None:  # PML adds nu * beta as an already-reduced term
            return loss + self.nu * beta_sum
        return loss + mean_nonzero(self.nu * beta_sum, active, beta)
