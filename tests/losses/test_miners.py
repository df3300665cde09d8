"""Miners: against pytorch-metric-learning 2.9.0, and the contract of every registered miner."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners

import deepembed.miners
from deepembed.miners import Pairs, Triplets
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner

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
    mined, expected = miner(emb, renamed), miner(emb, small)
    check_mined(mined, renamed)
    for got, want in zip(vars(mined).values(), vars(expected).values(), strict=True):
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
