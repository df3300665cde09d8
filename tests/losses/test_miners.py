"""Miners: against pytorch-metric-learning 2.9.0, and the contract of every registered miner."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as pml_lmu

import deepembed.miners
from deepembed.losses import TripletMarginLoss
from deepembed.miners import Pairs, Triplets, label_masks
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import (
    BatchAllMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    HardestNegativeMiner,
    RandomNegativeMiner,
    SemiHardMiner,
    distance_weights,
)
from tests.losses.oracle import assert_same

BATCHES: dict[str, tuple[int, ...]] = {
    "balanced": (4, 4, 4, 4, 4, 4),
    "uneven": (2, 3, 5, 7, 9),
    "singletons": (1, 1, 1, 3, 4, 6),
    "one_class": (12,),
    "all_distinct": (1,) * 12,
}

PairSet = set[tuple[int, int]]


def make_batch(
    sizes: tuple[int, ...], seed: int, dim: int = 16, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered continuous embeddings (no distance ties) and shuffled non-contiguous labels."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    classes = classes[torch.randperm(len(classes), generator=gen)]
    centres = torch.randn(len(sizes), dim, generator=gen, dtype=torch.float64)
    noise = torch.randn(len(classes), dim, generator=gen, dtype=torch.float64)
    return (centres[classes] + 0.8 * noise).to(dtype), classes * 7 - 20


def pair_set(a: torch.Tensor, b: torch.Tensor) -> PairSet:
    """Index pairs as a set of (anchor, other)."""
    return set(zip(a.tolist(), b.tolist(), strict=True))


def triplet_set(t: Triplets | tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    """Triplets as a set of (anchor, positive, negative)."""
    a, p, n = (t.anchor, t.positive, t.negative) if isinstance(t, Triplets) else t
    return set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))


def index_tensors(mined: Pairs | Triplets) -> tuple[torch.Tensor, ...]:
    """The index tensors of a mining result, in field order."""
    if isinstance(mined, Pairs):
        return mined.anchor_pos, mined.positive, mined.anchor_neg, mined.negative
    return mined.anchor, mined.positive, mined.negative


# ------------------------------------------------------------------------------- PML oracles


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_multi_similarity_miner_matches_pml(batch: str, epsilon: float) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=11)
    ours = MultiSimilarityMiner(epsilon)(emb, labels)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon)(emb, labels)
    assert pair_set(ours.anchor_pos, ours.positive) == pair_set(a1, p)
    assert pair_set(ours.anchor_neg, ours.negative) == pair_set(a2, n)
    if batch in ("balanced", "uneven"):  # a real selection: neither nothing nor everything
        assert 0 < len(ours.negative) < int((labels[:, None] != labels[None, :]).sum())


# our distance name -> PML distance on raw (unnormalised) embeddings
RAW_DISTANCES: dict[str, Callable[[], pml_distances.BaseDistance]] = {
    "euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False),
    "squared_euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False, power=2),
    "cosine": lambda: pml_distances.CosineSimilarity(),
}


@pytest.mark.parametrize("batch", list(BATCHES))
def test_batch_hard_miner_matches_pml_default(batch: str) -> None:
    """PML's default LpDistance normalises the embeddings; ours does not: normalise first."""
    emb, labels = make_batch(BATCHES[batch], seed=12)
    emb = F.normalize(emb, dim=1)
    ours = BatchHardMiner()(emb, labels)
    theirs = pml_miners.BatchHardMiner()(emb, labels)
    assert triplet_set(ours) == triplet_set(theirs)
    expected_anchors = sum(size for size in BATCHES[batch] if size > 1)
    if len(BATCHES[batch]) == 1:
        expected_anchors = 0  # one class: no negatives
    assert len(ours) == expected_anchors


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", ["uneven", "singletons"])
def test_batch_hard_miner_matches_pml_per_distance(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=13)
    ours = BatchHardMiner(distance)(emb, labels)
    theirs = pml_miners.BatchHardMiner(distance=RAW_DISTANCES[distance]())(emb, labels)
    assert triplet_set(ours) == triplet_set(theirs)


