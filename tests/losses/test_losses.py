"""Losses against pytorch-metric-learning 2.9.0 (float64) and a brute-force triplet reference."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from deepembed.losses import MultiSimilarityLoss, TripletMarginLoss
from deepembed.miners import Triplets
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from tests.losses.oracle import (
    BATCHES,
    DEGENERATE,
    RAW_DISTANCES,
    assert_quadratic_memory,
    assert_same,
    make_batch,
    pml_pairs,
    pml_triplets,
)

# ---------------------------------------------------------------------------- multi-similarity

MS_PARAMS = [
    {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    {"alpha": 1.0, "beta": 20.0, "base": 0.3},
]


@pytest.mark.parametrize("params", MS_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", [*BATCHES, *DEGENERATE])
def test_multi_similarity_all_pairs_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch({**BATCHES, **DEGENERATE}[batch], seed=1)
    ours = MultiSimilarityLoss(**params)
    theirs = pml_losses.MultiSimilarityLoss(**params)
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("epsilon", [0.1, 0.4])
@pytest.mark.parametrize("params", MS_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_multi_similarity_mined_matches_pml(
    batch: str, params: dict[str, float], epsilon: float
) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=2)
    mined = MultiSimilarityMiner(epsilon)(emb, labels)
    # PML returns 0 when every index tensor has <= 1 entry: stay clear of that corner
    assert max(len(t) for t in pml_pairs(mined)) > 1
    ours = MultiSimilarityLoss(**params)
    theirs = pml_losses.MultiSimilarityLoss(**params)
    assert_same(
        lambda e: ours(e, labels, mined), lambda e: theirs(e, labels, pml_pairs(mined)), emb
    )
    # the whole pipeline, each side mining with its own miner
    pml_miner = pml_miners.MultiSimilarityMiner(epsilon)
    assert_same(
        lambda e: ours(e, labels, MultiSimilarityMiner(epsilon)(e, labels)),
        lambda e: theirs(e, labels, pml_miner(e, labels)),
        emb,
    )


def test_multi_similarity_mined_subset_differs_from_all_pairs() -> None:
    """Mining must actually restrict the pairs (guards against `mined` being ignored)."""
    emb, labels = make_batch(BATCHES["balanced"], seed=3)
    loss = MultiSimilarityLoss()
    mined = MultiSimilarityMiner(0.1)(emb, labels)
    n_pairs = len(mined.positive) + len(mined.negative)
    assert 0 < n_pairs < len(labels) * (len(labels) - 1)
    assert not torch.allclose(loss(emb, labels), loss(emb, labels, mined))


# ------------------------------------------------------------------------------------- triplet


@pytest.mark.parametrize("margin", [0.05, 0.3])
@pytest.mark.parametrize("batch", [*BATCHES, *DEGENERATE])
def test_triplet_all_triplets_matches_pml_default(batch: str, margin: float) -> None:
    """PML's default LpDistance normalises; ours does not, so both get normalised inputs."""
    emb, labels = make_batch({**BATCHES, **DEGENERATE}[batch], seed=4)
    ours = TripletMarginLoss(margin=margin)
    theirs = pml_losses.TripletMarginLoss(margin=margin)
    assert_same(
        lambda e: ours(F.normalize(e, dim=1), labels),
        lambda e: theirs(F.normalize(e, dim=1), labels),
        emb,
    )


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_triplet_all_triplets_matches_pml_per_distance(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=5)
    margin = 2.0 if distance == "squared_euclidean" else 0.5  # scale of the distance
    ours = TripletMarginLoss(margin=margin, distance=distance)
    theirs = pml_losses.TripletMarginLoss(margin=margin, distance=RAW_DISTANCES[distance]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("margin", [0.05, 0.3])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_triplet_batch_hard_matches_pml(batch: str, margin: float) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=6)
    ours = TripletMarginLoss(margin=margin)
    theirs = pml_losses.TripletMarginLoss(margin=margin)
    mined = BatchHardMiner()(F.normalize(emb, dim=1), labels)
    assert len(mined) > 0
    assert_same(
        lambda e: ours(F.normalize(e, dim=1), labels, mined),
        lambda e: theirs(F.normalize(e, dim=1), labels, pml_triplets(mined)),
        emb,
    )
    # the whole pipeline, each side mining with its own miner
    pml_miner = pml_miners.BatchHardMiner()
    assert_same(
        lambda e: ours(
            F.normalize(e, dim=1), labels, BatchHardMiner()(F.normalize(e, dim=1), labels)
        ),
        lambda e: theirs(F.normalize(e, dim=1), labels, pml_miner(F.normalize(e, dim=1), labels)),
        emb,
    )


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_triplet_batch_hard_matches_pml_per_distance(distance: str) -> None:
    emb, labels = make_batch(BATCHES["uneven"], seed=7)
    ours = TripletMarginLoss(margin=0.5, distance=distance)
    theirs = pml_losses.TripletMarginLoss(margin=0.5, distance=RAW_DISTANCES[distance]())
    pml_miner = pml_miners.BatchHardMiner(distance=RAW_DISTANCES[distance]())
    assert_same(
        lambda e: ours(e, labels, BatchHardMiner(distance)(e, labels)),
        lambda e: theirs(e, labels, pml_miner(e, labels)),
        emb,
    )


