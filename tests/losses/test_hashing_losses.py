"""Deep-hashing losses against loop-by-loop implementations of their papers' formulas
(python loops over items, pairs, triplets and bits; float64; value and gradient w.r.t. the
codes and the learned class weights), single- and multi-label; the hash centres, the
straight-through sign, HashNet's scale schedule, the quantization wrapper, and checks
over every registered hashing loss (SGD sanity, bad input)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

import deepembed.losses
import deepembed.miners
from deepembed.losses import LOSSES
from deepembed.losses.hashing import (
    QuantizedLoss,
    is_hashing,
    label_similarity,
    quantization_penalty,
)
from deepembed.losses.hashing_classwise import (
    hash_centers,
    sign_straight_through,
    sylvester_hadamard,
)
from deepembed.losses.hashing_pairwise import hashnet_scale
from deepembed.losses.xbm import CrossBatchMemory
from deepembed.miners import Pairs, Triplets

TOL = {"atol": 1e-9, "rtol": 1e-7}
BITS, BATCH, CLASSES = 8, 8, 5
HASHING = [n for n in LOSSES.names() if is_hashing(LOSSES.get(n))]
PAIRWISE = ["dsh", "dpsh", "hashnet", "dch"]
CLASSWISE = ["csq", "greedy_hash", "orthohash"]
MULTI_LABEL = [n for n in HASHING if getattr(LOSSES.get(n), "multi_label", False)]
Pair = tuple[int, int, bool]  # (i, j, similar)


def make_codes(seed: int, batch: int = BATCH, bits: int = BITS) -> torch.Tensor:
    """float64 relaxed codes tanh(1.5 z), z ~ N(0, 1): spread over (-1, 1), none exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    return torch.tanh(1.5 * torch.randn(batch, bits, generator=gen, dtype=torch.float64))