def test_batch_hard_miner_picks_extremes() -> None:
    """Brute force: farthest positive and nearest negative of each anchor."""
    emb, labels = make_batch(BATCHES["uneven"], seed=14)
    mined = BatchHardMiner()(emb, labels)
    dist = torch.cdist(emb, emb)
    for a, p, n in triplet_set(mined):
        same = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
        other = [j for j in range(len(labels)) if labels[j] != labels[a]]
        assert p == max(same, key=lambda j: float(dist[a, j]))
        assert n == min(other, key=lambda j: float(dist[a, j]))


# ---------------------------------------------------------------- loop oracles and helpers


def oracle_distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, M) distances computed the obvious way (cdist, or 1 - cosine similarity)."""
    if kind == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    dist = torch.cdist(x, y)
    return dist**2 if kind == "squared_euclidean" else dist


def reference_batch(
    batch: str, seed: int, refs: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors, references and (B, M) label masks: the batch itself, or another batch of
    references (as a cross-batch memory gives; no pair is excluded there)."""
    emb, labels = make_batch(BATCHES[batch], seed=seed)
    if not refs:
        pos, neg = label_masks(labels)
        return emb, emb, pos, neg
    ref, ref_labels = make_batch(BATCHES["uneven"], seed=seed + 100)
    same = labels[:, None] == ref_labels[None, :]
    return emb, ref, same, ~same


def semi_hard_oracle(
    dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float, fallback: bool
) -> set[tuple[int, int, int]]:
    """FaceNet / TensorFlow rule, pair by pair: the nearest negative with d_ap < d_an, kept if
    d_an < d_ap + margin; if there is none, the farthest negative (when `fallback`)."""
    out = set()
    for a in range(dist.shape[0]):
        negatives = [n for n in range(dist.shape[1]) if neg[a, n]]
        for p in range(dist.shape[1]):
            if not pos[a, p] or not negatives:
                continue
            d_ap = float(dist[a, p])
            beyond = [n for n in negatives if float(dist[a, n]) > d_ap]
            if beyond:
                n = min(beyond, key=lambda j: float(dist[a, j]))
                if float(dist[a, n]) < d_ap + margin:
                    out.add((a, p, n))
            elif fallback:
                out.add((a, p, max(negatives, key=lambda j: float(dist[a, j]))))
    return out


