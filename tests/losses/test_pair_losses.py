"""Pair losses (contrastive, binomial deviance, circle, margin) against PML 2.9.0 or loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses

from deepembed.losses import create
from deepembed.losses.pair import BinomialDevianceLoss, CircleLoss, ContrastiveLoss, MarginLoss
from deepembed.losses.triplet import sample_triplets
from deepembed.miners import Pairs, Triplets
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from tests.losses.oracle import (
    BATCHES,
    DEGENERATE,
    RAW_DISTANCES,
    TOL,
    assert_quadratic_memory,
    assert_same,
    make_batch,
    pml_pairs,
    pml_triplets,
)

ALL_BATCHES = {**BATCHES, **DEGENERATE}


def normalised(loss: torch.nn.Module, labels: torch.Tensor, *mined: object):
    """loss on L2-normalised embeddings (what PML's default LpDistance sees)."""
    return lambda e: loss(F.normalize(e, dim=1), labels, *mined)


# ---------------------------------------------------------------------------------- contrastive


@pytest.mark.parametrize(
    "params", [{}, {"pos_margin": 0.3, "neg_margin": 0.9}], ids=["default", "custom"]
)
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_contrastive_all_pairs_matches_pml_default(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=20)
    ours, theirs = ContrastiveLoss(**params), pml_losses.ContrastiveLoss(**params)
    assert_same(normalised(ours, labels), lambda e: theirs(e, labels), emb)


# our margins and PML's, per distance: PML's CosineSimilarity margins m are 1 - m for us
CONTRASTIVE_MARGINS = {
    "euclidean": ((3.0, 6.0), (3.0, 6.0)),
    "squared_euclidean": ((10.0, 40.0), (10.0, 40.0)),
    "cosine": ((0.2, 0.7), (0.8, 0.3)),
}


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_contrastive_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=21)
    (pos_m, neg_m), (pml_pos, pml_neg) = CONTRASTIVE_MARGINS[distance]
    ours = ContrastiveLoss(pos_m, neg_m, distance=distance)
    theirs = pml_losses.ContrastiveLoss(pml_pos, pml_neg, distance=RAW_DISTANCES[distance]())
    loss = ours(emb, labels)
    assert loss > 0
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_contrastive_mined_matches_pml(batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=22)
    mined = MultiSimilarityMiner(0.3)(emb, labels)
    ours, theirs = ContrastiveLoss(0.2, 0.9), pml_losses.ContrastiveLoss(0.2, 0.9)
    assert_same(normalised(ours, labels, mined), lambda e: theirs(e, labels, pml_pairs(mined)), emb)
    assert not torch.allclose(ours(F.normalize(emb, dim=1), labels), ours(emb, labels, mined))


# ---------------------------------------------------------------------------- binomial deviance


def reference_binomial(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pairs: list[tuple[int, int]],
    alpha: float,
    beta: float,
    cost: float,
) -> torch.Tensor:
    """Yi et al. 2014 written out: sum_ij W_ij log(1 + exp(-alpha (s_ij - beta) M_ij)),
    M = 1 / -C and W = 1/#positive / 1/#negative pairs, looping over the given pairs."""
    labs = labels.tolist()
    n_pos = sum(labs[i] == labs[j] for i, j in pairs)
    n_neg = len(pairs) - n_pos
    total = emb.sum() * 0.0
    for i, j in pairs:
        s = emb[i] @ emb[j] / (emb[i].norm() * emb[j].norm())
        positive = labs[i] == labs[j]
        m, w = (1.0, 1.0 / n_pos) if positive else (-cost, 1.0 / n_neg)
        total = total + w * torch.log(1.0 + torch.exp(-alpha * (s - beta) * m))
    return total


BINOMIAL_PARAMS = [
    {"alpha": 2.0, "beta": 0.5, "neg_cost": 25.0},
    {"alpha": 1.0, "beta": 0.3, "neg_cost": 10.0},
]