def make_labels(kind: str, seed: int, batch: int = BATCH) -> torch.Tensor:
    """Class ids in [0, CLASSES) with repeats, or a (batch, CLASSES) 0/1 matrix with an item
    without labels (similar to nothing) and overlapping label sets."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "single":
        return torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])[torch.randperm(batch, generator=gen)]
    labels = (torch.rand(batch, CLASSES, generator=gen) < 0.35).long()
    labels[0] = 0
    labels[1, :2] = 1  # 1, 2 and 3 share class 1
    labels[2, 1] = 1
    labels[3, 1] = 1
    return labels


def new_loss(name: str, num_classes: int = CLASSES, **params: Any) -> Any:
    """A float64 loss; class losses built for num_classes and BITS, seeded."""
    torch.manual_seed(0)
    if LOSSES.get(name).needs_classes:  # type: ignore[attr-defined]
        params = {"num_classes": num_classes, "embedding_size": BITS, **params}
    return deepembed.losses.create(name, **params).double()


def assert_same(
    ours: Callable[[torch.Tensor], torch.Tensor],
    oracle: Callable[[torch.Tensor], torch.Tensor],
    codes: torch.Tensor,
    params: Sequence[torch.Tensor] = (),
) -> None:
    """Value and gradients (w.r.t. the codes and `params`) agree; ours is float64."""
    results = []
    for fn in (ours, oracle):
        leaf = codes.detach().clone().requires_grad_(True)
        value = fn(leaf)
        results.append((value.detach(), torch.autograd.grad(value, [leaf, *params])))
    (value, grads), (expected, expected_grads) = results
    assert value.shape == () and value.dtype == torch.float64
    torch.testing.assert_close(value, expected.to(torch.float64), **TOL)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **TOL)
        assert bool(grad.abs().sum() > 0)


# ------------------------------------------------------------------- the oracles: plain loops


def similar(labels: torch.Tensor, i: int, j: int) -> bool:
    """Same class id, or at least one label in common."""
    if labels.ndim == 1:
        return int(labels[i]) == int(labels[j])
    return any(bool(labels[i, c]) and bool(labels[j, c]) for c in range(labels.shape[1]))


def all_pairs(labels: torch.Tensor) -> list[Pair]:
    n = len(labels)
    return [(i, j, similar(labels, i, j)) for i in range(n) for j in range(n) if i != j]


def dot(u: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return sum(u[i, k] * u[j, k] for k in range(u.shape[1]))  # type: ignore[return-value]


def norm(u: torch.Tensor, i: int) -> torch.Tensor:
    return torch.sqrt(dot(u, i, i))


def sign(x: torch.Tensor) -> float:
    return 1.0 if float(x.detach()) > 0 else -1.0


def mean(values: Sequence[Any]) -> Any:
    return sum(values) / len(values)


def sign_error(u: torch.Tensor, i: int) -> torch.Tensor:
    """||u_i - sign(u_i)||^2, sign a constant."""
    return sum((u[i, k] - sign(u[i, k])) ** 2 for k in range(u.shape[1]))  # type: ignore[return-value]


def dsh_oracle(u: torch.Tensor, pairs: list[Pair], margin: float, alpha: float) -> torch.Tensor:
    """Liu et al. 2016, eq. 5, one term per pair: 1/2 s D + 1/2 (1 - s) max(m - D, 0)
    + alpha (|| |b_i| - 1 ||_1 + || |b_j| - 1 ||_1)."""
    bits, terms = u.shape[1], []
    for i, j, s in pairs:
        d = sum((u[i, k] - u[j, k]) ** 2 for k in range(bits))
        reg = sum(
            torch.abs(torch.abs(u[i, k]) - 1) + torch.abs(torch.abs(u[j, k]) - 1)
            for k in range(bits)
        )
        pair = 0.5 * d if s else 0.5 * torch.clamp(margin - d, min=0.0)
        terms.append(pair + alpha * reg)
    return mean(terms)


def dpsh_oracle(u: torch.Tensor, pairs: list[Pair], eta: float) -> torch.Tensor:
    """Li et al. 2016: -(s theta - log(1 + e^theta)), theta = u_i.u_j / 2, + eta ||u - b||^2."""
    nll = []
    for i, j, s in pairs:
        theta = 0.5 * dot(u, i, j)
        nll.append(torch.log(1 + torch.exp(theta)) - (theta if s else 0.0))
    anchors = sorted({i for i, _, _ in pairs})
    return mean(nll) + eta * mean([sign_error(u, i) for i in anchors])


def pair_weights(pairs: list[Pair]) -> tuple[float, float]:
    """HashNet's / DCH's w for a similar and a dissimilar pair: |S|/|S1|, |S|/|S0|."""
    n_sim = sum(1 for *_, s in pairs if s)
    n_dis = len(pairs) - n_sim
    return len(pairs) / max(n_sim, 1), len(pairs) / max(n_dis, 1)


def hashnet_oracle(u: torch.Tensor, pairs: list[Pair], alpha: float) -> torch.Tensor:
    """Cao et al. 2017: 1/|S| sum w_ij (log(1 + exp(alpha <u_i, u_j>)) - s alpha <u_i, u_j>)."""
    w_sim, w_dis = pair_weights(pairs)
    total = 0.0
    for i, j, s in pairs:
        theta = alpha * dot(u, i, j)
        total = total + (w_sim if s else w_dis) * (
            torch.log(1 + torch.exp(theta)) - (theta if s else 0.0)
        )
    return total / len(pairs)  # type: ignore[return-value]


def dch_oracle(u: torch.Tensor, pairs: list[Pair], gamma: float, lambda_: float) -> torch.Tensor:
    """Cao et al. 2018, eqs. 6-9: w (s log(d / gamma) + log(1 + gamma / d)), d = K/2 (1 - cos),
    + lambda log(1 + d(|u|, 1) / gamma)."""
    bits = u.shape[1]
    w_sim, w_dis = pair_weights(pairs)
    total = 0.0
    for i, j, s in pairs:
        d = bits / 2 * (1 - dot(u, i, j) / (norm(u, i) * norm(u, j)))
        cross_entropy = (torch.log(d / gamma) if s else 0.0) + torch.log(1 + gamma / d)
        total = total + (w_sim if s else w_dis) * cross_entropy
    quantization = []
    for i in sorted({i for i, _, _ in pairs}):
        cos_ones = sum(torch.abs(u[i, k]) for k in range(bits)) / (norm(u, i) * math.sqrt(bits))
        quantization.append(torch.log(1 + bits / 2 * (1 - cos_ones) / gamma))
    return total / len(pairs) + lambda_ * mean(quantization)  # type: ignore[return-value]


def all_triplets(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    n = range(len(labels))
    return [
        (q, i, j)
        for q in n
        for i in n
        for j in n
        if i != q and j != q and similar(labels, q, i) and not similar(labels, q, j)
    ]


def dtsh_oracle(
    u: torch.Tensor, triplets: list[tuple[int, int, int]], alpha: float, lambda_: float
) -> torch.Tensor:
    """Wang et al. 2016: the sum over triplets of -(x - log(1 + e^x)), x = theta_qi -
    theta_qj - alpha, + lambda * the sum over their items of ||u - b||^2; divided by the
    number of triplets (a mean of each sum instead would change the paper's balance)."""
    total = 0.0
    for q, i, j in triplets:
        x = 0.5 * dot(u, q, i) - 0.5 * dot(u, q, j) - alpha
        total = total - (x - torch.log(1 + torch.exp(x)))
    items = sorted({t for triplet in triplets for t in triplet})
    for i in items:
        total = total + lambda_ * sign_error(u, i)
    return total / len(triplets)


def item_center(
    labels: torch.Tensor, i: int, centers: torch.Tensor, tie: torch.Tensor
) -> list[float]:
    """CSQ: the class's centre, or the sign of the mean of the item's classes' centres."""
    if labels.ndim == 1:
        return [float(c) for c in centers[int(labels[i])]]
    classes = [c for c in range(labels.shape[1]) if labels[i, c]]
    out = []
    for k in range(centers.shape[1]):
        avg = sum(float(centers[c, k]) for c in classes) / max(len(classes), 1)
        out.append(float(tie[k]) if avg == 0 else math.copysign(1.0, avg))
    return out


def csq_oracle(
    u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor, lam: float
) -> torch.Tensor:
    """Yuan et al. 2020: BCE((u + 1)/2, (c + 1)/2) + lambda1 log cosh(|u| - 1), per bit."""
    batch, bits = u.shape
    bce, quantization = 0.0, 0.0
    for i in range(batch):
        center = item_center(labels, i, centers, tie)
        for k in range(bits):
            p, t = (u[i, k] + 1) / 2, (center[k] + 1) / 2
            bce = bce - (t * torch.log(p) + (1 - t) * torch.log(1 - p))
            quantization = quantization + torch.log(torch.cosh(torch.abs(u[i, k]) - 1))
    return (bce + lam * quantization) / (batch * bits)  # type: ignore[return-value]


def greedy_oracle(
    h: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Su et al. 2018: CE(W sign(h), y) (sign straight-through) + alpha | |h| - 1 |^3."""
    batch, bits = h.shape
    ce, penalty = 0.0, 0.0
    for i in range(batch):
        b = [h[i, k] + (sign(h[i, k]) - h[i, k]).detach() for k in range(bits)]
        logits = [sum(weight[c, k] * b[k] for k in range(bits)) for c in range(len(weight))]
        log_z = torch.log(sum(torch.exp(logit) for logit in logits))
        ce = ce - (logits[int(labels[i])] - log_z)
        penalty = penalty + sum(torch.abs(torch.abs(h[i, k]) - 1) ** 3 for k in range(bits))
    return ce / batch + alpha * penalty / (batch * bits)  # type: ignore[return-value]


def orthohash_oracle(
    u: torch.Tensor, labels: torch.Tensor, codes: torch.Tensor, s: float, m: float, quan: float
) -> torch.Tensor:
    """Hoe et al. 2021: CE of s (cos(u, b_c) - m [c a label]), the target spread evenly over
    the labels; + quan (1 - cos(u, sign(u)))."""
    batch, bits = u.shape
    ce, quantization = 0.0, 0.0
    for i in range(batch):
        if labels.ndim == 1:
            positives = [int(labels[i])]
        else:
            positives = [c for c in range(labels.shape[1]) if labels[i, c]]
        logits = []
        for c in range(len(codes)):
            cos = sum(u[i, k] * float(codes[c, k]) for k in range(bits)) / (
                norm(u, i) * math.sqrt(bits)
            )
            logits.append(s * (cos - (m if c in positives else 0.0)))
        log_z = torch.log(sum(torch.exp(logit) for logit in logits))
        for c in positives:
            ce = ce - (logits[c] - log_z) / len(positives)
        abs_sum = sum(torch.abs(u[i, k]) for k in range(bits))
        quantization = quantization + 1 - abs_sum / (norm(u, i) * math.sqrt(bits))
    return (ce + quan * quantization) / batch  # type: ignore[return-value]


# -------------------------------------------------------- pairwise and triplet losses vs loops

CUSTOM: dict[str, dict[str, float]] = {
    "dsh": {"margin": 5.0, "alpha": 0.3},
    "dpsh": {"eta": 0.7},
    "hashnet": {"alpha": 0.4},
    "dch": {"gamma": 3.0, "lambda_": 0.6},
    "dtsh": {"alpha": 1.5, "lambda_": 0.4},
    "csq": {"lambda1": 0.5, "seed": 3},
    "greedy_hash": {"alpha": 0.7},
    "orthohash": {"s": 5.0, "m": 0.35, "quan": 0.3, "seed": 3},
}
# the paper defaults each oracle is called with; K = BITS
DEFAULTS: dict[str, dict[str, float]] = {
    "dsh": {"margin": 2.0 * BITS, "alpha": 0.01},
    "dpsh": {"eta": 0.1},
    "hashnet": {"alpha": 10.0 / BITS},
    "dch": {"gamma": 20.0, "lambda_": 0.1},
    "dtsh": {"alpha": 5.0, "lambda_": 1.0},
    "csq": {"lambda1": 1e-4},
    "greedy_hash": {"alpha": 0.1},
    "orthohash": {"s": 8.0, "m": 0.2, "quan": 0.0},
}
PAIR_ORACLES: dict[str, Callable[..., torch.Tensor]] = {
    "dsh": dsh_oracle,
    "dpsh": dpsh_oracle,
    "hashnet": hashnet_oracle,
    "dch": dch_oracle,
}


def mined_pairs(pairs: list[Pair]) -> tuple[Pairs, list[Pair]]:
    """Every third pair, as mined Pairs and as the oracle's list."""
    chosen = pairs[::3]
    pos = torch.tensor([(i, j) for i, j, s in chosen if s], dtype=torch.long)  # (P, 2)
    neg = torch.tensor([(i, j) for i, j, s in chosen if not s], dtype=torch.long)  # (N, 2)
    return Pairs(pos[:, 0], pos[:, 1], neg[:, 0], neg[:, 1]), chosen


@pytest.mark.parametrize("mined", [False, True], ids=["all_pairs", "mined"])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("params", ["default", "custom"])
@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_loss_matches_paper(name: str, params: str, kind: str, mined: bool) -> None:
    labels, codes = make_labels(kind, seed=1), make_codes(seed=2)
    pairs = all_pairs(labels)
    given = {} if params == "default" else CUSTOM[name]
    oracle_params = {**DEFAULTS[name], **given}
    loss = new_loss(name, **given)
    selection = None
    if mined:
        selection, pairs = mined_pairs(pairs)
    assert any(s for *_, s in pairs) and not all(s for *_, s in pairs)
    assert_same(
        lambda u: loss(u, labels, selection),
        lambda u: PAIR_ORACLES[name](u, pairs, **oracle_params),
        codes,
    )


@pytest.mark.parametrize(
    ("kind", "mined"),
    [
        ("single", "none"),
        ("single", "batch_all"),
        ("single", "subset"),
        ("multi", "none"),
        ("multi", "subset"),
    ],
)
@pytest.mark.parametrize("params", ["default", "custom"])
def test_dtsh_matches_paper(params: str, kind: str, mined: str) -> None:
    labels, codes = make_labels(kind, seed=3), make_codes(seed=4)
    triplets = all_triplets(labels)
    given = {} if params == "default" else CUSTOM["dtsh"]
    oracle_params = {**DEFAULTS["dtsh"], **given}
    selection: Triplets | None = None
    if mined == "batch_all":  # lazy all-valid triplets (from class ids): the same as none
        selection = deepembed.miners.create("batch_all")(codes, labels)
    elif mined == "subset":
        triplets = triplets[::5]
        a, p, n = (torch.tensor([t[k] for t in triplets]) for k in range(3))
        selection = Triplets(a, p, n)
    loss = new_loss("dtsh", **given)
    assert_same(
        lambda u: loss(u, labels, selection),
        lambda u: dtsh_oracle(u, triplets, **oracle_params),
        codes,
    )


def test_dsh_regulariser_is_abs_not_sign() -> None:
    """|| |b| - 1 ||_1, the paper's: DeepHash-pytorch's first (1 - sign(b)) had value 2 for
    each negative coordinate and no gradient at all (its issue #16)."""
    loss = deepembed.losses.create("dsh", margin=0.0, alpha=0.5)  # pair term 0: dissimilar
    codes = torch.tensor([[0.5, -0.5], [-0.9, 0.2]], dtype=torch.float64, requires_grad=True)
    value = loss(codes, torch.tensor([0, 1]))
    value.backward()
    # r = (0.5 + 0.5) + (0.1 + 0.8) = 1.9 in each of the 2 ordered pairs
    torch.testing.assert_close(value, torch.tensor(0.5 * 1.9, dtype=torch.float64))
    # d r / d u = -sign(u) inside (-1, 1), counted in both pairs of the mean
    expected = -0.5 * torch.sign(codes.detach())
    torch.testing.assert_close(codes.grad, expected)


def test_dch_identical_codes_in_a_dissimilar_pair_are_finite() -> None:
    loss = deepembed.losses.create("dch")
    codes = torch.full((4, BITS), 0.6, requires_grad=True)
    value = loss(codes, torch.tensor([0, 1, 2, 3]))
    value.backward()
    assert bool(torch.isfinite(value)) and bool(torch.isfinite(codes.grad).all())


def test_hashnet_scale_schedule() -> None:
    """(1 + gamma t)^power, t the step rounded down to a multiple of step_size."""
    assert hashnet_scale(0) == 1.0 and hashnet_scale(199) == 1.0
    assert math.isclose(hashnet_scale(200), math.sqrt(2.0))
    assert math.isclose(hashnet_scale(1099), math.sqrt(6.0))
    assert math.isclose(hashnet_scale(7, step_size=1, gamma=0.5, power=2.0), 4.5**2)
    with pytest.raises(ValueError, match="step"):
        hashnet_scale(-1)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_loss_against_a_cross_batch_memory(name: str) -> None:
    """On the first batch the memory holds the batch itself: the in-batch value (the
    self pair excluded), so the memory stands in for DeepHash-pytorch's code bank."""
    labels, codes = make_labels("single", seed=5), make_codes(seed=6).float()
    loss = deepembed.losses.create(name)
    memory = CrossBatchMemory(deepembed.losses.create(name), BITS, memory_size=32)
    torch.testing.assert_close(memory(codes, labels), loss(codes, labels))


def test_label_similarity_single_and_multi_label() -> None:
    ids = torch.tensor([3, 1, 3])
    assert label_similarity(ids).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    multi = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]).bool()
    expected = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert label_similarity(multi).int().tolist() == expected


