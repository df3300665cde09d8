"""List- and structure-based losses: N-pair, lifted structure, NCA, ranked list.

Each loss builds one (B, B) distance matrix and reduces it with (B, B) masks and row-wise
operations (logsumexp, masked sums): O(B^2 D) time, O(B^2) memory, no Python loop over
anchors. Parameter names and defaults follow pytorch-metric-learning 2.9.0 ("PML"), whose
distances normalise embeddings by default while ours do not: normalise in the model head,
or pick `distance="cosine"`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from deepembed.distances import DISTANCES, pairwise_distance
from deepembed.losses.base import LOSSES, MetricLoss
from deepembed.losses.functional import masked_logsumexp, mean_nonzero
from deepembed.losses.pair import pair_masks
from deepembed.miners.base import Pairs, Triplets, label_masks

# PML's RankedListLoss adds this to every entry of a row's weight sum (a safe division)
_RLL_EPS = 1e-5


def _check_distance(name: str, distance: str, allowed: tuple[str, ...] = DISTANCES) -> None:
    if distance not in allowed:
        raise ValueError(f"{name}: unknown distance {distance!r}; known: {', '.join(allowed)}")


@LOSSES.register("npair")
class NPairLoss(MetricLoss):
    """Multi-class N-pair loss (Sohn 2016, "Improved Deep Metric Learning with Multi-class
    N-pair Loss Objective"), as PML's NPairsLoss.

    One (anchor a_k, positive p_k) pair per class, N pairs in all; with similarity s:
        loss = 1/N sum_k [ log sum_l exp(s(a_k, p_l)) - s(a_k, p_k) ]
    i.e. cross-entropy over the (N, N) anchor-positive similarity matrix, target the diagonal
    (MeanReducer). A batch with fewer than two classes of >= 2 images gives 0.

    Pair choice (PML's, deterministic): from the positive pairs in row-major order (every
    (i, j) of the batch, or the mined pairs in their order; mined Triplets give their
    (anchor, positive)), keep the first pair of each label. Without mining that is the
    class's first image in batch order as anchor and its second as positive; with K > 2
    images per class the other K - 2 get no gradient. The sampler's shuffling is the only
    randomness. Mined negatives are ignored, as in PML.

    Args:
        distance: "cosine" (default; PML's default DotProductSimilarity on normalised
            embeddings, the same logits up to a constant), "dot" (raw inner products, the
            paper), "euclidean" or "squared_euclidean" (logits -d).
        l2_reg_weight: adds l2_reg_weight * mean_i ||x_i||^2 over the whole batch, the
            paper's embedding-norm regulariser (the paper's batches hold only the 2N paired
            images). PML's NPairsLoss has no such term of its own; this equals its generic
            `embedding_regularizer=LpRegularizer(power=2), embedding_reg_weight=w`. Use it
            with "dot", where the loss otherwise falls by growing the norms.

    Complexity: O(B^2) to choose the pairs, O(N^2 D) for the logits.
    """

    accepts = (Pairs, Triplets)

    def __init__(self, distance: str = "cosine", l2_reg_weight: float = 0.0) -> None:
        super().__init__()
        _check_distance("npair", distance, (*DISTANCES, "dot"))
        self.distance, self.l2_reg_weight = distance, l2_reg_weight

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if mined is None:
            anchors, positives = self._first_two_per_label(labels)
        else:
            if isinstance(mined, Pairs):
                anchors, positives = mined.anchor_pos, mined.positive
            else:
                anchors, positives = mined.anchor, mined.positive
            anchors, positives = self._one_pair_per_label(labels, anchors, positives)
        loss = self.zero(embeddings)
        if len(anchors) > 0:
            x, y = embeddings[anchors], embeddings[positives]
            if self.distance == "dot":
                logits = x @ y.T  # (N, N)
            else:
                logits = -pairwise_distance(x, y, kind=self.distance)  # (N, N)
            loss = F.cross_entropy(logits, torch.arange(len(x), device=x.device))
        if self.l2_reg_weight:
            loss = loss + self.l2_reg_weight * embeddings.pow(2).sum(1).mean()
        return loss

    @staticmethod
    def _first_two_per_label(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first positive pair of each label in row-major order over the batch, which is
        (its first image, its second), ordered by anchor: `_one_pair_per_label` of every
        positive pair in O(B log B), without the (B, B) label mask. (N,), (N,)."""
        order = torch.sort(labels, stable=True).indices  # grouped by label, batch order within
        grouped = labels[order]
        starts = torch.ones_like(grouped, dtype=torch.bool)
        starts[1:] = grouped[1:] != grouped[:-1]
        first = torch.nonzero(starts).squeeze(1)  # (L,) where each label's group begins
        second = (first + 1).clamp_max(len(labels) - 1)
        two = (first + 1 < len(labels)) & (grouped[second] == grouped[first])  # >= 2 images
        anchors, positives = order[first[two]], order[second[two]]
        by_anchor = anchors.argsort()
        return anchors[by_anchor], positives[by_anchor]

    @staticmethod
    def _one_pair_per_label(
        labels: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first pair of each anchor label, kept in the pairs' order. (N,), (N,)."""
        pair_labels = labels[anchors]
        order = torch.sort(pair_labels, stable=True).indices  # ties keep their order
        grouped = pair_labels[order]
        first = torch.ones_like(grouped, dtype=torch.bool)
        first[1:] = grouped[1:] != grouped[:-1]
        keep = order[first].sort().values  # back to pair order: independent of label values
        return anchors[keep], positives[keep]


@LOSSES.register("lifted_structure")
class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss (Song et al. 2016, "Deep Metric Learning via Lifted Structured
    Feature Embedding"), the paper's formula; PML's LiftedStructureLoss parameters.

    For each positive pair (i, j) with distance D_ij and N(i) the negatives of i:
        J_ij = log( sum_{k in N(i)} exp(neg_margin - D_ik) + sum_{l in N(j)} exp(neg_margin
               - D_jl) ) + D_ij - pos_margin
        loss = 1/(2|P|) sum_{(i,j) in P} max(0, J_ij)^2
    (the paper's alpha is neg_margin; pos_margin is PML's extra shift, 0 in the paper), i.e.
    the mean over P of max(0, J)^2 / 2 (PML's MeanReducer). Without mining P holds (i, j)
    and (j, i); J is symmetric, so that equals the paper's sum over unordered pairs. With
    mined Pairs, P is the mined positive pairs and N(i) the mined negative pairs anchored at
    i (a pair listed twice counts once; PML counts a duplicate positive pair twice).

    Differences from PML (tested): PML takes the log of an empty sum as 0, so a mined
    positive pair whose two ends have no mined negative adds max(0, D_ij - pos_margin)^2 / 2;
    here, as in the paper, log 0 = -inf and the pair adds 0 (it still counts in |P|). PML
    also returns 0 whenever every index list has <= 1 entry; we do not. Elsewhere (every
    unmined batch; mined pairs that each have a negative at one end) the values agree.
    PML builds (|P|, |N|) pair-by-pair matrices, O(B^4) memory (3.2e9 entries each at
    B = 1024 with 4 images per class); here one logsumexp per anchor.

    Args:
        neg_margin: alpha, the margin negatives should keep (PML default 1).
        pos_margin: subtracted from D_ij (PML default 0).
        distance: "euclidean" (the paper; PML's default on normalised embeddings),
            "squared_euclidean" or "cosine".

    Against a cross-batch memory (`pair_loss` with references that are not the batch) only
    N(i) enters J_ij: the memory has no negatives listed for its rows. PML's
    CrossBatchMemory instead looks up the negatives of the anchor whose batch index equals
    the queue index j, which is only meaningful while the queue starts at the batch.

    Complexity: O(B^2 D) time, O(B^2) memory.
    """

    accepts = (Pairs,)

    def __init__(
        self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: str = "euclidean"
    ) -> None:
        super().__init__()
        _check_distance("lifted_structure", distance)
        self.neg_margin, self.pos_margin, self.distance = neg_margin, pos_margin, distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *pair_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks.

        A positive pair (i, j) adds the negatives of j only when the references are the
        anchors themselves (`ref_emb is embeddings`, the in-batch loss): a memory of past
        embeddings has no row of negatives for its references, so there J_ij holds the
        negatives of i alone (the loss is one-sided).
        """
        anchors, refs = torch.nonzero(pos, as_tuple=True)  # (P,) positive pairs
        if len(anchors) == 0:
            return self.zero(embeddings)
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        # (B,) log sum_{k in N(i)} exp(alpha - D_ik); -inf where i has no negative
        has_neg = neg.any(1)
        neg_lse = masked_logsumexp(self.neg_margin - dist, neg).masked_fill(~has_neg, float("-inf"))
        zero = neg_lse.new_zeros(())
        # (P,) log of the pair's negative sums; pairs with none get 0 (the where keeps
        # logaddexp(-inf, -inf) and its NaN gradient out of the graph)
        valid = has_neg[anchors]
        log_sum = torch.where(valid, neg_lse[anchors], zero)
        if ref_emb is embeddings:  # j is an anchor too: add its own negatives
            valid = valid | has_neg[refs]
            log_sum = torch.logaddexp(
                torch.where(valid, neg_lse[anchors], zero), torch.where(valid, neg_lse[refs], zero)
            )
        j = log_sum + dist[anchors, refs] - self.pos_margin  # (P,)
        per_pair = torch.where(valid, torch.relu(j) ** 2, zero)
        return per_pair.mean() / 2


@LOSSES.register("generalized_lifted_structure")
class GeneralizedLiftedStructureLoss(MetricLoss):
    """Generalised lifted structure loss (Hermans et al. 2017, "In Defense of the Triplet
    Loss for Person Re-Identification", p. 4), as PML's GeneralizedLiftedStructureLoss.

    Per anchor i, with P(i), N(i) its positives and negatives (or mined pairs at i):
        l_i = max(0, log sum_{p in P(i)} exp(D_ip - pos_margin)
                     + log sum_{n in N(i)} exp(neg_margin - D_in))
    an empty set's log-sum counting as 0 (PML), averaged over all B anchors (MeanReducer).

    Difference from PML: PML returns 0 whenever every index list has <= 1 entry; we do not.

    Args:
        neg_margin: margin negatives should keep (PML default 1).
        pos_margin: distance below which positives stop pulling (PML default 0).
        distance: "euclidean" (PML's default on normalised embeddings), "squared_euclidean"
            or "cosine".

    Complexity: O(B^2 D) time, O(B^2) memory.
    """

    accepts = (Pairs,)

    def __init__(
        self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: str = "euclidean"
    ) -> None:
        super().__init__()
        _check_distance("generalized_lifted_structure", distance)
        self.neg_margin, self.pos_margin, self.distance = neg_margin, pos_margin, distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        pos, neg = pair_masks(labels, mined)
        return self.pair_loss(embeddings, embeddings, pos, neg)

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks."""
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        pos_lse = masked_logsumexp(dist - self.pos_margin, pos)  # (B,)
        neg_lse = masked_logsumexp(self.neg_margin - dist, neg)  # (B,)
        return torch.relu(pos_lse + neg_lse).mean()


@LOSSES.register("nca")
class NCALoss(MetricLoss):
    """Neighbourhood components analysis loss (Goldberger et al. 2004; the batch form of
    Movshovitz-Attias et al. 2017), as PML's NCALoss.

    Each anchor i picks a neighbour j != i with probability p_ij = softmax_{j != i}(-s D_ij)
    (s = softmax_scale), and l_i = -log sum_{j in P(i)} p_ij, P(i) the positives of i,
    averaged over the anchors that have a positive (MeanReducer). Mined Pairs or Triplets do
    not restrict the softmax: like PML, they weight each anchor by how often it appears in
    the mined index lists, divided by the largest count (anchors never mined weigh 0 but
    still count in the mean).

    As in PML, an anchor whose positive probability underflows to 0 (below ~1e-38 in
    float32, i.e. a loss above ~87) is left out of the loss and the mean: the price of one
    fused softmax (PML's cost) instead of two logsumexps.

    Against references (`pair_loss`, a cross-batch memory) the softmax runs over the
    anchor's pairs only, so the anchor's own copy in the memory is left out; PML's
    CrossBatchMemory keeps it in the softmax as a positive at distance 0.

    Differences from PML (tested): a batch with no anchor left (none has a positive, or all
    underflowed) gives 0 (PML: NaN, the mean of nothing); empty mined tuples give 0 (PML:
    the unmined loss).

    Args:
        softmax_scale: s, the inverse temperature (PML default 1).
        distance: "squared_euclidean" (PML's default, on normalised embeddings), "euclidean"
            or "cosine" (the same softmax as PML's CosineSimilarity).

    Complexity: O(B^2 D) time, O(B^2) memory.
    """

    accepts = (Pairs, Triplets)

    def __init__(self, softmax_scale: float = 1.0, distance: str = "squared_euclidean") -> None:
        super().__init__()
        _check_distance("nca", distance)
        self.softmax_scale, self.distance = softmax_scale, distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        batch = len(labels)
        if batch <= 1:
            return self.zero(embeddings)
        weights = None
        if mined is not None:
            if isinstance(mined, Pairs):
                lists = (mined.anchor_pos, mined.positive, mined.anchor_neg, mined.negative)
            else:
                lists = (mined.anchor, mined.positive, mined.negative)
            indices = torch.cat(lists)  # every index each time it appears
            if len(indices) == 0:
                return self.zero(embeddings)
            counts = torch.bincount(indices, minlength=batch).to(embeddings.dtype)  # (B,)
            weights = counts / counts.max()
        return self.pair_loss(embeddings, embeddings, *label_masks(labels), weights)

    def pair_loss(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of anchors (B, D) against references (M, D) on (B, M) pair masks: the
        softmax runs over each anchor's pairs (pos or neg), `weights` (B,) scale the anchors."""
        candidates = pos | neg  # (B, M)
        logits = -self.softmax_scale * pairwise_distance(embeddings, ref_emb, kind=self.distance)
        # off-pair logits are -inf; a row with no pair at all gets a harmless uniform softmax
        fill = torch.where(candidates.any(1, keepdim=True), float("-inf"), 0.0)  # (B, 1)
        total, kept = _NeighbourLogLoss.apply(torch.where(candidates, logits, fill), pos, weights)
        return mean_nonzero(total, kept, embeddings)


class _NeighbourLogLoss(torch.autograd.Function):
    """(sum_i w_i * -log sum_{j in P(i)} softmax(z_i)_j over the kept rows, kept rows) for
    logits z (B, M) and positive masks P (B, M); a row is kept when that probability did not
    underflow to 0. The gradient is written out, dL_i/dz_ij = p_ij (1 - [j in P(i)] /
    p_i(P)), two passes over the saved softmax instead of autograd's chain through it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, logits: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.softmax(logits, dim=1)  # (B, M) p_ij
        pos_prob = torch.where(pos, prob, 0.0).sum(1)  # (B,) p(i's neighbour is a positive)
        kept = pos_prob > 0  # PML's rows: a positive whose probability did not underflow
        losses = -torch.log(torch.where(kept, pos_prob, 1.0))  # (B,); 0 off `kept`
        weight = kept.to(logits.dtype) if weights is None else weights * kept
        count = kept.sum()
        ctx.save_for_backward(prob, pos, pos_prob, weight)
        ctx.mark_non_differentiable(count)
        return (losses * weight).sum(), count

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_count: Any) -> tuple[Any, ...]:
        prob, pos, pos_prob, weight = ctx.saved_tensors
        row = (grad_total * weight)[:, None]  # (B, 1); 0 on rows not kept
        on_pos = row * (1.0 - 1.0 / pos_prob.clamp_min(torch.finfo(prob.dtype).tiny)[:, None])
        return prob * torch.where(pos, on_pos, row), None, None


@LOSSES.register("ranked_list")
class RankedListLoss(MetricLoss):
    """Ranked list loss (Wang et al. 2019, "Ranked List Loss for Deep Metric Learning"),
    as PML's RankedListLoss.

    Per anchor i, with boundary alpha and margin m: the violating positives
    P*(i) = {j in P(i): D_ij > alpha - m} and negatives N*(i) = {k in N(i): D_ik < alpha},
        L_P(i) = sum_{P*} w_ij (D_ij - (alpha - m)) / (sum_{P*} w_ij + B eps),
                 w_ij = exp(Tp (D_ij - (alpha - m)))
        L_N(i) = sum_{N*} w_ik (alpha - D_ik) / (sum_{N*} w_ik + B eps),
                 w_ik = exp(Tn (alpha - D_ik))
        loss = 1/B sum_i (1 - imbalance) L_P(i) + imbalance L_N(i)      (MeanReducer)
    eps = 1e-5 is PML's: it adds 1e-5 per column of the row to the weight sum (the paper
    has no eps). Weights are computed with the row's largest exponent factored out, so large
    temperatures do not overflow (PML's exp does; the value is the same).

    Defaults: PML has none for margin and Tn; these are the paper's (m = 0.4, Tn = 10, so
    alpha = 1 + m/2 = 1.2, PML's rule when alpha is None). Tp = 0 is RLL-Simpler.

    Mined tuples: PML rejects them; here mined Pairs restrict P(i) and N(i) (every valid
    pair reproduces the unmined loss). PML selects pairs by value (D > 0 as well), so it
    drops pairs at distance exactly 0; we select by the masks alone.

    Args:
        margin: m, the gap between the positive boundary alpha - m and alpha.
        Tn: temperature of the negative weights.
        imbalance: lambda in [0, 1], the weight of the negative part.
        alpha: the negative boundary; None means 1 + margin / 2.
        Tp: temperature of the positive weights.
        distance: "euclidean" (PML's default, on normalised embeddings),
            "squared_euclidean" or "cosine".

    Complexity: O(B^2 D) time, O(B^2) memory.
    """

    accepts = (Pairs,)

    def __init__(
        self,
        margin: float = 0.4,
        Tn: float = 10.0,  # noqa: N803 (PML's name)
        imbalance: float = 0.5,
        alpha: float | None = None,
        Tp: float = 0.0,  # noqa: N803 (PML's name)
        distance: str = "euclidean",
    ) -> None:
        super().__init__()
        if not 0.0 <= imbalance <= 1.0:
            raise ValueError(f"ranked_list: imbalance must be in [0, 1], got {imbalance}")
        _check_distance("ranked_list", distance)
        self.margin, self.Tn, self.imbalance, self.Tp = margin, Tn, imbalance, Tp
        self.alpha = 1.0 + margin / 2 if alpha is None else alpha
        self.distance = distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        pos, neg = pair_masks(labels, mined)
        dist = pairwise_distance(embeddings, kind=self.distance)  # (B, B)
        low = self.alpha - self.margin  # positives beyond it violate
        eps = _RLL_EPS * len(labels)
        loss_p = _weighted_row_mean(dist - low, pos & (dist > low), self.Tp, eps)
        loss_n = _weighted_row_mean(self.alpha - dist, neg & (dist < self.alpha), self.Tn, eps)
        return ((1.0 - self.imbalance) * loss_p + self.imbalance * loss_n).mean()


def _weighted_row_mean(
    x: torch.Tensor, mask: torch.Tensor, temperature: float, eps: float
) -> torch.Tensor:
    """Row-wise sum_j w_ij x_ij / (sum_j w_ij + eps), w_ij = exp(T x_ij) on mask, else 0. (B,).

    The row's largest exponent (at least 0) is divided out of numerator, denominator and
    eps alike: the same value, no overflow. The shift is a constant of the function, so it
    is detached.
    """
    t = (temperature * x).masked_fill(~mask, float("-inf"))
    shift = t.detach().amax(1, keepdim=True).clamp_min(0.0)  # -inf rows give 0
    w = torch.exp(t - shift)  # (B, B); 0 off the mask
    num = (w * x.masked_fill(~mask, 0.0)).sum(1)
    return num / (w.sum(1) + eps * torch.exp(-shift[:, 0]))
