"""N-pair, lifted structure, generalised lifted structure, NCA and ranked list losses against
pytorch-metric-learning 2.9.0 (float64) and loop-by-loop paper formulas."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import regularizers as pml_regularizers

from deepembed.losses.base import MetricLoss
from deepembed.losses.listwise import (
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    NCALoss,
    NPairLoss,
    RankedListLoss,
)
from deepembed.miners import Pairs, Triplets
from deepembed.miners.base import label_masks
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
    value_and_grad,
)

# PML warns about any temperature above 5, the paper's Tn = 10 included
pytestmark = pytest.mark.filterwarnings("ignore:Values of Tp or Tn are too high")

ALL_BATCHES = {**BATCHES, **DEGENERATE}
EMPTY = torch.empty(0, dtype=torch.long)


def normalised(loss: Callable[..., torch.Tensor], *args: object) -> Callable:
    """loss on L2-normalised embeddings: PML's default distances normalise, ours do not."""
    return lambda e: loss(F.normalize(e, dim=1), *args)


def ms_pairs(emb: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> Pairs:
    """Multi-similarity pairs, away from PML's "every list has <= 1 entry gives 0" corner."""
    mined = MultiSimilarityMiner(epsilon)(emb, labels)
    assert min(len(mined.positive), len(mined.negative)) > 1
    return mined


class CosineDistance(pml_distances.BaseDistance):
    """PML distance 1 - cos (not inverted), for PML losses that read raw distance values."""

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return 1.0 - query_emb @ ref_emb.T

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return 1.0 - (query_emb * ref_emb).sum(1)


def reference_distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The distance of two vectors, written out."""
    if kind == "cosine":
        return 1.0 - (x * y).sum() / (x.norm() * y.norm())
    sq = ((x - y) ** 2).sum()
    return sq if kind == "squared_euclidean" else sq.sqrt()


# ------------------------------------------------------------------------------------- N-pair


@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_npair_default_matches_pml(batch: str) -> None:
    """Default cosine = PML's default DotProductSimilarity on normalised embeddings."""
    emb, labels = make_batch(ALL_BATCHES[batch], seed=20)
    ours, theirs = NPairLoss(), pml_losses.NPairsLoss()
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


NPAIR_PML_DISTANCES = {
    **RAW_DISTANCES,
    "dot": lambda: pml_distances.DotProductSimilarity(normalize_embeddings=False),
}


@pytest.mark.parametrize("distance", list(NPAIR_PML_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_npair_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=21)
    emb = emb.detach() * 0.3  # raw logits of a moderate size
    ours = NPairLoss(distance=distance)
    theirs = pml_losses.NPairsLoss(distance=NPAIR_PML_DISTANCES[distance]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("weight", [0.002, 0.5])
@pytest.mark.parametrize("batch", [*BATCHES, "one_class"])
def test_npair_l2_regulariser_matches_pml(batch: str, weight: float) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=22)
    ours = NPairLoss(distance="dot", l2_reg_weight=weight)
    theirs = pml_losses.NPairsLoss(
        distance=pml_distances.DotProductSimilarity(normalize_embeddings=False),
        embedding_regularizer=pml_regularizers.LpRegularizer(power=2),
        embedding_reg_weight=weight,
    )
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_npair_mined_matches_pml(batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=23)
    ours, theirs = NPairLoss(), pml_losses.NPairsLoss()
    pairs = ms_pairs(emb, labels)
    assert_same(
        lambda e: ours(e, labels, pairs), lambda e: theirs(e, labels, pml_pairs(pairs)), emb
    )
    # the same pairs in another order: a different pair per label is first
    perm = torch.randperm(len(pairs.positive), generator=torch.Generator().manual_seed(0))
    shuffled = Pairs(pairs.anchor_pos[perm], pairs.positive[perm], EMPTY, EMPTY)
    assert_same(
        lambda e: ours(e, labels, shuffled), lambda e: theirs(e, labels, pml_pairs(shuffled)), emb
    )
    # mined triplets: their (anchor, positive) pairs
    triplets = BatchHardMiner()(emb, labels)
    assert_same(
        lambda e: ours(e, labels, triplets),
        lambda e: theirs(e, labels, pml_triplets(triplets)),
        emb,
    )


def test_npair_uses_each_class_first_two_images() -> None:
    """Pair choice: anchor = a class's first image in batch order, positive = its second;
    the rest of the class gets no gradient, and repeated calls give the same loss."""
    emb, labels = make_batch(BATCHES["uneven"], seed=24)
    loss = NPairLoss()
    value, grad = value_and_grad(lambda e: loss(e, labels), emb)
    firsts, seconds = [], []
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        if len(members) >= 2:
            firsts.append(int(members[0]))
            seconds.append(int(members[1]))
    a, p = F.normalize(emb.detach()[firsts], dim=1), F.normalize(emb.detach()[seconds], dim=1)
    logits = a @ p.T
    expected = sum(torch.logsumexp(logits[k], 0) - logits[k, k] for k in range(len(firsts))) / len(
        firsts
    )
    torch.testing.assert_close(value, expected)
    used = torch.zeros(len(labels), dtype=torch.bool)
    used[firsts + seconds] = True
    assert bool((grad[~used] == 0).all()) and bool((grad[used].abs().sum(1) > 0).all())
    torch.testing.assert_close(loss(emb, labels), loss(emb, labels), rtol=0, atol=0)


def test_npair_single_pair_is_zero_with_zero_gradient() -> None:
    emb, labels = make_batch((3, 1, 1, 1), seed=25)
    value, grad = value_and_grad(lambda e: NPairLoss()(e, labels), emb)
    assert value == 0 and bool((grad == 0).all())


# --------------------------------------------------------------------------- lifted structure


def paper_lifted_structure(
    emb: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    kind: str,
    pos_margin: float = 0.0,
    mined: Pairs | None = None,
) -> torch.Tensor:
    """Song et al. 2016, pair by pair: J_ij = log(sum_{N(i)} exp(alpha - D_ik) + sum_{N(j)}
    exp(alpha - D_jl)) + D_ij - pos_margin; loss = 1/(2|P|) sum max(0, J_ij)^2.
    Without mining P holds unordered pairs; with mining, the mined (ordered) ones."""
    labs = labels.tolist()
    batch = len(labs)
    if mined is None:
        pairs = [(i, j) for i in range(batch) for j in range(i + 1, batch) if labs[i] == labs[j]]
        negatives = {i: [k for k in range(batch) if labs[k] != labs[i]] for i in range(batch)}
    else:
        pairs = list(zip(mined.anchor_pos.tolist(), mined.positive.tolist(), strict=True))
        negatives = {i: [] for i in range(batch)}
        for i, k in zip(mined.anchor_neg.tolist(), mined.negative.tolist(), strict=True):
            negatives[i].append(k)
    if not pairs:
        return emb.sum() * 0.0
    total = emb.sum() * 0.0
    for i, j in pairs:
        terms = [alpha - reference_distance(emb[i], emb[k], kind) for k in negatives[i]]
        terms += [alpha - reference_distance(emb[j], emb[k], kind) for k in negatives[j]]
        if not terms:  # log 0 = -inf: the pair adds nothing
            continue
        log_sum = torch.log(sum(torch.exp(t) for t in terms))
        j_ij = log_sum + reference_distance(emb[i], emb[j], kind) - pos_margin
        total = total + torch.relu(j_ij) ** 2
    return total / (2 * len(pairs))


LIFTED_PARAMS = [{"neg_margin": 1.0, "pos_margin": 0.0}, {"neg_margin": 0.6, "pos_margin": 0.2}]


@pytest.mark.parametrize("params", LIFTED_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_lifted_structure_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=30)
    ours = LiftedStructureLoss(**params)
    theirs = pml_losses.LiftedStructureLoss(**params)
    assert_same(normalised(ours, labels), normalised(theirs, labels), emb)


def translated(params: dict[str, float], distance: str) -> dict[str, float]:
    """PML CosineSimilarity margins are on s; ours on d = 1 - s: m_ours = 1 - m_pml."""
    if distance != "cosine":
        return params
    return {k: 1.0 - v for k, v in params.items()}


# margins on the scale of each raw distance (PML's parameters; cosine's are similarities)
RAW_MARGINS = {
    "euclidean": {"neg_margin": 6.0, "pos_margin": 1.0},
    "squared_euclidean": {"neg_margin": 40.0, "pos_margin": 5.0},
    "cosine": {"neg_margin": 0.2, "pos_margin": 0.8},
}


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_lifted_structure_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=31)
    pml_params = RAW_MARGINS[distance]
    ours = LiftedStructureLoss(**translated(pml_params, distance), distance=distance)
    theirs = pml_losses.LiftedStructureLoss(**pml_params, distance=RAW_DISTANCES[distance]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_lifted_structure_matches_paper_loops(batch: str, distance: str) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=32)
    params = translated(RAW_MARGINS[distance], distance)
    ours = LiftedStructureLoss(**params, distance=distance)
    assert_same(
        lambda e: ours(e, labels),
        lambda e: paper_lifted_structure(
            e, labels, params["neg_margin"], distance, params["pos_margin"]
        ),
        emb,
    )


@pytest.mark.parametrize("params", LIFTED_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_lifted_structure_mined_matches_pml_and_paper(batch: str, params: dict) -> None:
    """Multi-similarity mining keeps a negative for every anchor with a mined positive,
    so PML and the paper agree here."""
    emb, labels = make_batch(BATCHES[batch], seed=33)
    pairs = ms_pairs(F.normalize(emb.detach(), dim=1), labels)
    ours = LiftedStructureLoss(**params)
    theirs = pml_losses.LiftedStructureLoss(**params)
    assert_same(normalised(ours, labels, pairs), normalised(theirs, labels, pml_pairs(pairs)), emb)
    assert_same(
        normalised(ours, labels, pairs),
        normalised(
            paper_lifted_structure,
            labels,
            params["neg_margin"],
            "euclidean",
            params["pos_margin"],
            pairs,
        ),
        emb,
    )


def test_lifted_structure_pair_without_negatives_follows_paper_not_pml() -> None:
    """Mined positive pairs whose ends have no mined negative: the paper's log 0 = -inf makes
    them add 0; PML takes that log as 0, adding max(0, D_ij - pos_margin)^2 / 2 each."""
    emb, labels = make_batch(BATCHES["balanced"], seed=34)
    emb = F.normalize(emb.detach(), dim=1)
    pos = labels[:, None] == labels[None, :]
    pos.fill_diagonal_(False)
    neg = labels[:, None] != labels[None, :]
    neg[labels != labels[0]] = False  # only one class's anchors get negatives
    pairs = Pairs.from_masks(pos, neg)
    ours = LiftedStructureLoss(pos_margin=0.1)
    theirs = pml_losses.LiftedStructureLoss(pos_margin=0.1)
    assert_same(
        lambda e: ours(e, labels, pairs),
        lambda e: paper_lifted_structure(e, labels, 1.0, "euclidean", 0.1, pairs),
        emb,
    )
    a, p = pairs.anchor_pos, pairs.positive
    orphan = labels[a] != labels[0]  # neither end has a mined negative
    assert 0 < int(orphan.sum()) < len(a)
    dist = (emb[a] - emb[p]).norm(dim=1)
    extra = (torch.relu(dist[orphan] - 0.1) ** 2 / 2).sum() / len(a)
    assert extra > 1e-3
    torch.testing.assert_close(
        theirs(emb, labels, pml_pairs(pairs)), ours(emb, labels, pairs) + extra
    )


# --------------------------------------------------------------- generalised lifted structure


@pytest.mark.parametrize("params", LIFTED_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_generalized_lifted_structure_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=40)
    ours = GeneralizedLiftedStructureLoss(**params)
    theirs = pml_losses.GeneralizedLiftedStructureLoss(**params)
    assert_same(normalised(ours, labels), normalised(theirs, labels), emb)


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_generalized_lifted_structure_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=41)
    pml_params = RAW_MARGINS[distance]
    ours = GeneralizedLiftedStructureLoss(**translated(pml_params, distance), distance=distance)
    theirs = pml_losses.GeneralizedLiftedStructureLoss(
        **pml_params, distance=RAW_DISTANCES[distance]()
    )
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("params", LIFTED_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_generalized_lifted_structure_mined_matches_pml(batch: str, params: dict) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=42)
    pairs = ms_pairs(F.normalize(emb.detach(), dim=1), labels)
    ours = GeneralizedLiftedStructureLoss(**params)
    theirs = pml_losses.GeneralizedLiftedStructureLoss(**params)
    assert_same(normalised(ours, labels, pairs), normalised(theirs, labels, pml_pairs(pairs)), emb)
    assert not torch.allclose(ours(emb, labels), ours(emb, labels, pairs))


# ---------------------------------------------------------------------------------------- NCA


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("batch", [*BATCHES, "one_class"])
def test_nca_matches_pml(batch: str, scale: float) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=50)
    ours = NCALoss(softmax_scale=scale)
    theirs = pml_losses.NCALoss(softmax_scale=scale)
    assert_same(normalised(ours, labels), normalised(theirs, labels), emb)