# ------------------------------------------------------------------ class-wise losses vs loops


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("params", ["default", "custom"])
def test_csq_matches_paper(params: str, kind: str) -> None:
    labels, codes = make_labels(kind, seed=7), make_codes(seed=8)
    given = {} if params == "default" else CUSTOM["csq"]
    loss = new_loss("csq", **given)
    lam = {**DEFAULTS["csq"], **given}["lambda1"]
    assert_same(
        lambda u: loss(u, labels),
        lambda u: csq_oracle(u, labels, loss.centers, loss.tie_center, lam),
        codes,
    )


def test_csq_multi_label_centre_is_the_sign_of_the_mean() -> None:
    loss = deepembed.losses.create("csq", num_classes=3, embedding_size=4)
    loss.centers.copy_(torch.tensor([[1.0, 1, -1, 1], [1, -1, -1, 1], [-1, -1, 1, 1]]))
    labels = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]]).bool()
    tie = loss.tie_center.tolist()
    expected = [[1, -1, -1, 1], [1, tie[1], -1, 1], tie]
    assert loss.target_centers(labels).tolist() == expected


@pytest.mark.parametrize("params", ["default", "custom"])
def test_greedy_hash_matches_paper(params: str) -> None:
    labels, codes = make_labels("single", seed=9), make_codes(seed=10) * 1.3  # some |h| > 1
    given = {} if params == "default" else CUSTOM["greedy_hash"]
    loss = new_loss("greedy_hash", **given)
    alpha = {**DEFAULTS["greedy_hash"], **given}["alpha"]
    assert_same(
        lambda u: loss(u, labels),
        lambda u: greedy_oracle(u, labels, loss.weight, alpha),
        codes,
        params=[loss.weight],
    )


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("params", ["default", "custom"])
def test_orthohash_matches_paper(params: str, kind: str) -> None:
    labels, codes = make_labels(kind, seed=11), make_codes(seed=12)
    given = {} if params == "default" else CUSTOM["orthohash"]
    loss = new_loss("orthohash", **given)
    p = {**DEFAULTS["orthohash"], **given}
    assert_same(
        lambda u: loss(u, labels),
        lambda u: orthohash_oracle(u, labels, loss.codes, p["s"], p["m"], p["quan"]),
        codes,
    )


