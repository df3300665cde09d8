"""Triplet losses: a function of (d_ap, d_an) per triplet, on one (B, B) distance matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from deepembed.distances import paired_distance, pairwise_distance
from deepembed.losses.base import LOSSES, MetricLoss
from deepembed.losses.functional import mean_nonzero
from deepembed.miners.base import Pairs, Triplets, label_masks

# x = d_ap - d_an, a (c, S, B') chunk that may be overwritten -> (the sum of the per-triplet
# losses, their derivatives w.r.t. x, shaped like x); B' is a multiple of TERM_GROUP
ChunkTerms = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TERM_GROUP = 64  # chunks' last dimension is padded to a multiple of this (with +inf d_an)

PAIR_ELEMENTS = 2**22  # temporaries of the chunked all-triplet sums hold ~this many numbers
# mined triplets get their own 2T distances, O(T D), when T * PAIRED_BELOW <= B^2; more get
# the (B, B) matrix: its BLAS product and backward cost ~0.04 ns per entry and dim here,
# against ~12 gather/scatter passes of ~1 ns per triplet and dim (batch-hard, T = B, gains
# from B ~ 300)
PAIRED_BELOW = 256


def sample_triplets(labels: torch.Tensor, per_anchor: int) -> Triplets:
    """`per_anchor` random triplets for every anchor that has a positive and a negative:
    positive and negative each drawn uniformly, with replacement (as PML's random triplets).
    """
    pos, neg = label_masks(labels)
    anchors = torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0]  # (A,)
    if len(anchors) == 0:
        empty = anchors.new_empty(0)
        return Triplets(empty, empty, empty)
    positive = torch.multinomial(pos[anchors].float(), per_anchor, replacement=True)  # (A, k)
    negative = torch.multinomial(neg[anchors].float(), per_anchor, replacement=True)
    return Triplets(anchors.repeat_interleave(per_anchor), positive.flatten(), negative.flatten())


class TripletFamilyLoss(MetricLoss):
    """Shared steps of the triplet losses: Triplets only, one distance matrix, then either
    the mined triplets' x = d_ap - d_an (`mined_loss`) or every valid triplet (`all_triplets`).
    """

    accepts = (Triplets,)
    name: ClassVar[str]

    def __init__(self, distance: str) -> None:
        super().__init__()
        self.distance = distance

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if mined is None or mined.is_all:  # batch_all: the O(B^2)-memory all-triplet path
            return self.all_triplets(pairwise_distance(embeddings, kind=self.distance), labels)
        if len(mined) == 0:
            return self.zero(embeddings)
        a, p, n = mined.anchor, mined.positive, mined.negative
        if len(mined) * PAIRED_BELOW <= len(embeddings) ** 2:  # few (batch-hard: B): O(T D)
            anchor = embeddings[a]
            d_ap = paired_distance(anchor, embeddings[p], self.distance)  # (T,)
            d_an = paired_distance(anchor, embeddings[n], self.distance)
            return self.mined_loss(d_ap - d_an)
        dist = pairwise_distance(embeddings, kind=self.distance)  # (B, B)
        return self.mined_loss(dist[a, p] - dist[a, n])

    def mined_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The reduced loss of triplets with x = d_ap - d_an, shape (T,), T >= 1."""
        raise NotImplementedError

    def all_triplets(self, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The reduced loss over every valid triplet of the batch."""
        raise NotImplementedError


@LOSSES.register("triplet")
class TripletMarginLoss(TripletFamilyLoss):
    """max(0, d(a, p) - d(a, n) + margin) (Schroff et al. 2015), averaged over the
    triplets with a positive loss (pytorch-metric-learning's AvgNonZeroReducer).

    Without mined triplets (or with batch_all's) it uses every valid triplet of the batch
    without forming a (B, B, B) tensor: O(B^2 log K) time, O(B^2) memory, backward included.
    """

    name = "triplet"

    def __init__(self, margin: float = 0.05, distance: str = "euclidean") -> None:
        super().__init__(distance)
        self.margin = margin

    def mined_loss(self, x: torch.Tensor) -> torch.Tensor:
        losses = torch.relu(x + self.margin)
        return mean_nonzero(losses.sum(), (losses > 0).sum(), x)

    def all_triplets(self, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean positive loss over every valid triplet, never forming a (B, B, B) tensor:
        O(B^2 log K) time and O(B^2) memory with K the largest class (see `_HingeTripletSum`).
        """
        pos, neg = label_masks(labels)
        total, count = _HingeTripletSum.apply(dist, pos, neg, self.margin)
        if int(count) == 0:
            return self.zero(dist)
        return total / count


class _HingeTripletSum(torch.autograd.Function):
    """(sum over every valid triplet of relu(d_ap + margin - d_an), number of active ones).

    Per anchor, its positives' thresholds t_p = d_ap + margin are sorted (S = most positives
    of any anchor, padded with -inf). Negative n is active with exactly the positives whose
    t_p > d_an, the top cnt_n of the sorted thresholds, found by a sorted search: its summed
    loss is (suffix sum of those thresholds) - cnt_n d_an. The gradient is counts:
    dL/dd_an = -cnt_n and dL/dd_ap = the number of negatives below t_p (a histogram of the
    search positions, cumulated). Time O(B^2 log S), memory O(B^2); the gradient w.r.t. the
    (B, B) distances is built in the forward pass and saved.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slots = max(1, int(pos.sum(1).max()))
        # (B, S) each anchor's positive distances, largest first, -inf padding; then ascending
        top, col = dist.masked_fill(~pos, float("-inf")).topk(slots, dim=1)
        thresholds = (top + margin).flip(1)  # (B, S) ascending
        col = col.flip(1)
        real = thresholds > float("-inf")
        # (B, S + 1) suffix sums of the real thresholds; suffix[:, S] = 0
        zero = thresholds.new_zeros(len(dist), 1)
        suffix = torch.cat([thresholds.where(real, 0.0).flip(1).cumsum(1).flip(1), zero], 1)
        # (B, B) for each negative: thresholds <= d_an come first; the rest are active
        start = torch.searchsorted(thresholds, dist.contiguous(), right=True)
        start = start.masked_fill(~neg, slots)  # non-negatives: nothing active
        cnt = slots - start  # (B, B) active positives per negative
        d_neg = dist.where(neg, 0.0)
        total = (suffix.gather(1, start) - cnt * d_neg).sum()
        count = cnt.sum()
        grad = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            grad = -cnt.to(dist.dtype)  # dL/dd_an
            # negatives per search position, cumulated: slot j is active with every negative
            # whose start <= j
            hist = torch.zeros_like(suffix).scatter_add_(
                1, start, d_neg.new_ones(()).expand_as(d_neg)
            )
            per_slot = hist.cumsum(1)[:, :slots]  # (B, S)
            grad.scatter_add_(1, col, per_slot.where(real, 0.0))  # dL/dd_ap
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_total: torch.Tensor, _grad_count: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad_total * grad, None, None, None


class _AllTripletSum(torch.autograd.Function):
    """Sum over every valid triplet (a, p, n) of f(d_ap + shift - d_an), given the (B, B)
    distances.

    Each anchor's positive distances are packed left-aligned into (B, S) (S = most positives
    of any anchor, padding -inf), and non-negatives get d_an = +inf, so that a chunk of
    anchors is one broadcast x = d_ap[:, :, None] - d_an[:, None, :] of shape (c, S, B) with
    no gather and no mask pass: f needs f(-inf) = f'(-inf) = 0 (true of losses that vanish
    on easy triplets). The gradient w.r.t. the distances, dL/dd_ap = sum_n f'(x) and
    dL/dd_an = -sum_p f'(x), is accumulated into one (B, B) tensor in the same pass and
    saved, instead of autograd keeping every chunk. Time O(B^2 S); memory O(B^2 + block B)
    with ``block`` anchor-positive slots per chunk, backward included.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        dist: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        terms: ChunkTerms,
        block: int,
        shift: float,
    ) -> torch.Tensor:
        ctx.dtype = dist.dtype  # type: ignore[attr-defined]
        if dist.dtype in (torch.float16, torch.bfloat16):  # (cosine under autocast)
            dist = dist.float()  # sums of millions of terms need float32 at least
        slots = max(1, int(pos.sum(1).max()))
        # (B, S) each anchor's positive columns first (ascending), then the others
        col = torch.argsort((~pos).to(torch.uint8), dim=1, stable=True)[:, :slots]
        real = torch.gather(pos, 1, col)  # (B, S) slot holds a positive
        d_ap = torch.gather(dist, 1, col).add_(shift).masked_fill_(~real, float("-inf"))
        n = len(dist)
        pad = -n % TERM_GROUP
        # (B, B'): only negatives stay finite; B' = B + pad columns of +inf
        d_an = F.pad(dist.masked_fill(~neg, float("inf")), (0, pad), value=float("inf"))
        grad = torch.zeros_like(dist) if ctx.needs_input_grad[0] else None  # type: ignore[attr-defined]
        total = dist.new_zeros(())
        rows = max(1, block // slots)  # anchors per chunk
        for a0 in range(0, n, rows):
            a1 = min(a0 + rows, n)
            x = d_ap[a0:a1, :, None] - d_an[a0:a1, None, :]  # (c, S, B'), -inf off triplets
            value, slope = terms(x)
            total += value
            if grad is not None:  # padding slots add their zero slope to a non-positive
                grad[a0:a1].scatter_add_(1, col[a0:a1], slope.sum(2))  # dL/dd_ap
                grad[a0:a1] -= slope.sum(1)[:, :n]  # dL/dd_an
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (grad_total * grad).to(ctx.dtype), None, None, None, None, None


def all_triplet_sum(
    dist: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    terms: ChunkTerms,
    pair_block: int | None = None,
    shift: float = 0.0,
) -> torch.Tensor:
    """Sum of f(d_ap + shift - d_an) over every valid triplet; see _AllTripletSum."""
    block = pair_block or max(1, PAIR_ELEMENTS // len(dist))
    return _AllTripletSum.apply(dist, pos, neg, terms, block, shift)


class SmoothTripletLoss(TripletFamilyLoss):
    """A triplet loss f(d_ap - d_an + shift) with no zero region, averaged over the triplets.

    Every triplet contributes, so there is no sparsity to exploit: the all-triplet mean is
    computed exactly by `_AllTripletSum` in O(B^2 S) time (S = most positives of an anchor)
    and O(B^2 + pair_block B) memory. `pair_block` (default: about 4M numbers / B) bounds
    the temporaries. Subclasses set `shift` and define `terms(x) -> (f(x), f'(x))`, with
    f(-inf) = f'(-inf) = 0.
    """

    shift = 0.0

    def __init__(self, distance: str, pair_block: int | None) -> None:
        super().__init__(distance)
        if pair_block is not None and pair_block < 1:
            raise ValueError(f"pair_block must be >= 1, got {pair_block}")
        self.pair_block = pair_block

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def chunk_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of f, f') over a chunk of the all-triplet sum (autograd off; x may be
        overwritten); subclasses may fuse it."""
        value, slope = self.terms(x)
        return value.sum(), slope

    def mined_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.terms(x + self.shift)[0].mean()

    def all_triplets(self, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos, neg = label_masks(labels)
        count = int((pos.sum(1) * neg.sum(1)).sum())  # valid triplets
        if count == 0:
            return self.zero(dist)
        total = all_triplet_sum(dist, pos, neg, self.chunk_terms, self.pair_block, self.shift)
        return total / count


@LOSSES.register("soft_margin_triplet")
class SoftMarginTripletLoss(SmoothTripletLoss):
    """Soft-margin triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet
    Loss"): log(1 + exp(d_ap - d_an + margin)), the softplus in place of the hinge.

    The paper has no margin (the default 0); `margin` gives PML's
    TripletMarginLoss(smooth_loss=True, margin=...) (PML's default margin there is 0.05).
    Reduction: the mean over all triplets (mined, or every valid one of the batch), as in
    the paper. PML reduces with AvgNonZeroReducer, which also drops triplets whose softplus
    underflows to exactly 0 (float32, x < about -104); we keep them in the mean.
    All-triplet cost: O(P B) time, O(B^2 + pair_block B) memory (see SmoothTripletLoss).

    Args:
        distance: "euclidean" (default; PML's LpDistance also normalises, ours does not),
            "squared_euclidean" or "cosine" (1 - cos).
    """

    name = "soft_margin_triplet"

    def __init__(
        self, margin: float = 0.0, distance: str = "euclidean", pair_block: int | None = None
    ) -> None:
        super().__init__(distance, pair_block)
        self.margin = margin

    @property
    def shift(self) -> float:  # type: ignore[override]
        return self.margin

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # softplus(x) = max(x, 0) + log(1 + e^-|x|): torch's CPU softplus and log1p are
        # scalar loops, ~5x slower than exp and log. 1 + e^-|x| drops e^-|x| only below the
        # dtype's epsilon, where softplus(x) equals max(x, 0) to that precision anyway
        value = torch.log(torch.exp(-x.abs()) + 1.0) + x.clamp_min(0.0)
        return value, torch.sigmoid(x)

    def chunk_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slope = torch.sigmoid(x)
        total = x.clamp_min(0.0).sum()
        # sum of log(1 + e^-|x|) as the log of products of TERM_GROUP factors in [1, 2]
        # (at most 2^64, no overflow): one log per group instead of one per triplet
        factors = x.abs_().neg_().exp_().add_(1.0).view(-1, TERM_GROUP)
        return total + factors.prod(1).log_().sum(), slope


@LOSSES.register("ratio_triplet")
class RatioTripletLoss(SmoothTripletLoss):
    """Ratio triplet loss (Hoffer & Ailon 2015, "Deep Metric Learning Using Triplet Network").

    With d+ = e^{d_ap} / (e^{d_ap} + e^{d_an}) and d- = e^{d_an} / (e^{d_ap} + e^{d_an}) (a
    softmax over the two euclidean distances), the paper's loss || (d+, d- - 1) ||^2 equals
    2 (d+)^2 = 2 sigmoid(d_ap - d_an)^2, averaged over the triplets (mined, or every valid
    one of the batch). PML has no such loss.
    All-triplet cost: O(P B) time, O(B^2 + pair_block B) memory (see SmoothTripletLoss).

    Args:
        distance: "euclidean" (the paper's), "squared_euclidean" or "cosine" (1 - cos).
    """

    name = "ratio_triplet"

    def __init__(self, distance: str = "euclidean", pair_block: int | None = None) -> None:
        super().__init__(distance, pair_block)

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft_pos = torch.sigmoid(x)  # d+
        square = soft_pos * soft_pos
        return 2.0 * square, 4.0 * square * (1.0 - soft_pos)  # f = 2 d+^2, f' = 4 d+^2 d-

    def chunk_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft_pos = x.sigmoid_()  # d+, in place
        square = soft_pos * soft_pos
        total = 2.0 * square.sum()
        return total, square.mul_(soft_pos.neg_().add_(1.0)).mul_(4.0)  # 4 d+^2 d-