def hardest_negative_oracle(
    dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> set[tuple[int, int, int]]:
    """Every positive pair with its anchor's nearest negative, by enumeration."""
    out = set()
    for a in range(dist.shape[0]):
        negatives = [n for n in range(dist.shape[1]) if neg[a, n]]
        for p in range(dist.shape[1]):
            if pos[a, p] and negatives:
                out.add((a, p, min(negatives, key=lambda j: float(dist[a, j]))))
    return out


def paper_weights(
    dist: torch.Tensor, neg: torch.Tensor, dim: int, cutoff: float, nonzero: float
) -> torch.Tensor:
    """Wu et al. 2017, entry by entry: 1 / q(max(d, cutoff)) on negatives with d < nonzero,
    q(d) = d^(n-2) (1 - d^2/4)^((n-3)/2); each row normalised to sum 1."""
    out = torch.zeros_like(dist)
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            d = max(float(dist[i, j]), cutoff)
            if neg[i, j] and d < nonzero:
                q = d ** (dim - 2) * (1 - d * d / 4) ** ((dim - 3) / 2)
                out[i, j] = 1 / q
        if out[i].sum() > 0:
            out[i] /= out[i].sum()
    return out


# ------------------------------------------------------------------------------------ batch all


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_batch_all_is_every_valid_triplet_like_pml(batch: str, distance: str) -> None:
    """PML's TripletMarginMiner("all") keeps d_an - d_ap <= margin: a huge margin keeps all."""
    emb, labels = make_batch(BATCHES[batch], seed=20)
    ours = BatchAllMiner()(emb, labels)
    pml = pml_miners.TripletMarginMiner(1e9, "all", distance=RAW_DISTANCES[distance]())
    theirs = pml(emb, labels)
    assert ours.is_all
    assert len(ours) == len(theirs[0])  # counted from the masks, before any listing
    assert triplet_set(ours) == triplet_set(theirs)
    assert len(triplet_set(ours)) == len(ours)  # no duplicates


def test_batch_all_against_references_is_every_masked_triplet() -> None:
    emb, ref, pos, neg = reference_batch("uneven", seed=21, refs=True)
    pos[0] = False  # an anchor with no positive gives nothing
    neg[1] = False  # nor one with no negative
    mined = BatchAllMiner().mine_against(emb, ref, pos, neg)
    expected = {
        (a, p, n)
        for a in range(len(emb))
        for p in range(len(ref))
        for n in range(len(ref))
        if pos[a, p] and neg[a, n]
    }
    assert len(mined) == len(expected) > 0
    assert triplet_set(mined) == expected


def test_batch_all_counts_without_listing() -> None:
    """B = 4096 in P x K = 512 x 8 has B (K-1) (B-K) = 117 million triplets: len() and the
    lazy flag come from the (B, B) masks; listing them would take ~2.8 GB."""
    labels = torch.arange(512).repeat_interleave(8)
    mined = BatchAllMiner()(torch.zeros(len(labels), 2), labels)
    assert mined.is_all and len(mined) == 4096 * 7 * 4088


@pytest.mark.parametrize("margin", [0.05, 0.4])
@pytest.mark.parametrize("batch", ["balanced", "uneven", "singletons"])
def test_triplet_loss_on_batch_all_matches_pml(batch: str, margin: float) -> None:
    """Our triplet loss on the batch_all miner = PML's on its "all" miner = ours on None."""
    emb, labels = make_batch(BATCHES[batch], seed=22)
    loss = TripletMarginLoss(margin=margin)
    pml_loss = pml_losses.TripletMarginLoss(margin, distance=RAW_DISTANCES["euclidean"]())
    pml_miner = pml_miners.TripletMarginMiner(margin, "all", distance=RAW_DISTANCES["euclidean"]())
    assert_same(
        lambda e: loss(e, labels, BatchAllMiner()(e, labels)),
        lambda e: pml_loss(e, labels, pml_miner(e, labels)),
        emb,
    )
    assert_same(
        lambda e: loss(e, labels, BatchAllMiner()(e, labels)),
        lambda e: loss(e, labels),
        emb,
    )


# ------------------------------------------------------------------------------------ semi-hard


@pytest.mark.parametrize("refs", [False, True], ids=["batch", "references"])
@pytest.mark.parametrize("fallback", [True, False])
@pytest.mark.parametrize("margin", [0.2, 1.0])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_semi_hard_matches_loop_oracle(
    distance: str, margin: float, fallback: bool, refs: bool
) -> None:
    emb, ref, pos, neg = reference_batch("uneven", seed=23, refs=refs)
    ref[
        0
    ] *= -10.0  # far out, reversed (the batch row too): pairs (a, 0) have only nearer negatives
    if distance == "cosine":
        margin /= 4  # cosine distances are in [0, 2]: keep the margin selective
    miner = SemiHardMiner(margin, distance, hard_fallback=fallback)
    mined = miner.mine_against(emb, ref, pos, neg)
    dist = oracle_distance(emb, ref, distance)
    expected = semi_hard_oracle(dist, pos, neg, margin, fallback)
    assert triplet_set(mined) == expected
    assert len(mined) == len(expected)  # one triplet per positive pair at most
    # the batch exercises every branch: semi-hard kept, beyond the margin, and the fallback
    d_ap, d_an = dist[mined.anchor, mined.positive], dist[mined.anchor, mined.negative]
    assert bool((d_an > d_ap).any())
    assert bool((d_an <= d_ap).any()) == fallback
    assert len(expected) < int(pos.sum())


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", ["balanced", "uneven", "singletons"])
def test_semi_hard_is_pml_semihard_nearest_per_pair(batch: str, distance: str) -> None:
    """Without the fallback, ours are PML's semihard triplets with the smallest d_an for
    each positive pair; with it, the other triplets are hard (d_an <= d_ap)."""
    emb, labels = make_batch(BATCHES[batch], seed=24)
    margin = {"euclidean": 1.0, "squared_euclidean": 8.0, "cosine": 0.3}[distance]
    pml = pml_miners.TripletMarginMiner(margin, "semihard", distance=RAW_DISTANCES[distance]())
    theirs = triplet_set(pml(emb, labels))
    dist = oracle_distance(emb, emb, distance)
    nearest: dict[tuple[int, int], int] = {}
    for a, p, n in theirs:
        if (a, p) not in nearest or dist[a, n] < dist[a, nearest[a, p]]:
            nearest[a, p] = n
    strict = triplet_set(SemiHardMiner(margin, distance, hard_fallback=False)(emb, labels))
    assert strict == {(a, p, n) for (a, p), n in nearest.items()}
    assert 0 < len(strict) < len(theirs)
    with_fallback = triplet_set(SemiHardMiner(margin, distance)(emb, labels))
    assert strict <= with_fallback
    assert all(dist[a, n] <= dist[a, p] for a, p, n in with_fallback - strict)


# ------------------------------------------------------------------------------ hardest negative


@pytest.mark.parametrize("refs", [False, True], ids=["batch", "references"])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_hardest_negative_matches_loop_oracle(distance: str, refs: bool) -> None:
    emb, ref, pos, neg = reference_batch("singletons", seed=25, refs=refs)
    mined = HardestNegativeMiner(distance).mine_against(emb, ref, pos, neg)
    expected = hardest_negative_oracle(oracle_distance(emb, ref, distance), pos, neg)
    assert triplet_set(mined) == expected and len(mined) == len(expected) > 0


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_hardest_negative_matches_pml_easy_hard(batch: str, distance: str) -> None:
    """PML's BatchEasyHardMiner(pos "all", neg "hard") lists the positive pairs and the
    (anchor, nearest negative) pairs apart: ours joins them per anchor."""
    emb, labels = make_batch(BATCHES[batch], seed=26)
    ours = HardestNegativeMiner(distance)(emb, labels)
    pml = pml_miners.BatchEasyHardMiner(
        pos_strategy="all", neg_strategy="hard", distance=RAW_DISTANCES[distance]()
    )
    a1, p, a2, n = pml(emb, labels)
    with_neg, with_pos = set(a2.tolist()), set(a1.tolist())
    assert pair_set(ours.anchor, ours.positive) == {
        (a, q) for a, q in pair_set(a1, p) if a in with_neg
    }
    assert pair_set(ours.anchor, ours.negative) == {
        (a, m) for a, m in pair_set(a2, n) if a in with_pos
    }


# ----------------------------------------------------------------------- random and weighted


def assert_sampled_like(
    miner: DistanceWeightedMiner | RandomNegativeMiner,
    emb: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    repeats: int,
) -> None:
    """One call mines `repeats` copies of every anchor against the batch: each positive pair
    of each copy gets one negative; per anchor, the negatives follow the (B, B) row
    probabilities `probs`, independently across the pairs of a copy (two pairs coincide with
    probability sum_n p_n^2)."""
    b = len(labels)
    pos, neg = label_masks(labels)
    tiled = [m.repeat(repeats, 1) for m in (pos, neg)]
    mined = miner.mine_against(emb.repeat(repeats, 1), emb, *tiled)
    anchor = mined.anchor % b  # the original anchor of each copy
    assert bool((labels[anchor] == labels[mined.positive]).all())
    assert bool((labels[anchor] != labels[mined.negative]).all())
    has = probs.sum(1) > 0
    wanted = torch.nonzero(tiled[0] & has.repeat(repeats)[:, None], as_tuple=True)
    assert pair_set(mined.anchor, mined.positive) == pair_set(*wanted)
    assert len(mined) == len(wanted[0])

    counts = torch.zeros_like(probs)
    hits = torch.ones(len(mined), dtype=counts.dtype)
    counts.index_put_((anchor, mined.negative), hits, accumulate=True)
    draws = counts.sum(1, keepdim=True)  # (B, 1)
    assert bool((counts[probs == 0] == 0).all())
    sigma = (probs * (1 - probs) / draws.clamp_min(1)).sqrt()
    assert bool(((counts / draws.clamp_min(1) - probs).abs() <= 5 * sigma + 1e-9).all())

    # coincidences with the first pair's negative among the K-1 >= 2 pairs of a copy
    first = torch.full((b * repeats,), -1)
    first[mined.anchor.flip(0)] = mined.negative.flip(0)  # the last write is the first pair
    same = torch.zeros(b, dtype=torch.float64)
    same.index_add_(0, anchor, (mined.negative == first[mined.anchor]).double())
    others = repeats * (pos.sum(1).double() - 1)  # pairs compared with a first one, per anchor
    rows = has & (others > 0)
    rate = (same[rows] - repeats) / others[rows]  # less the first pairs matching themselves
    want = (probs[rows] ** 2).sum(1)
    assert bool(((rate - want).abs() <= 5 * (want / others[rows]).sqrt() + 1e-3).all())


def test_random_negative_is_uniform_and_independent() -> None:
    emb, labels = make_batch((6, 6, 5, 4, 3), seed=27)
    _, neg = label_masks(labels)
    probs = neg.double() / neg.sum(1, keepdim=True)
    gen = torch.Generator().manual_seed(0)
    assert_sampled_like(RandomNegativeMiner(generator=gen), emb, labels, probs, repeats=400)


@pytest.mark.parametrize("name", ["random_negative", "distance_weighted"])
def test_sampling_miners_are_seedable(name: str) -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=28)

    def draw(seed: int, with_generator: bool) -> set[tuple[int, int, int]]:
        if with_generator:
            gen = torch.Generator().manual_seed(seed)
            return triplet_set(deepembed.miners.create(name, generator=gen)(emb, labels))
        torch.manual_seed(seed)
        return triplet_set(deepembed.miners.create(name)(emb, labels))

    for with_generator in (True, False):
        assert draw(1, with_generator) == draw(1, with_generator)
        assert draw(1, with_generator) != draw(2, with_generator)