@pytest.mark.parametrize("name", ["csq", "orthohash"])
def test_class_codes_are_fixed_persistent_buffers(name: str) -> None:
    """Not learned; saved in the state dict, so a checkpoint restores them."""
    attr = "centers" if name == "csq" else "codes"
    loss = deepembed.losses.create(name, num_classes=40, embedding_size=16, seed=1)
    assert list(loss.parameters()) == []
    other = deepembed.losses.create(name, num_classes=40, embedding_size=16, seed=2)
    assert not torch.equal(getattr(loss, attr), getattr(other, attr))  # 2K < C: random
    other.load_state_dict(loss.state_dict())
    assert torch.equal(getattr(loss, attr), getattr(other, attr))


# -------------------------------------------------------- hash centres, straight-through sign


@pytest.mark.parametrize("bits", [1, 2, 8, 32, 128])
def test_sylvester_hadamard_is_orthogonal(bits: int) -> None:
    h = sylvester_hadamard(bits)
    assert set(h.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, bits * torch.eye(bits))


@pytest.mark.parametrize(("bits", "classes"), [(8, 16), (16, 10), (32, 30), (64, 100)])
def test_hadamard_centres_are_at_least_half_the_bits_apart(bits: int, classes: int) -> None:
    centers = hash_centers(classes, bits)
    assert centers.shape == (classes, bits)
    assert set(centers.unique().tolist()) == {-1.0, 1.0}
    hamming = (centers[:, None, :] != centers[None, :, :]).sum(-1)  # (C, C)
    off_diagonal = hamming[~torch.eye(classes, dtype=torch.bool)]
    assert int(off_diagonal.min()) >= bits // 2
    assert torch.equal(centers, hash_centers(classes, bits, seed=5))  # no randomness


