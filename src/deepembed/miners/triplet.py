"""Triplet miners: every one works on the (B, M) anchor-to-reference distance matrix and label
masks, with no loop over anchors; M = B on a batch, the queue size in a cross-batch memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepembed.distances import pairwise_distance
from deepembed.miners.base import MINERS, MaskMiner, Triplets


def _nearest(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of the smallest distance among each row's True entries."""
    return dist.masked_fill(~mask, float("inf")).argmin(1)


def _positive_slots(
    pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The positive pairs (a, p) of a (B, M) mask in row order, the slot of each among its
    anchor's positives (0, 1, ...), and S, the most positives of any anchor: a (B, S) layout
    for per-pair work without (B, M) index tensors."""
    a, p = torch.nonzero(pos, as_tuple=True)
    per_anchor = pos.sum(1)  # (B,)
    first = torch.cumsum(per_anchor, 0) - per_anchor  # (B,) index of each anchor's first pair
    slot = torch.arange(len(a), device=pos.device) - first[a]
    return a, p, slot, int(per_anchor.max()) if len(per_anchor) else 0


class TripletMiner(MaskMiner):
    """A miner that returns Triplets."""

    produces = Triplets


@MINERS.register("batch_all")
class BatchAllMiner(TripletMiner):
    """Every valid triplet of the batch (Hermans et al. 2017, "batch all").

    Returns lazy `Triplets.all_valid`: the triplet loss uses them as the whole batch in
    O(B^2) memory; other losses read the index tensors, listed on first use. Unlike
    PML's TripletMarginMiner(type_of_triplets="all"), nothing is filtered by a margin: under a
    hinge loss with a mean over the non-zero terms (PML's and ours) the triplets beyond the
    margin add nothing, so both give the same loss, and other losses see all valid triplets.
    """

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Triplets:
        has_both = pos.any(1, keepdim=True) & neg.any(1, keepdim=True)  # (B, 1)
        return Triplets.all_valid(pos & has_both, neg & has_both)


@MINERS.register("batch_hard")
class BatchHardMiner(TripletMiner):
    """For each anchor: its farthest positive and nearest negative (Hermans et al. 2017).

    Anchors without a positive or a negative in the batch give no triplet.
    """

    def __init__(self, distance: str = "euclidean") -> None:
        super().__init__()
        self.distance = distance

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Triplets:
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        hardest_pos = dist.masked_fill(~pos, float("-inf")).argmax(1)  # (B,) farthest positive
        hardest_neg = _nearest(dist, neg)  # (B,) nearest negative
        anchors = torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0]
        return Triplets(anchors, hardest_pos[anchors], hardest_neg[anchors])


@MINERS.register("hardest_negative")
class HardestNegativeMiner(TripletMiner):
    """For each positive pair (a, p): the anchor's nearest negative.

    The same as PML's BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard"), whose
    positive pairs and (anchor, hardest negative) pairs come as separate lists.
    """

    def __init__(self, distance: str = "euclidean") -> None:
        super().__init__()
        self.distance = distance

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Triplets:
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        a, p = torch.nonzero(pos & neg.any(1, keepdim=True), as_tuple=True)
        return Triplets(a, p, _nearest(dist, neg)[a])


@MINERS.register("semi_hard")
class SemiHardMiner(TripletMiner):
    """FaceNet's semi-hard negatives (Schroff et al. 2015), one per positive pair.

    For each positive pair (a, p): the nearest negative farther than the positive,
    d_ap < d_an, kept if d_an < d_ap + margin (FaceNet's definition of semi-hard). When no
    negative is farther than the positive and `hard_fallback` is set, the pair takes the
    anchor's farthest negative instead, as TensorFlow's triplet_semihard_loss does (all its
    negatives are then at most as far as the positive: it is the mildest hard negative).
    That gives at most one triplet per positive pair, O(B^2), found without sorting rows: each
    negative falls in the bucket between its anchor's sorted positive distances (a sorted
    search in S values, S = most positives of an anchor), the nearest negative of each bucket
    is a scatter-min, and a reverse running minimum over buckets gives each positive's
    nearest farther negative: O(B^2 log S) time, O(B^2) memory.
    PML's TripletMarginMiner(margin, "semihard") instead returns every triplet with
    0 < d_an - d_ap <= margin, O(B^3); without the fallback, ours are those of PML's with
    the smallest d_an for each pair.
    """

    def __init__(
        self, margin: float = 0.2, distance: str = "euclidean", hard_fallback: bool = True
    ) -> None:
        super().__init__()
        self.margin, self.distance, self.hard_fallback = margin, distance, hard_fallback

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Triplets:
        dist = pairwise_distance(embeddings, ref_emb, kind=self.distance)  # (B, M)
        b, m = dist.shape
        inf = float("inf")
        live = pos & neg.any(1, keepdim=True)  # positive pairs whose anchor has a negative
        slots = max(1, int(live.sum(1).max())) if b else 1
        # (B, S) each anchor's positive distances ascending (-inf padding first), their columns
        top, col = dist.masked_fill(~live, -inf).topk(min(slots, m), dim=1)
        d_ap, col = top.flip(1), col.flip(1)
        slots = d_ap.shape[1]
        # (B, M) bucket of each negative: how many positives are strictly closer (d_ap < d_an)
        d_neg = dist.masked_fill(~neg, inf)
        bucket = torch.searchsorted(d_ap, d_neg.contiguous(), side="left").masked_fill(~neg, 0)
        # (B, S + 1) the nearest negative of each bucket (smallest column among equal ones)
        mins = d_neg.new_full((b, slots + 1), inf).scatter_reduce(1, bucket, d_neg, "amin")
        columns = torch.arange(m, device=dist.device).expand(b, m)
        at_min = neg & (d_neg == mins.gather(1, bucket))
        argmin = torch.full_like(mins, m, dtype=torch.long).scatter_reduce(
            1, bucket, columns.masked_fill(~at_min, m), "amin"
        )
        # positive j's candidates are the buckets > j: a reverse running minimum over buckets
        run_val, run_at = mins.flip(1).cummin(1)
        best = run_val.flip(1)[:, 1:]  # (B, S) nearest negative farther than the positive
        best_bucket = (slots - run_at).flip(1)[:, 1:]
        negative = argmin.gather(1, best_bucket)
        found = best < inf
        keep = found & (best < d_ap + self.margin)
        if self.hard_fallback:  # no negative beyond the positive: the farthest negative
            farthest = dist.masked_fill(~neg, -inf).argmax(1, keepdim=True).expand(b, slots)
            negative = torch.where(found, negative, farthest)
            keep |= ~found
        keep &= d_ap > -inf  # real positive slots only
        anchor = torch.arange(b, device=dist.device)[:, None].expand(b, slots)
        return Triplets(anchor[keep], col[keep], negative[keep])


def distance_weights(
    dist: torch.Tensor,
    candidates: torch.Tensor,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> torch.Tensor:
    """Sampling probabilities of distance-weighted sampling (Wu et al. 2017), (B, M).

    On the unit sphere of R^dim, distances between uniform points have density
    q(d) ~ d^(dim - 2) (1 - d^2 / 4)^((dim - 3) / 2); candidate j of row i gets weight
    1 / q(max(d_ij, cutoff)), and none if d_ij >= nonzero_loss_cutoff (such negatives give no
    loss). Each row is normalised to sum 1 (a row with no weighted candidate is all 0). The
    weights are formed in log space and normalised per row (a softmax), so they do not
    underflow at large `dim`, where 1 / q spans hundreds of orders of magnitude.
    """
    d = dist.clamp_min(cutoff)
    log_w = (2.0 - dim) * torch.log(d) - (dim - 3.0) / 2.0 * torch.log1p(-0.25 * d * d)
    keep = candidates & (d < nonzero_loss_cutoff) & torch.isfinite(log_w)
    log_w = log_w.masked_fill(~keep, float("-inf"))
    has_any = keep.any(1, keepdim=True)  # (B, 1); an all -inf row would softmax to NaN
    return torch.softmax(log_w.masked_fill(~has_any, 0.0), 1).masked_fill(~keep, 0.0)


def sample_per_positive_pair(
    pos: torch.Tensor, weights: torch.Tensor, generator: torch.Generator | None = None
) -> Triplets:
    """One negative per positive pair (a, p), drawn from row a of the (B, M) `weights`
    (non-negative, unnormalised), independently for every pair; rows of zero weight give none.

    Inverse-CDF sampling: a uniform u per (anchor, slot of p among its positives) and a sorted
    search in the row's cumulative weights, O(B M) memory.
    """
    cdf = weights.cumsum(1)  # (B, M)
    total = cdf[:, -1:]  # (B, 1)
    a, p, slot, slots = _positive_slots(pos & (total > 0))
    device = generator.device if generator is not None else weights.device
    u = torch.rand(len(weights), slots, generator=generator, device=device).to(cdf)  # (B, S)
    # u < 1, but u * total may round up to total: stay below it to keep off the padding
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    column = torch.searchsorted(cdf, target, right=True)  # (B, S) first cdf > target
    return Triplets(a, p, column[a, slot])


class _SamplingMiner(TripletMiner):
    """Base of the miners that draw one negative per positive pair from per-row weights."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def weights(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """(B, M) non-negative sampling weights, zero off the negatives `neg`."""
        raise NotImplementedError

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Triplets:
        weights = self.weights(embeddings, ref_emb, neg)  # (B, M), 0 off the candidates
        return sample_per_positive_pair(pos, weights, self.generator)


@MINERS.register("random_negative")
class RandomNegativeMiner(_SamplingMiner):
    """For each positive pair (a, p): a negative of the anchor drawn uniformly at random.

    Draws come from `generator` (on the embeddings' device) or torch's global RNG.
    """

    def weights(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        return neg.to(embeddings.dtype)


@MINERS.register("distance_weighted")
class DistanceWeightedMiner(_SamplingMiner):
    """Distance-weighted sampling (Wu et al. 2017): for each positive pair (a, p), a negative
    drawn with probability `distance_weights` (1 / q(d) on the unit sphere, `cutoff`,
    `nonzero_loss_cutoff`), on the L2-normalised embeddings' euclidean distances.

    Like PML's DistanceWeightedMiner, an anchor whose negatives all lie beyond
    `nonzero_loss_cutoff` gives no triplet. PML draws a random positive for each of its
    anchor's K slots; ours uses each positive pair once. Draws come from `generator` (on
    the embeddings' device) or torch's global RNG.
    """

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff

    def weights(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        dist = pairwise_distance(F.normalize(embeddings, dim=1), F.normalize(ref_emb, dim=1))
        dim = embeddings.shape[1]
        return distance_weights(dist, neg, dim, self.cutoff, self.nonzero_loss_cutoff)