@pytest.mark.parametrize(("cutoff", "nonzero"), [(0.5, 1.4), (0.8, 1.2)])
def test_distance_weights_match_paper_and_pml(
    monkeypatch: pytest.MonkeyPatch, cutoff: float, nonzero: float
) -> None:
    """Our weights = the paper's formula entry by entry = PML's (captured on their way to its
    sampler), as row probabilities."""
    emb, labels = make_batch(BATCHES["uneven"], seed=29, dim=12)
    unit = F.normalize(emb, dim=1)
    _, neg = label_masks(labels)
    ours = distance_weights(torch.cdist(unit, unit), neg, 12, cutoff, nonzero)
    expected = paper_weights(torch.cdist(unit, unit), neg, 12, cutoff, nonzero)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-9)
    rows = expected.sum(1) > 0  # PML's row normalisation makes the other rows NaN
    assert int(rows.sum()) > len(rows) // 2 and bool((expected[rows] == 0).any())  # cutoffs hit

    captured: dict[str, torch.Tensor] = {}
    sampler = pml_lmu.get_random_triplet_indices

    def capture(*args: object, weights: torch.Tensor, **kwargs: object) -> object:
        captured["weights"] = weights
        return sampler(*args, weights=weights, **kwargs)

    monkeypatch.setattr(pml_lmu, "get_random_triplet_indices", capture)
    pml_miners.DistanceWeightedMiner(cutoff, nonzero)(emb, labels)
    torch.testing.assert_close(ours[rows], captured["weights"][rows], atol=1e-12, rtol=1e-9)