@pytest.mark.parametrize("params", BINOMIAL_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_binomial_deviance_all_pairs_matches_loop(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=23)
    size = len(labels)
    pairs = [(i, j) for i in range(size) for j in range(size) if i != j]
    loss = BinomialDevianceLoss(**params)
    cost = params["neg_cost"]
    assert_same(
        lambda e: loss(e, labels),
        lambda e: reference_binomial(e, labels, pairs, params["alpha"], params["beta"], cost),
        emb,
    )


def test_binomial_deviance_defaults_are_the_papers() -> None:
    loss = create("binomial_deviance")
    assert (loss.alpha, loss.beta, loss.neg_cost) == (2.0, 0.5, 25.0)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_binomial_deviance_mined_matches_loop(batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=24)
    mined = MultiSimilarityMiner(0.2)(emb, labels)
    pairs = list(zip(mined.anchor_pos.tolist(), mined.positive.tolist(), strict=True))
    pairs += zip(mined.anchor_neg.tolist(), mined.negative.tolist(), strict=True)
    assert 0 < len(pairs) < len(labels) * (len(labels) - 1)
    loss = BinomialDevianceLoss()
    assert_same(
        lambda e: loss(e, labels, mined),
        lambda e: reference_binomial(e, labels, pairs, 2.0, 0.5, 25.0),
        emb,
    )


# --------------------------------------------------------------------------------------- circle

CIRCLE_PARAMS = [{"m": 0.4, "gamma": 80.0}, {"m": 0.25, "gamma": 256.0}]


@pytest.mark.parametrize("params", CIRCLE_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_circle_all_pairs_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=25)
    ours, theirs = CircleLoss(**params), pml_losses.CircleLoss(**params)
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("params", CIRCLE_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_circle_mined_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=26)
    mined = MultiSimilarityMiner(0.1)(emb, labels)
    ours, theirs = CircleLoss(**params), pml_losses.CircleLoss(**params)
    assert_same(
        lambda e: ours(e, labels, mined), lambda e: theirs(e, labels, pml_pairs(mined)), emb
    )
    assert not torch.allclose(ours(emb, labels), ours(emb, labels, mined))


def test_circle_single_pair_each_is_not_zeroed_unlike_pml() -> None:
    """One positive and one negative pair: PML returns 0 (its <= 1 shortcut), we the loss."""
    emb, labels = make_batch(BATCHES["balanced"], seed=27)
    i = 0
    j = int(torch.nonzero((labels == labels[i]) & (torch.arange(len(labels)) != i))[0])
    k = int(torch.nonzero(labels != labels[i])[0])
    one = torch.tensor([i])
    mined = Pairs(one, torch.tensor([j]), one, torch.tensor([k]))
    s = F.normalize(emb.detach(), dim=1) @ F.normalize(emb.detach(), dim=1).T
    m, gamma = 0.4, 80.0
    logit_p = -gamma * max(0.0, 1 + m - s[i, j]) * (s[i, j] - (1 - m))
    logit_n = gamma * max(0.0, s[i, k] + m) * (s[i, k] - m)
    expected = math.log1p(math.exp(logit_p + logit_n))
    assert CircleLoss()(emb, labels, mined).item() == pytest.approx(expected, rel=1e-9)
    assert pml_losses.CircleLoss()(emb, labels, pml_pairs(mined)).item() == 0.0


# --------------------------------------------------------------------------------------- margin

MARGIN_PARAMS = [{}, {"margin": 0.1, "beta": 0.9}]


@pytest.mark.parametrize("params", MARGIN_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_margin_all_triplets_matches_pml_default(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=28)
    ours, theirs = MarginLoss(**params), pml_losses.MarginLoss(**params)
    assert_same(normalised(ours, labels), normalised(theirs, labels), emb)


# (our margin, beta), (PML's): a PML CosineSimilarity boundary beta is 1 - beta for us
MARGIN_SCALES = {
    "euclidean": ((1.0, 5.0), (1.0, 5.0)),
    "squared_euclidean": ((5.0, 25.0), (5.0, 25.0)),
    "cosine": ((0.2, 0.6), (0.2, 0.4)),
}


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_margin_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=29)
    (margin, beta), (pml_margin, pml_beta) = MARGIN_SCALES[distance]
    ours = MarginLoss(margin=margin, beta=beta, distance=distance)
    theirs = pml_losses.MarginLoss(
        margin=pml_margin, beta=pml_beta, distance=RAW_DISTANCES[distance]()
    )
    assert ours(emb, labels) > 0
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("params", MARGIN_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_margin_mined_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=30)
    mined = BatchHardMiner()(F.normalize(emb, dim=1), labels)
    ours, theirs = MarginLoss(**params), pml_losses.MarginLoss(**params)
    assert_same(
        normalised(ours, labels, mined), normalised(theirs, labels, pml_triplets(mined)), emb
    )
    assert not torch.allclose(ours(F.normalize(emb, dim=1), labels), ours(emb, labels, mined))


def class_indices(labels: torch.Tensor) -> torch.Tensor:
    """Labels mapped to 0..C-1 (per-class beta indexes by label)."""
    return torch.unique(labels, return_inverse=True)[1]


def beta_grads(
    ours: MarginLoss,
    theirs: pml_losses.MarginLoss,
    emb: torch.Tensor,
    labels: torch.Tensor,
    mined: Triplets | None,
    sign: float,
    normalise: bool = False,
) -> None:
    """Value, embedding gradient and beta gradient (times `sign`) agree with PML's; with
    `normalise` ours sees L2-normalised embeddings, as PML's default distance does."""
    their_mined = None if mined is None else pml_triplets(mined)
    prep = (lambda e: F.normalize(e, dim=1)) if normalise else (lambda e: e)
    assert_same(
        lambda e: ours(prep(e), labels, mined), lambda e: theirs(e, labels, their_mined), emb
    )
    ours(prep(emb.detach()), labels, mined).backward()
    theirs(emb.detach(), labels, their_mined).backward()
    assert isinstance(ours.beta, torch.nn.Parameter) and ours.beta.grad is not None
    assert bool(ours.beta.grad.abs().sum() > 0)
    torch.testing.assert_close(ours.beta.grad, sign * theirs.beta.grad, **TOL)


@pytest.mark.parametrize("mine", [False, True], ids=["all", "mined"])
@pytest.mark.parametrize("per_class", [False, True], ids=["global", "per_class"])
@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
def test_margin_learned_beta_matches_pml(distance: str, per_class: bool, mine: bool) -> None:
    emb, labels = make_batch(BATCHES["uneven"], seed=31)
    labels = class_indices(labels)
    num_classes = int(labels.max()) + 3 if per_class else None
    (margin, beta), (pml_margin, pml_beta) = MARGIN_SCALES[distance]
    # the regulariser nu * beta is in the distance's own units: with a similarity PML adds
    # nu * (its beta) = nu * (1 - our beta), not comparable, so cosine checks nu = 0 only
    nu = 0.0 if distance == "cosine" else 0.1
    params = {"nu": nu, "learn_beta": True, "num_classes": num_classes}
    ours = MarginLoss(margin=margin, beta=beta, distance=distance, **params)
    theirs = pml_losses.MarginLoss(
        margin=pml_margin, beta=pml_beta, distance=RAW_DISTANCES[distance](), **params
    )
    mined = BatchHardMiner(distance)(emb, labels) if mine else None
    sign = -1.0 if distance == "cosine" else 1.0  # our beta is 1 - PML's similarity beta
    beta_grads(ours, theirs, emb, labels, mined, sign)


def test_margin_learned_beta_default_distance_matches_pml() -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=32)
    labels = class_indices(labels)
    params = {"nu": 0.3, "learn_beta": True, "num_classes": 6}
    ours, theirs = MarginLoss(**params), pml_losses.MarginLoss(**params)
    beta_grads(ours, theirs, emb, labels, None, 1.0, normalise=True)


