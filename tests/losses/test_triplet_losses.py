"""Smooth triplet losses (soft-margin, ratio) against PML 2.9.0 and brute-force loops."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from deepembed import losses, miners
from deepembed.losses import triplet as triplet_module
from deepembed.losses.triplet import RatioTripletLoss, SoftMarginTripletLoss
from deepembed.miners import Triplets
from deepembed.miners.triplet import BatchHardMiner
from tests.losses.oracle import (
    BATCHES,
    DEGENERATE,
    RAW_DISTANCES,
    TOL,
    assert_quadratic_memory,
    assert_same,
    make_batch,
    pml_triplets,
)

ALL_BATCHES = {**BATCHES, **DEGENERATE}


def all_triplets(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    """Every valid (anchor, positive, negative), enumerated one by one."""
    labs = labels.tolist()
    return [
        (a, p, n)
        for a, p, n in itertools.product(range(len(labs)), repeat=3)
        if a != p and labs[a] == labs[p] and labs[a] != labs[n]
    ]


def reference_distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise distance between x[i] and y[i], written out directly."""
    if kind == "cosine":
        return 1.0 - (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
    sq = ((x - y) ** 2).sum(1)
    return sq if kind == "squared_euclidean" else sq.sqrt()


# ------------------------------------------------------------------------- soft-margin triplet


@pytest.mark.parametrize("margin", [0.0, 0.05])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_soft_margin_all_triplets_matches_pml_default(batch: str, margin: float) -> None:
    """PML's default LpDistance normalises; ours does not, so both get normalised inputs."""
    emb, labels = make_batch(ALL_BATCHES[batch], seed=40)
    ours = SoftMarginTripletLoss(margin=margin)
    theirs = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=True)
    assert_same(
        lambda e: ours(F.normalize(e, dim=1), labels),
        lambda e: theirs(F.normalize(e, dim=1), labels),
        emb,
    )


@pytest.mark.parametrize("pair_block", [1, 7, None])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_soft_margin_per_distance_matches_pml(
    batch: str, distance: str, pair_block: int | None
) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=41)
    ours = SoftMarginTripletLoss(margin=0.1, distance=distance, pair_block=pair_block)
    theirs = pml_losses.TripletMarginLoss(
        margin=0.1, smooth_loss=True, distance=RAW_DISTANCES[distance]()
    )
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_soft_margin_batch_hard_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=42)
    mined = BatchHardMiner(distance)(emb, labels)
    assert len(mined) > 0
    ours = SoftMarginTripletLoss(distance=distance)
    theirs = pml_losses.TripletMarginLoss(
        margin=0.0, smooth_loss=True, distance=RAW_DISTANCES[distance]()
    )
    assert_same(
        lambda e: ours(e, labels, mined), lambda e: theirs(e, labels, pml_triplets(mined)), emb
    )
    assert not torch.allclose(ours(emb, labels), ours(emb, labels, mined))


def test_soft_margin_matches_paper_formula_by_loop() -> None:
    emb, labels = make_batch((3, 5, 8, 1, 9, 6, 4, 4), seed=43)  # B = 40
    a, p, n = (torch.tensor(t) for t in zip(*all_triplets(labels), strict=True))

    def reference(e: torch.Tensor) -> torch.Tensor:
        d_ap = reference_distance(e[a], e[p], "euclidean")
        d_an = reference_distance(e[a], e[n], "euclidean")
        return torch.log(1.0 + torch.exp(d_ap - d_an)).mean()

    loss = SoftMarginTripletLoss(pair_block=13)
    assert_same(lambda e: loss(e, labels), reference, emb)


def test_soft_margin_keeps_underflowed_triplets_in_the_mean_unlike_pml() -> None:
    """float32: a triplet with d_an - d_ap = 200 has softplus exactly 0; the paper's mean
    (ours) still counts it, PML's AvgNonZeroReducer drops it."""
    emb = torch.tensor([[0.0], [0.1], [0.05], [200.0]])
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = (torch.tensor(t) for t in zip(*all_triplets(labels), strict=True))
    d_ap = reference_distance(emb[a], emb[p], "euclidean")
    terms = F.softplus(d_ap - reference_distance(emb[a], emb[n], "euclidean"))
    assert 0 < int((terms == 0).sum()) < len(terms)
    ours = SoftMarginTripletLoss()(emb, labels)
    theirs = pml_losses.TripletMarginLoss(
        margin=0.0, smooth_loss=True, distance=RAW_DISTANCES["euclidean"]()
    )(emb, labels)
    torch.testing.assert_close(ours, terms.mean())
    torch.testing.assert_close(theirs, terms[terms > 0].mean())
    assert not torch.allclose(ours, theirs)


# ------------------------------------------------------------------------------ ratio triplet