def test_distance_weights_do_not_underflow_in_high_dimension() -> None:
    """At dim 512 the weights span exp(500): PML's one global maximum underflows whole
    rows in float32; ours normalises row by row (a softmax in log space)."""
    gen = torch.Generator().manual_seed(30)
    emb = F.normalize(torch.randn(64, 512, generator=gen), dim=1)
    labels = torch.arange(8).repeat_interleave(8)
    _, neg = label_masks(labels)
    dist = torch.cdist(emb, emb).clamp_max(1.39)  # every negative is a candidate
    dist[0, 8:] = torch.linspace(0.6, 1.35, 56)  # one row spanning a wide range
    probs = distance_weights(dist, neg, 512)
    assert bool(torch.isfinite(probs).all())
    torch.testing.assert_close(probs.sum(1), torch.ones(64))
    assert int(probs[0].argmax()) == 8  # the closest negative dominates
    expected = paper_weights(dist[:1].double(), neg[:1], 512, 0.5, 1.4)
    torch.testing.assert_close(probs[:1].double(), expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("nonzero", [1.4, 1.1])
def test_distance_weighted_samples_follow_weights(nonzero: float) -> None:
    """At 1.1, six anchors have no negative within the cutoff: they get no triplet."""
    emb, labels = make_batch((6, 6, 5, 4, 3), seed=31, dim=6, dtype=torch.float32)
    unit = F.normalize(emb.double(), dim=1)
    _, neg = label_masks(labels)
    probs = paper_weights(torch.cdist(unit, unit), neg, 6, 0.5, nonzero)
    assert int((probs.sum(1) == 0).sum()) == (6 if nonzero == 1.1 else 0)
    gen = torch.Generator().manual_seed(1)
    miner = DistanceWeightedMiner(nonzero_loss_cutoff=nonzero, generator=gen)
    assert_sampled_like(miner, emb, labels, probs, repeats=400)


def test_distance_weighted_spreads_sampled_distances() -> None:
    """Uniform negatives crowd around sqrt(2) on the sphere; distance weighting draws them
    over the whole range below nonzero_loss_cutoff: closer on average and more spread."""
    emb, labels = make_batch((8,) * 8, seed=32, dim=32)
    unit = F.normalize(emb, dim=1)
    dist = torch.cdist(unit, unit)
    weighted, uniform = [], []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        t = DistanceWeightedMiner(generator=gen)(emb, labels)
        weighted.append(dist[t.anchor, t.negative])
        t = RandomNegativeMiner(generator=gen)(emb, labels)
        uniform.append(dist[t.anchor, t.negative])
    w, u = torch.cat(weighted), torch.cat(uniform)
    assert float(w.max()) < 1.4 <= float(u.max())
    assert float(w.mean()) < float(u.mean()) - 0.1
    below = u[u < 1.4]  # uniform among the same candidates: still crowded near the cutoff
    assert float(w.mean()) < float(below.mean()) - 0.05
    assert float(w.std()) > 1.2 * float(below.std())


def test_distance_weighted_drops_anchors_without_candidates() -> None:
    """All of an anchor's negatives beyond nonzero_loss_cutoff: no triplet for it (like PML)."""
    labels = torch.tensor([0, 0, 1, 1])
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]])  # classes antipodal
    assert len(DistanceWeightedMiner()(emb, labels)) == 0
    assert len(DistanceWeightedMiner(nonzero_loss_cutoff=2.5)(emb, labels)) == 4