@pytest.mark.parametrize(("bits", "classes"), [(16, 40), (48, 30)])
def test_bernoulli_centres_are_seeded(bits: int, classes: int) -> None:
    """2K < C, or K not a power of two: fair coins, the same for the same seed."""
    centers = hash_centers(classes, bits, seed=0)
    assert set(centers.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(centers, hash_centers(classes, bits, seed=0))
    assert not torch.equal(centers, hash_centers(classes, bits, seed=1))
    assert abs(float(centers.mean())) < 0.15  # balanced


def test_sign_straight_through() -> None:
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5])
    out = sign_straight_through(x)
    assert torch.equal(out, torch.sign(x.detach()))
    (grad,) = torch.autograd.grad(out, x, upstream)
    assert torch.equal(grad, upstream)  # identity backward
    codes = torch.tensor([1.0, -1.0], requires_grad=True)  # idempotent on codes
    (grad,) = torch.autograd.grad(sign_straight_through(sign_straight_through(codes)).sum(), codes)
    assert torch.equal(grad, torch.ones(2))


# ---------------------------------------------------------------------- quantization wrapper


def test_quantization_penalty_is_the_mean_squared_distance_to_the_vertices() -> None:
    codes = make_codes(seed=13)
    batch, bits = codes.shape
    expected = sum(
        (abs(float(codes[i, k])) - 1) ** 2 for i in range(batch) for k in range(bits)
    ) / (batch * bits)
    assert math.isclose(float(quantization_penalty(codes)), expected, rel_tol=1e-12)


