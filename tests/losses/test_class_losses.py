"""Class-parameter losses (proxies / margin-softmax weights) against PML 2.9.0 in float64:
loss value, gradient w.r.t. the embeddings and w.r.t. the class tensor; plus brute-force
checks of the margin functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from torch import nn

import deepembed.losses
from deepembed.losses.hashing import is_hashing
from deepembed.losses.margin_softmax import ArcFaceLoss, SphereFaceLoss
from deepembed.miners import Pairs, Triplets
from tests.losses.oracle import BATCHES, DEGENERATE, TOL, make_batch


@dataclass(frozen=True)
class Spec:
    """Our registry name, PML's class, PML's attribute for the class tensor (and whether it
    is stored transposed, (embedding_size, rows)), and a non-default parameter set."""

    name: str
    pml: type[nn.Module]
    pml_table: str
    transposed: bool
    custom: dict[str, Any]


SPECS = {
    s.name: s
    for s in [
        Spec("proxy_nca", pml_losses.ProxyNCALoss, "proxies", False, {"softmax_scale": 5.0}),
        Spec(
            "proxy_anchor",
            pml_losses.ProxyAnchorLoss,
            "proxies",
            False,
            {"margin": 0.25, "alpha": 8.0},
        ),
        Spec(
            "soft_triple",
            pml_losses.SoftTripleLoss,
            "fc",
            True,
            {"centers_per_class": 3, "la": 8.0, "gamma": 0.3, "margin": 0.1},
        ),
        Spec(
            "normalized_softmax", pml_losses.NormalizedSoftmaxLoss, "W", True, {"temperature": 0.2}
        ),
        Spec("cosface", pml_losses.CosFaceLoss, "W", True, {"margin": 0.2, "scale": 16.0}),
        # 100 degrees: many targets have theta > pi - m, PML's fallback branch
        Spec("arcface", pml_losses.ArcFaceLoss, "W", True, {"margin": 100.0, "scale": 8.0}),
        Spec("sphereface", pml_losses.SphereFaceLoss, "W", True, {"margin": 3, "scale": 2.0}),
        Spec(
            "subcenter_arcface",
            pml_losses.SubCenterArcFaceLoss,
            "W",
            True,
            {"margin": 20.0, "scale": 16.0, "sub_centers": 2},
        ),
    ]
}
ALL_BATCHES = {**BATCHES, **DEGENERATE}


def test_every_class_loss_is_covered() -> None:
    """Every registered loss with a learned class tensor is compared with PML here (the
    hashing class losses, which PML lacks, in test_hashing_losses.py)."""
    class_losses = {
        name
        for name in deepembed.losses.names()
        if issubclass(deepembed.losses.LOSSES.get(name), deepembed.losses.ClassLoss)
        and not is_hashing(deepembed.losses.LOSSES.get(name))
    }
    assert class_losses == set(SPECS)


def build_pair(spec: Spec, num_classes: int, dim: int, params: dict[str, Any]) -> tuple:
    """Our loss and PML's, float64, PML's class tensor overwritten with ours."""
    ours = deepembed.losses.create(spec.name, num_classes=num_classes, embedding_size=dim, **params)
    theirs = spec.pml(num_classes=num_classes, embedding_size=dim, **params)
    ours, theirs = ours.double(), theirs.double()
    their_table = getattr(theirs, spec.pml_table)
    with torch.no_grad():
        their_table.copy_(ours.table.T if spec.transposed else ours.table)
    return ours, theirs, their_table


def loss_and_grads(
    loss: nn.Module, table: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss value and its gradients w.r.t. the embeddings and the class tensor."""
    emb = emb.detach().clone().requires_grad_(True)
    value = loss(emb, labels)
    grad_emb, grad_table = torch.autograd.grad(value, (emb, table))
    return value.detach(), grad_emb, grad_table


def contiguous(labels: torch.Tensor) -> torch.Tensor:
    """make_batch's non-contiguous labels as class indices 0..C-1."""
    return torch.unique(labels, return_inverse=True)[1]


@pytest.mark.parametrize("custom", [False, True], ids=["default", "custom"])
@pytest.mark.parametrize("batch", list(ALL_BATCHES))
@pytest.mark.parametrize("name", list(SPECS))
def test_matches_pml(name: str, batch: str, custom: bool) -> None:
    spec = SPECS[name]
    emb, labels = make_batch(ALL_BATCHES[batch], seed=11)
    labels = contiguous(labels)
    num_classes = int(labels.max()) + 3  # two classes absent from the batch
    torch.manual_seed(5)
    ours, theirs, their_table = build_pair(
        spec, num_classes, emb.shape[1], spec.custom if custom else {}
    )
    value, grad_emb, grad_table = loss_and_grads(ours, ours.table, emb, labels)
    exp_value, exp_grad_emb, exp_grad_table = loss_and_grads(theirs, their_table, emb, labels)
    assert value.dtype == torch.float64 and bool(torch.isfinite(value))
    torch.testing.assert_close(value, exp_value, **TOL)
    torch.testing.assert_close(grad_emb, exp_grad_emb, **TOL)
    torch.testing.assert_close(
        grad_table, exp_grad_table.T if spec.transposed else exp_grad_table, **TOL
    )
    assert bool(grad_emb.abs().sum() > 0) and bool(grad_table.abs().sum() > 0)


@pytest.mark.parametrize("name", list(SPECS))
def test_initialisation_matches_pml_for_the_same_seed(name: str) -> None:
    """Class tensors are drawn as PML draws them (same distribution, same values per seed)."""
    spec = SPECS[name]
    params = {"sub_centers": 2} if name == "subcenter_arcface" else {}
    torch.manual_seed(3)
    ours = deepembed.losses.create(name, num_classes=7, embedding_size=5, **params)
    torch.manual_seed(3)
    theirs = getattr(spec.pml(num_classes=7, embedding_size=5, **params), spec.pml_table)
    assert isinstance(ours.table, nn.Parameter)
    assert ours.table.shape[1] == 5 and ours.table.is_contiguous()
    torch.testing.assert_close(
        ours.table.detach(), (theirs.T if spec.transposed else theirs).detach()
    )