# ------------------------------------------------------------------------ typed results


def test_triplets_keep_explicit_indices() -> None:
    a, p, n = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 3])
    t = Triplets(a, p, n)
    assert not t.is_all and len(t) == 2
    assert t.anchor is a and t.positive is p and t.negative is n


def test_pairs_masks_against_references() -> None:
    pairs = Pairs(torch.tensor([0]), torch.tensor([4]), torch.tensor([1]), torch.tensor([2]))
    pos, neg = pairs.masks(2, 5)
    assert pos.shape == neg.shape == (2, 5)
    assert pos.nonzero().tolist() == [[0, 4]] and neg.nonzero().tolist() == [[1, 2]]


# --------------------------------------------------------------- every registered miner


def check_mined(mined: Pairs | Triplets, labels: torch.Tensor) -> None:
    """Index tensors are long, 1-D, in range, detached, with the right label relations."""
    assert isinstance(mined, Pairs | Triplets)
    if isinstance(mined, Pairs):
        tensors = [mined.anchor_pos, mined.positive, mined.anchor_neg, mined.negative]
        assert len(mined.anchor_pos) == len(mined.positive)
        assert len(mined.anchor_neg) == len(mined.negative)
        anchors_p, positives = mined.anchor_pos, mined.positive
        anchors_n, negatives = mined.anchor_neg, mined.negative
    else:
        tensors = [mined.anchor, mined.positive, mined.negative]
        assert len(mined.anchor) == len(mined.positive) == len(mined.negative)
        anchors_p = anchors_n = mined.anchor
        positives, negatives = mined.positive, mined.negative
    for t in tensors:
        assert t.dtype == torch.long and t.ndim == 1 and not t.requires_grad
        assert bool(((t >= 0) & (t < len(labels))).all())
    assert bool((labels[anchors_p] == labels[positives]).all())
    assert bool((anchors_p != positives).all())
    assert bool((labels[anchors_n] != labels[negatives]).all())


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("name", deepembed.miners.names())
def test_miner_output_contract(name: str, batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=15, dtype=torch.float32)
    emb.requires_grad_(True)
    mined = deepembed.miners.create(name)(emb, labels)
    check_mined(mined, labels)
    if isinstance(mined, Triplets) and batch in ("one_class", "all_distinct"):
        assert len(mined) == 0