def reference_ratio(
    emb: torch.Tensor, triplets: list[tuple[int, int, int]], kind: str
) -> torch.Tensor:
    """Hoffer & Ailon 2015 written out over the listed triplets: d+ = e^{d_ap} / (e^{d_ap} +
    e^{d_an}), d- = e^{d_an} / (...), loss = mean of d+^2 + (d- - 1)^2."""
    if not triplets:
        return emb.sum() * 0.0
    a, p, n = (torch.tensor(t) for t in zip(*triplets, strict=True))
    exp_ap = torch.exp(reference_distance(emb[a], emb[p], kind))
    exp_an = torch.exp(reference_distance(emb[a], emb[n], kind))
    d_plus, d_minus = exp_ap / (exp_ap + exp_an), exp_an / (exp_ap + exp_an)
    return (d_plus**2 + (d_minus - 1.0) ** 2).mean()


@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_ratio_all_triplets_matches_loop(batch: str) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=44, dim=4)
    triplets = all_triplets(labels)
    emb = (emb.detach() * 0.3).requires_grad_(True)  # distances of order 1: both sides matter
    loss = RatioTripletLoss()
    assert_same(lambda e: loss(e, labels), lambda e: reference_ratio(e, triplets, "euclidean"), emb)


@pytest.mark.parametrize("pair_block", [1, 5, None])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_ratio_per_distance_and_block_matches_loop(distance: str, pair_block: int | None) -> None:
    emb, labels = make_batch((2, 3, 4, 1, 3), seed=45, dim=4)
    emb = (emb.detach() * 0.3).requires_grad_(True)
    triplets = all_triplets(labels)
    loss = RatioTripletLoss(distance=distance, pair_block=pair_block)
    assert_same(lambda e: loss(e, labels), lambda e: reference_ratio(e, triplets, distance), emb)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_ratio_mined_matches_loop(batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=46, dim=4)
    emb = (emb.detach() * 0.3).requires_grad_(True)
    mined = BatchHardMiner()(emb, labels)
    triplets = list(
        zip(mined.anchor.tolist(), mined.positive.tolist(), mined.negative.tolist(), strict=True)
    )
    loss = RatioTripletLoss()
    assert_same(
        lambda e: loss(e, labels, mined), lambda e: reference_ratio(e, triplets, "euclidean"), emb
    )


# ------------------------------------------------------------------------------------ shared


@pytest.mark.parametrize("loss_class", [SoftMarginTripletLoss, RatioTripletLoss])
def test_smooth_all_triplets_large_batch_keeps_quadratic_memory(loss_class: type) -> None:
    """B = 512, every triplet (~2.5M here): autograd keeps O(B^2) numbers, and the chunked
    sum equals the one-chunk sum."""
    batch = 512
    gen = torch.Generator().manual_seed(47)
    emb = torch.randn(batch, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.randint(0, 32, (batch,), generator=gen)
    assert_quadratic_memory(lambda: loss_class(pair_block=1000)(emb, labels), emb)
    assert_same(
        lambda e: loss_class(pair_block=1000)(e, labels),
        lambda e: loss_class(pair_block=10**6)(e, labels),
        emb,
    )


@pytest.mark.parametrize("loss_class", [SoftMarginTripletLoss, RatioTripletLoss])
def test_smooth_all_triplets_without_grad(loss_class: type) -> None:
    emb, labels = make_batch(BATCHES["uneven"], seed=48)
    with torch.no_grad():
        value = loss_class()(emb, labels)
    torch.testing.assert_close(value, loss_class()(emb, labels).detach(), **TOL)


@pytest.mark.parametrize("loss_class", [SoftMarginTripletLoss, RatioTripletLoss])
def test_smooth_bad_block_and_empty_mined(loss_class: type) -> None:
    with pytest.raises(ValueError, match="pair_block"):
        loss_class(pair_block=0)
    emb, labels = make_batch(BATCHES["uneven"], seed=49)
    empty = torch.empty(0, dtype=torch.long)
    loss = loss_class()(emb, labels, Triplets(empty, empty, empty))
    loss.backward()
    assert loss == 0 and emb.grad is not None and not emb.grad.any()


@pytest.mark.parametrize("miner", ["batch_hard", "semi_hard", "random_negative"])
@pytest.mark.parametrize("loss_name", ["triplet", "soft_margin_triplet", "ratio_triplet"])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_mined_triplets_per_pair_distances_equal_the_matrix_path(
    monkeypatch: pytest.MonkeyPatch, miner: str, loss_name: str, distance: str
) -> None:
    # few mined triplets get their own distances (O(T D)); the (B, B) path is PML-checked
    emb, labels = make_batch(BATCHES["uneven"], seed=3)
    params = {} if miner == "random_negative" else {"distance": distance}
    mined = miners.create(miner, **params)(emb, labels)
    loss = losses.create(loss_name, distance=distance)
    results = []
    for below in (1, 10**9):  # 1: always per-pair distances; 10**9: always the matrix
        monkeypatch.setattr(triplet_module, "PAIRED_BELOW", below)
        e = emb.detach().requires_grad_(True)
        value = loss(e, labels, mined)
        value.backward()
        results.append((value.detach(), e.grad))
    torch.testing.assert_close(results[0], results[1])