def test_triplet_empty_mined_is_zero_like_pml() -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=8)
    empty = torch.empty(0, dtype=torch.long)
    ours = TripletMarginLoss()
    theirs = pml_losses.TripletMarginLoss()
    assert_same(
        lambda e: ours(e, labels, Triplets(empty, empty, empty)),
        lambda e: theirs(e, labels, (empty, empty, empty)),
        emb,
    )


# ------------------------------------------------------------- all triplets: brute-force oracle


def reference_distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise distance between x[i] and y[i], written out directly."""
    if kind == "cosine":
        return 1.0 - (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
    sq = ((x - y) ** 2).sum(1)
    return sq if kind == "squared_euclidean" else sq.sqrt()


def reference_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float, kind: str
) -> torch.Tensor:
    """O(B^3) triplet loss: enumerate every valid triplet, average the positive losses."""
    labs = labels.tolist()
    triplets = [
        (a, p, n)
        for a, p, n in itertools.product(range(len(labs)), repeat=3)
        if a != p and labs[a] == labs[p] and labs[a] != labs[n]
    ]
    a, p, n = (torch.tensor(t) for t in zip(*triplets, strict=True))
    losses = torch.relu(
        reference_distance(emb[a], emb[p], kind) - reference_distance(emb[a], emb[n], kind) + margin
    )
    positive = losses[losses > 0]
    return positive.mean() if len(positive) else emb.sum() * 0.0


@pytest.mark.parametrize(
    "sizes", [(3, 5, 8, 1, 9, 6, 4, 4), (2, 2, 2, 2, 2), (30, 1, 2), (1, 1, 1, 6)]
)
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_triplet_all_triplets_matches_brute_force(distance: str, sizes: tuple[int, ...]) -> None:
    """Uneven classes: anchors have 0 to 29 positives (the sorted-threshold padding)."""
    emb, labels = make_batch(sizes, seed=9)
    margin = 2.0 if distance == "squared_euclidean" else 0.5
    loss = TripletMarginLoss(margin=margin, distance=distance)
    assert_same(
        lambda e: loss(e, labels),
        lambda e: reference_triplet_loss(e, labels, margin, distance),
        emb,
    )


def test_triplet_all_triplets_large_batch_keeps_quadratic_memory() -> None:
    """B = 512 without mining runs, and autograd keeps O(B^2) numbers, not O(B^3)."""
    batch = 512
    gen = torch.Generator().manual_seed(10)
    emb = torch.randn(batch, 8, generator=gen).requires_grad_(True)
    labels = torch.randint(0, 32, (batch,), generator=gen)
    assert_quadratic_memory(lambda: TripletMarginLoss(margin=0.5)(emb, labels), emb)