@pytest.mark.parametrize("name", deepembed.miners.names())
def test_miner_finds_something_on_a_normal_batch(name: str) -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=16, dtype=torch.float32)
    mined = deepembed.miners.create(name)(emb, labels)
    sizes = [len(mined.positive)] + ([len(mined.negative)] if isinstance(mined, Pairs) else [])
    assert min(sizes) > 0


@pytest.mark.parametrize("name", deepembed.miners.names())
def test_miner_ignores_label_values(name: str) -> None:
    """Only label equality matters: huge negative/positive ids give the same tuples."""
    emb, labels = make_batch(BATCHES["uneven"], seed=17, dtype=torch.float32)
    ids = torch.tensor([-(2**62), -1, 0, 2**40, 2**62 + 5])
    _, small = torch.unique(labels, return_inverse=True)
    renamed = ids[small]
    miner = deepembed.miners.create(name)
    torch.manual_seed(0)  # the random miners draw the same numbers for both
    mined = miner(emb, renamed)
    torch.manual_seed(0)
    expected = miner(emb, small)
    check_mined(mined, renamed)
    for got, want in zip(index_tensors(mined), index_tensors(expected), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", deepembed.miners.names())
def test_miner_low_precision_input(name: str, dtype: torch.dtype) -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=18, dtype=dtype)
    check_mined(deepembed.miners.create(name)(emb, labels), labels)


@pytest.mark.parametrize("name", deepembed.miners.names())
def test_miner_identical_embeddings(name: str) -> None:
    _, labels = make_batch(BATCHES["balanced"], seed=19)
    emb = torch.ones(len(labels), 8)
    check_mined(deepembed.miners.create(name)(emb, labels), labels)