def test_margin_beta_is_a_parameter_only_when_learned() -> None:
    assert not isinstance(MarginLoss().beta, torch.nn.Parameter)
    assert "beta" in dict(MarginLoss().named_buffers())
    learned = MarginLoss(learn_beta=True, num_classes=5)
    assert isinstance(learned.beta, torch.nn.Parameter) and learned.beta.shape == (5,)
    assert [name for name, _ in learned.named_parameters()] == ["beta"]


def test_margin_random_triplets_per_anchor() -> None:
    emb, labels = make_batch(BATCHES["uneven"], seed=33)
    torch.manual_seed(0)
    triplets = sample_triplets(labels, 5)
    a, p, n = triplets.anchor, triplets.positive, triplets.negative
    assert len(triplets) == 5 * len(labels)  # every anchor of "uneven" has both kinds
    assert bool((labels[a] == labels[p]).all() and (a != p).all())
    assert bool((labels[a] != labels[n]).all())
    loss = MarginLoss(triplets_per_anchor=5)
    torch.manual_seed(0)
    sampled = loss(emb, labels)
    torch.testing.assert_close(sampled, MarginLoss()(emb, labels, triplets), **TOL)
    assert not torch.allclose(sampled, MarginLoss()(emb, labels))


def test_margin_all_triplets_keeps_quadratic_memory() -> None:
    """B = 512, all triplets: autograd saves O(B^2) numbers, not O(B^3)."""
    batch = 512
    gen = torch.Generator().manual_seed(34)
    emb = torch.randn(batch, 8, generator=gen).requires_grad_(True)
    labels = torch.randint(0, 16, (batch,), generator=gen)
    assert_quadratic_memory(lambda: MarginLoss(beta=4.0)(emb, labels), emb)


def test_margin_bad_parameters_and_labels() -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=35)
    with pytest.raises(ValueError, match="class indices"):
        MarginLoss(num_classes=100)(emb, labels)  # labels are -20, -13, ...
    with pytest.raises(ValueError, match="triplets_per_anchor"):
        MarginLoss(triplets_per_anchor="some")
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(num_classes=0)


def test_margin_cosine_similarity_translation() -> None:
    """Sanity of the documented translation: PML CosineSimilarity with beta b = ours 1 - b."""
    emb, labels = make_batch(BATCHES["balanced"], seed=36)
    theirs = pml_losses.MarginLoss(beta=0.3, distance=pml_distances.CosineSimilarity())
    ours = MarginLoss(beta=0.7, distance="cosine")
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)