@pytest.mark.parametrize("name", list(SPECS))
def test_table_name_and_shape(name: str) -> None:
    loss = deepembed.losses.create(name, num_classes=6, embedding_size=4)
    attr = "proxies" if name.startswith(("proxy", "soft")) else "weight"
    per_class = {"soft_triple": 10, "subcenter_arcface": 3}.get(name, 1)
    assert getattr(loss, attr) is loss.table
    assert loss.table.shape == (6 * per_class, 4)


@pytest.mark.parametrize("name", list(SPECS))
def test_mined_tuples_are_rejected(name: str) -> None:
    loss = deepembed.losses.create(name, num_classes=4, embedding_size=3)
    emb, labels = torch.randn(4, 3), torch.arange(4)
    idx = torch.tensor([0])
    for mined in (Pairs(idx, idx + 1, idx, idx + 2), Triplets(idx, idx + 1, idx + 2)):
        with pytest.raises(TypeError, match="takes no mined tuples"):
            loss(emb, labels, mined)


@pytest.mark.parametrize("batch", list(DEGENERATE))
@pytest.mark.parametrize("name", list(SPECS))
def test_degenerate_batches_finite_float32(name: str, batch: str) -> None:
    """One class, or all distinct: finite loss and gradients (float32 module, float64 input
    too: the table follows the input's dtype)."""
    for dtype in (torch.float32, torch.float64):
        emb, labels = make_batch(DEGENERATE[batch], seed=2)
        emb = emb.detach().to(dtype).requires_grad_(True)
        loss = deepembed.losses.create(name, num_classes=12, embedding_size=emb.shape[1])
        value = loss(emb, contiguous(labels))
        value.backward()
        assert value.dtype == dtype and bool(torch.isfinite(value))
        assert bool(torch.isfinite(emb.grad).all()) and bool(torch.isfinite(loss.table.grad).all())


@pytest.mark.parametrize("name", ["arcface", "subcenter_arcface", "cosface", "sphereface"])
def test_embedding_on_its_class_weight_has_finite_gradient(name: str) -> None:
    """cos theta = 1 exactly: PML's acos has an infinite derivative there, ours stays finite."""
    loss = deepembed.losses.create(name, num_classes=3, embedding_size=4).double()
    emb = (loss.table.detach()[[0, 0]] * 2.0).requires_grad_(True)  # row 0 is a class-0 row
    value = loss(emb, torch.tensor([0, 0]))
    value.backward()
    assert bool(torch.isfinite(value)) and bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("margin", [28.6, 100.0, 170.0])
def test_arcface_target_logit_is_papers_with_pml_fallback(margin: float) -> None:
    """cos(theta + m) for theta <= pi - m, else cos theta - m sin m, by scalar math."""
    loss = ArcFaceLoss(num_classes=2, embedding_size=2, margin=margin)
    cos = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64)
    m = math.radians(margin)
    expected = [
        math.cos(math.acos(c) + m) if math.acos(c) <= math.pi - m else c - m * math.sin(m)
        for c in cos.tolist()
    ]
    assert any(math.acos(c) > math.pi - m for c in cos.tolist())  # both branches exercised
    # atol: sin^2 is floored at 1e-12, which moves the value by <= 1e-6 sin m at |cos| = 1
    torch.testing.assert_close(
        loss.target_logit(cos), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("margin", [1, 2, 3, 4, 5])
def test_sphereface_target_logit_is_psi(margin: int) -> None:
    """psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(theta m / pi), by scalar math;
    it is continuous and decreasing in theta (its purpose)."""
    loss = SphereFaceLoss(num_classes=2, embedding_size=2, margin=margin)
    cos = torch.linspace(-1.0, 1.0, 401, dtype=torch.float64)
    expected = []
    for c in cos.tolist():
        theta = math.acos(c)
        k = math.floor(theta * margin / math.pi)
        expected.append((-1) ** k * math.cos(margin * theta) - 2 * k)
    psi = loss.target_logit(cos)
    torch.testing.assert_close(psi, torch.tensor(expected, dtype=torch.float64))
    assert bool((psi[1:] >= psi[:-1] - 1e-9).all())  # increasing in cos = decreasing in theta


def test_soft_triple_pools_centres_by_softmax() -> None:
    """S_c = sum_k softmax(cos_ck / gamma) cos_ck, written out for one sample and class."""
    loss = deepembed.losses.create(
        "soft_triple", num_classes=3, embedding_size=5, centers_per_class=4, gamma=0.2
    ).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        sims = loss.class_cosine(x)
    for c in range(3):
        centres = loss.table.detach()[4 * c : 4 * c + 4]
        cos = [float(torch.cosine_similarity(x[0], w, dim=0)) for w in centres]
        weights = [math.exp(v / 0.2) for v in cos]
        expected = sum(w * v for w, v in zip(weights, cos, strict=True)) / sum(weights)
        assert math.isclose(float(sims[0, c]), expected, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("sphereface", {"margin": 2.5}, "integer"),
        ("sphereface", {"margin": 0}, "integer"),
        ("arcface", {"margin": 200.0}, "degrees"),
        ("subcenter_arcface", {"sub_centers": 0}, ">= 1"),
        ("soft_triple", {"centers_per_class": 0}, ">= 1"),
    ],
)
def test_bad_parameters_raise(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        deepembed.losses.create(name, num_classes=3, embedding_size=4, **params)