def test_nca_no_positive_anywhere_is_zero_not_pml_nan() -> None:
    emb, labels = make_batch(DEGENERATE["all_distinct"], seed=51)
    assert torch.isnan(pml_losses.NCALoss()(emb, labels))
    value, grad = value_and_grad(lambda e: NCALoss()(e, labels), emb)
    assert value == 0 and bool((grad == 0).all())


def test_nca_underflowed_anchors_are_left_out_like_pml() -> None:
    """Anchors 0-3 have their positive at squared distance 800 and a negative at 0.01:
    p = e^-800 is 0 in float64, and PML leaves those anchors out; anchors 4-5 remain."""
    emb = torch.tensor(
        [[0.0, 0.0], [20.0, 20.0], [0.1, 0.0], [20.1, 20.0], [-3.0, 0.0], [-3.0, 1.0]],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = NCALoss()
    theirs = pml_losses.NCALoss(distance=RAW_DISTANCES["squared_euclidean"]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)
    value, grad = value_and_grad(lambda e: ours(e, labels), emb)
    assert value > 0 and bool((grad[[1, 3]] == 0).all()) and bool(grad[4:].abs().sum() > 0)
    # nothing left at all: 0 (PML: NaN)
    assert torch.isnan(theirs(emb[:4], labels[:4]))
    value, grad = value_and_grad(lambda e: ours(e, labels[:4]), emb[:4])
    assert value == 0 and bool((grad == 0).all())


@pytest.mark.parametrize("distance", list(RAW_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_nca_per_distance_matches_pml(batch: str, distance: str) -> None:
    """Raw embeddings; cosine needs no translation (softmax ignores the constant in 1 - s)."""
    emb, labels = make_batch(BATCHES[batch], seed=52)
    scale = {"euclidean": 1.0, "squared_euclidean": 0.1, "cosine": 5.0}[distance]
    ours = NCALoss(softmax_scale=scale, distance=distance)
    theirs = pml_losses.NCALoss(softmax_scale=scale, distance=RAW_DISTANCES[distance]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_nca_mined_weights_match_pml(batch: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=53)
    ours, theirs = NCALoss(), pml_losses.NCALoss()
    pairs = ms_pairs(F.normalize(emb.detach(), dim=1), labels)
    triplets = BatchHardMiner()(F.normalize(emb.detach(), dim=1), labels)
    assert_same(normalised(ours, labels, pairs), normalised(theirs, labels, pml_pairs(pairs)), emb)
    assert_same(
        normalised(ours, labels, triplets),
        normalised(theirs, labels, pml_triplets(triplets)),
        emb,
    )
    # one anchor mined: only its row has weight, the mean still counts every anchor
    one = Triplets(triplets.anchor[:1], triplets.positive[:1], triplets.negative[:1])
    assert_same(normalised(ours, labels, one), normalised(theirs, labels, pml_triplets(one)), emb)
    assert not torch.allclose(ours(emb, labels), ours(emb, labels, one))


def test_nca_empty_mined_is_zero_not_pml_unmined() -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=54)
    empty = Pairs(EMPTY, EMPTY, EMPTY, EMPTY)
    assert_same(
        lambda e: pml_losses.NCALoss()(e, labels, pml_pairs(empty)),
        lambda e: pml_losses.NCALoss()(e, labels),
        emb,
    )
    value, grad = value_and_grad(lambda e: NCALoss()(e, labels, empty), emb)
    assert value == 0 and bool((grad == 0).all())


# -------------------------------------------------------------------------------- ranked list

RLL_PARAMS = [
    {"margin": 0.4, "Tn": 10.0},
    {"margin": 0.6, "Tn": 3.0, "imbalance": 0.3, "alpha": 1.1, "Tp": 2.0},
]


@pytest.mark.parametrize("params", RLL_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
def test_ranked_list_matches_pml(batch: str, params: dict[str, float]) -> None:
    emb, labels = make_batch(ALL_BATCHES[batch], seed=60)
    ours = RankedListLoss(**params)
    theirs = pml_losses.RankedListLoss(**params)
    assert_same(normalised(ours, labels), normalised(theirs, labels), emb)


def test_ranked_list_defaults_are_the_papers() -> None:
    loss = RankedListLoss()
    assert (loss.margin, loss.Tn, loss.imbalance, loss.Tp) == (0.4, 10.0, 0.5, 0.0)
    assert loss.alpha == pytest.approx(1.2)  # PML's 1 + margin / 2


RLL_PML_DISTANCES = {
    "euclidean": RAW_DISTANCES["euclidean"],
    "squared_euclidean": RAW_DISTANCES["squared_euclidean"],
    "cosine": CosineDistance,  # PML's RLL reads raw values: CosineSimilarity would be wrong
}
# (alpha, margin, Tn) on the scale of each raw distance
RLL_SCALES = {
    "euclidean": (6.0, 2.0, 1.0),
    "squared_euclidean": (40.0, 20.0, 0.1),
    "cosine": (1.2, 0.4, 10.0),
}


@pytest.mark.parametrize("distance", list(RLL_PML_DISTANCES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_ranked_list_per_distance_matches_pml(batch: str, distance: str) -> None:
    emb, labels = make_batch(BATCHES[batch], seed=61)
    alpha, margin, tn = RLL_SCALES[distance]
    params = {"alpha": alpha, "margin": margin, "Tn": tn, "Tp": tn / 2}
    ours = RankedListLoss(**params, distance=distance)
    theirs = pml_losses.RankedListLoss(**params, distance=RLL_PML_DISTANCES[distance]())
    assert_same(lambda e: ours(e, labels), lambda e: theirs(e, labels), emb)


def loop_ranked_list(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pairs: Pairs,
    margin: float,
    alpha: float,
    tn: float,
    tp: float,
    imbalance: float,
) -> torch.Tensor:
    """Ranked list loss anchor by anchor on the mined pairs (with PML's 1e-5 per column)."""
    batch = len(labels)
    pos = {i: set() for i in range(batch)}
    neg = {i: set() for i in range(batch)}
    for i, j in zip(pairs.anchor_pos.tolist(), pairs.positive.tolist(), strict=True):
        pos[i].add(j)
    for i, k in zip(pairs.anchor_neg.tolist(), pairs.negative.tolist(), strict=True):
        neg[i].add(k)
    total = emb.sum() * 0.0
    for i in range(batch):
        d = {j: reference_distance(emb[i], emb[j], "euclidean") for j in pos[i] | neg[i]}
        xp = [d[j] - (alpha - margin) for j in pos[i] if d[j] > alpha - margin]
        xn = [alpha - d[k] for k in neg[i] if d[k] < alpha]
        wp = [torch.exp(tp * x) for x in xp]
        wn = [torch.exp(tn * x) for x in xn]
        loss_p = sum(w * x for w, x in zip(wp, xp, strict=True)) / (sum(wp) + 1e-5 * batch)
        loss_n = sum(w * x for w, x in zip(wn, xn, strict=True)) / (sum(wn) + 1e-5 * batch)
        total = total + (1 - imbalance) * loss_p + imbalance * loss_n
    return total / batch


@pytest.mark.parametrize("batch", list(BATCHES))
def test_ranked_list_mined_pairs_match_loops(batch: str) -> None:
    """PML takes no mined tuples; ours restrict each anchor's lists to the mined pairs."""
    emb, labels = make_batch(BATCHES[batch], seed=62)
    loss = RankedListLoss(margin=0.6, Tn=3.0, Tp=1.0, imbalance=0.3)
    pairs = ms_pairs(F.normalize(emb.detach(), dim=1), labels, epsilon=0.3)
    assert_same(
        normalised(loss, labels, pairs),
        normalised(loop_ranked_list, labels, pairs, 0.6, 1.3, 3.0, 1.0, 0.3),
        emb,
    )
    assert not torch.allclose(loss(emb, labels), loss(emb, labels, pairs))
    # every valid pair, mined, is the unmined loss
    pos = labels[:, None] == labels[None, :]
    every = Pairs.from_masks(pos & ~torch.eye(len(labels), dtype=torch.bool), ~pos)
    torch.testing.assert_close(loss(emb, labels, every), loss(emb, labels))


def test_ranked_list_large_temperature_stays_finite_in_float32() -> None:
    """exp(T x) overflows float32 at T = 300 (PML gives inf or NaN); shifted weights do not."""
    emb, labels = make_batch(BATCHES["balanced"], seed=63)
    params = {"margin": 0.4, "Tn": 300.0, "Tp": 300.0}
    with pytest.warns(UserWarning):
        pml = pml_losses.RankedListLoss(**params)
    exact = pml(F.normalize(emb.detach(), dim=1), labels)
    low = F.normalize(emb.detach().float(), dim=1)
    assert not torch.isfinite(pml(low, labels))
    ours = RankedListLoss(**params)(low, labels)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- all of them

PAIR_ONLY = [LiftedStructureLoss, GeneralizedLiftedStructureLoss, RankedListLoss]


@pytest.mark.parametrize("cls", PAIR_ONLY)
def test_pair_losses_reject_triplets(cls: type[MetricLoss]) -> None:
    emb, labels = make_batch(BATCHES["balanced"], seed=70)
    with pytest.raises(TypeError, match="takes Pairs, got Triplets"):
        cls()(emb, labels, BatchHardMiner()(emb, labels))


@pytest.mark.parametrize(
    "cls", [NPairLoss, LiftedStructureLoss, GeneralizedLiftedStructureLoss, NCALoss, RankedListLoss]
)
def test_unknown_distance_is_a_value_error(cls: type[MetricLoss]) -> None:
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        cls(distance="manhattan")


def test_ranked_list_rejects_bad_imbalance() -> None:
    with pytest.raises(ValueError, match="imbalance"):
        RankedListLoss(imbalance=1.5)


@pytest.mark.parametrize(
    "cls", [NPairLoss, LiftedStructureLoss, GeneralizedLiftedStructureLoss, NCALoss, RankedListLoss]
)
def test_large_batch_keeps_quadratic_memory(cls: type[MetricLoss]) -> None:
    """B = 512 with 4 images per class: autograd keeps O(B^2) numbers, not O(B^3)."""
    batch = 512
    gen = torch.Generator().manual_seed(71)
    emb = torch.randn(batch, 8, generator=gen).requires_grad_(True)
    labels = torch.arange(batch // 4).repeat_interleave(4)[torch.randperm(batch, generator=gen)]
    assert_quadratic_memory(lambda: cls()(F.normalize(emb, dim=1), labels), emb)


def test_npair_first_two_per_label_equals_first_pair_of_every_positive_pair() -> None:
    # the O(B log B) choice without mining against the rule applied to all (B, B) pairs
    for seed in range(100):
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(
            -3, 8, (int(torch.randint(1, 40, (1,), generator=gen)),), generator=gen
        )
        anchors, positives = torch.nonzero(label_masks(labels)[0], as_tuple=True)
        expected = NPairLoss._one_pair_per_label(labels, anchors, positives)
        got = NPairLoss._first_two_per_label(labels)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