def test_quantized_loss_ramps_its_weight() -> None:
    loss = QuantizedLoss(deepembed.losses.create("triplet"), weight=0.5, ramp_steps=10)
    assert loss.current_weight() == 0.0
    loss.advance(5)
    assert loss.current_weight() == 0.25
    loss.advance(5)
    assert loss.current_weight() == 0.5
    loss.advance(100)
    assert loss.current_weight() == 0.5
    constant = QuantizedLoss(deepembed.losses.create("triplet"), weight=0.5)
    assert constant.current_weight() == 0.5
    resumed = QuantizedLoss(deepembed.losses.create("triplet"), weight=0.5, ramp_steps=10)
    resumed.load_state_dict(loss.state_dict())  # the step is saved
    assert resumed.step == 110
    with pytest.raises(ValueError, match=">= 0"):
        QuantizedLoss(deepembed.losses.create("triplet"), weight=-1.0)


@pytest.mark.parametrize("name", ["triplet", "contrastive", "dsh", "normalized_softmax"])
def test_quantized_loss_adds_the_weighted_penalty(name: str) -> None:
    labels, codes = make_labels("single", seed=14), make_codes(seed=15)
    inner = new_loss(name, num_classes=4)
    loss = QuantizedLoss(inner, weight=0.8, ramp_steps=4)
    loss.advance(3)  # weight 0.6
    assert_same(
        lambda u: loss(u, labels),
        lambda u: inner(u, labels) + 0.6 * quantization_penalty(u),
        codes,
        params=list(inner.parameters()),
    )
    assert loss.accepts == inner.accepts and loss.needs_classes == inner.needs_classes
    assert is_hashing(loss)


# --------------------------------------------------------------------- every hashing loss


def test_the_hashing_losses_are_registered() -> None:
    assert set(HASHING) == {"dsh", "dpsh", "hashnet", "dch", "dtsh", *CLASSWISE}
    assert set(MULTI_LABEL) == set(HASHING) - {"greedy_hash"}  # GreedyHash: single-label
    assert not any(is_hashing(LOSSES.get(n)) for n in LOSSES.names() if n not in HASHING)
    assert not is_hashing(deepembed.losses.create("triplet"))


def test_each_loss_declares_its_papers_head_activation() -> None:
    """Read by the model builder: tanh, or the linear output (identity) for the methods
    that regularise unbounded outputs or binarise / normalise inside the loss."""
    identity = {"dsh", "dpsh", "dtsh", "greedy_hash", "orthohash"}
    for name in HASHING:
        expected = "identity" if name in identity else "tanh"
        assert LOSSES.get(name).hash_activation == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", HASHING)
def test_sgd_on_random_codes_lowers_the_loss(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, BITS, requires_grad=True)  # codes = tanh(logits)
    labels = torch.arange(4).repeat_interleave(4)
    loss = new_loss(name, num_classes=4).float()
    optimizer = torch.optim.SGD([logits, *loss.parameters()], lr=0.1)
    first = loss(torch.tanh(logits), labels).item()
    for _ in range(10):
        optimizer.zero_grad()
        loss(torch.tanh(logits), labels).backward()
        optimizer.step()
    assert loss(torch.tanh(logits), labels).item() < first


@pytest.mark.parametrize("name", HASHING)
def test_bad_labels_are_a_clear_value_error(name: str) -> None:
    loss = new_loss(name, num_classes=CLASSES)
    codes, labels = make_codes(seed=16), make_labels("single", seed=17)
    with pytest.raises(ValueError, match="labels"):
        loss(codes, labels[:-1])
    if name not in MULTI_LABEL:
        with pytest.raises(ValueError, match="class ids"):
            loss(codes, make_labels("multi", seed=17))
        return
    multi = make_labels("multi", seed=17)
    with pytest.raises(ValueError, match="multi-label"):
        loss(codes, multi[:, :-1] if loss.needs_classes else multi[:-1])
    with pytest.raises(ValueError, match="0 and 1"):
        loss(codes, multi * 2)


@pytest.mark.parametrize("name", MULTI_LABEL)
def test_multi_label_input_with_a_mined_type_not_taken_is_a_type_error(name: str) -> None:
    loss = new_loss(name)
    idx = torch.tensor([0, 1])
    codes, labels = make_codes(seed=18), make_labels("multi", seed=18)
    for mined in (Pairs(idx, idx + 1, idx, idx + 2), Triplets(idx, idx + 1, idx + 2)):
        if not isinstance(mined, loss.accepts):
            with pytest.raises(TypeError, match=type(mined).__name__):
                loss(codes, labels, mined)
