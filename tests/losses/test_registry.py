"""Every registered loss, alone and with every compatible miner; registry errors."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

import deepembed.losses
import deepembed.miners
from deepembed.errors import ConfigError
from deepembed.miners import Pairs, Triplets

LOSS_NAMES = deepembed.losses.names()
MINER_NAMES = deepembed.miners.names()
EMPTY = torch.empty(0, dtype=torch.long)
EMPTY_TUPLES: dict[str, Pairs | Triplets] = {
    "pairs": Pairs(EMPTY, EMPTY, EMPTY, EMPTY),
    "triplets": Triplets(EMPTY, EMPTY, EMPTY),
}


def make_batch(
    seed: int, classes: int = 4, per_class: int = 4, dim: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 random embeddings (leaf, requires grad) and shuffled labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    emb = torch.randn(len(labels), dim, generator=gen).requires_grad_(True)
    return emb, labels


NUM_CLASSES = 16  # class-parameter losses: enough rows for every label the tests use (< 16)
DIM = 8


def make_loss(name: str) -> deepembed.losses.MetricLoss:
    """A loss with its defaults; class-parameter losses get num_classes / embedding_size and
    a seeded initialisation (so two creations are the same function)."""
    needs = deepembed.losses.LOSSES.get(name).needs_classes  # type: ignore[attr-defined]
    extra = {"num_classes": NUM_CLASSES, "embedding_size": DIM} if needs else {}
    torch.manual_seed(0)
    return deepembed.losses.create(name, **extra)


CLASS_LOSSES = [n for n in LOSS_NAMES if isinstance(make_loss(n), deepembed.losses.ClassLoss)]
TUPLE_LOSSES = [n for n in LOSS_NAMES if n not in CLASS_LOSSES]
# class losses with a learned class tensor (the hashing losses csq and orthohash have fixed
# class codes, a buffer: tests/losses/test_hashing_losses.py)
LEARNED_CLASS_LOSSES = [n for n in CLASS_LOSSES if list(make_loss(n).parameters())]


def accepts(loss_name: str, mined: Pairs | Triplets) -> bool:
    """Whether a loss takes this kind of mining result (it raises TypeError otherwise)."""
    emb, labels = make_batch(seed=0)
    try:
        make_loss(loss_name)(emb, labels, mined)
    except TypeError:
        return False
    return True


def compatible_pairs() -> list[tuple[str, str]]:
    """(loss, miner) names where the loss takes the type of result the miner returns."""
    emb, labels = make_batch(seed=0)
    out = []
    for miner_name in MINER_NAMES:
        mined = deepembed.miners.create(miner_name)(emb, labels)
        out += [(loss, miner_name) for loss in LOSS_NAMES if accepts(loss, mined)]
    return out


COMPATIBLE = compatible_pairs()
ACCEPTED = [
    (loss, kind)
    for loss in LOSS_NAMES
    for kind in EMPTY_TUPLES
    if accepts(loss, EMPTY_TUPLES[kind])
]


def loss_and_grad(
    name: str,
    emb: torch.Tensor,
    labels: torch.Tensor,
    miner: str | None = None,
    mined: Pairs | Triplets | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (optionally on a miner's output) and its gradient w.r.t. the leaf `emb`."""
    if miner is not None:
        mined = deepembed.miners.create(miner)(emb, labels)
    loss = make_loss(name)(emb, labels, mined)
    (grad,) = torch.autograd.grad(loss, emb)
    return loss.detach(), grad


def assert_finite(loss: torch.Tensor, grad: torch.Tensor) -> None:
    assert loss.shape == () and bool(torch.isfinite(loss))
    assert bool(torch.isfinite(grad).all())


def test_registries_are_not_empty() -> None:
    assert {"multi_similarity", "triplet"} <= set(LOSS_NAMES)
    assert {"multi_similarity", "batch_hard"} <= set(MINER_NAMES)
    # every miner is usable by at least one loss, every loss by at least one kind of tuple
    assert {m for _, m in COMPATIBLE} == set(MINER_NAMES)
    assert {loss for loss, _ in ACCEPTED} == set(TUPLE_LOSSES)


# ------------------------------------------------------------------------ every loss, alone


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_scalar_finite_with_gradient(name: str) -> None:
    emb, labels = make_batch(seed=1)
    loss, grad = loss_and_grad(name, emb, labels)
    assert_finite(loss, grad)
    assert loss.dtype == torch.float32
    assert loss > 0 and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_low_precision_input_is_upcast(name: str, dtype: torch.dtype) -> None:
    emb, labels = make_batch(seed=2)
    low = emb.detach().to(dtype).requires_grad_(True)
    loss, grad = loss_and_grad(name, low, labels)
    assert_finite(loss, grad)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # the same numbers in float32 give the same loss: the math itself ran in float32
    ref, _ = loss_and_grad(name, low.detach().float().requires_grad_(True), labels)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_identical_embeddings_no_nan(name: str, dtype: torch.dtype) -> None:
    """All rows equal: zero distances (the euclidean sqrt at 0) must not give NaN."""
    _, labels = make_batch(seed=3)
    emb = torch.full((len(labels), 8), 0.7, dtype=dtype).requires_grad_(True)
    assert_finite(*loss_and_grad(name, emb, labels))


@pytest.mark.parametrize("labels_kind", ["one_class", "all_distinct"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_degenerate_labels_finite(name: str, labels_kind: str) -> None:
    """No negatives or no positives at all: finite loss and gradient, backward works."""
    emb, labels = make_batch(seed=4)
    labels = torch.zeros_like(labels) if labels_kind == "one_class" else torch.arange(len(labels))
    assert_finite(*loss_and_grad(name, emb, labels))


@pytest.mark.parametrize(("name", "kind"), ACCEPTED)
def test_loss_on_empty_tuples_is_zero(name: str, kind: str) -> None:
    emb, labels = make_batch(seed=5)
    loss, grad = loss_and_grad(name, emb, labels, mined=EMPTY_TUPLES[kind])
    assert loss == 0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_loss_ignores_label_values(name: str) -> None:
    """Only label equality matters: huge negative/positive ids give the same loss."""
    emb, labels = make_batch(seed=6)
    ids = torch.tensor([-(2**62), -7, 2**40, 2**62 + 3])
    renamed = ids[labels]
    loss, grad = loss_and_grad(name, emb, renamed)
    ref, ref_grad = loss_and_grad(name, emb, labels)
    assert loss == ref and torch.equal(grad, ref_grad)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_loss_rejects_labels_out_of_range(name: str) -> None:
    """Class-parameter losses index rows by label: out-of-range labels are a clear error."""
    emb, labels = make_batch(seed=6)
    loss = make_loss(name)
    for bad in (labels - 1, labels + NUM_CLASSES):
        with pytest.raises(ValueError, match="class indices"):
            loss(emb, bad)
    with pytest.raises(ValueError, match="embedding_size"):
        loss(emb[:, :-1], labels)


@pytest.mark.parametrize("name", LEARNED_CLASS_LOSSES)
def test_class_loss_parameters_are_learned(name: str) -> None:
    """The class tensor (proxies / weight) is a Parameter and receives a gradient."""
    emb, labels = make_batch(seed=6)
    loss = make_loss(name)
    table = getattr(loss, "proxies", None)
    table = getattr(loss, "weight", None) if table is None else table
    assert isinstance(table, torch.nn.Parameter) and table.shape[-1] == DIM
    loss(emb, labels).backward()
    assert table.grad is not None and bool(table.grad.abs().sum() > 0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_rejects_bad_shapes(name: str) -> None:
    emb, labels = make_batch(seed=7)
    loss = make_loss(name)
    with pytest.raises(ValueError, match="embeddings"):
        loss(emb[None], labels)
    with pytest.raises(ValueError, match="labels"):
        loss(emb, labels[:-1])


# ------------------------------------------------------------- every compatible loss + miner


@pytest.mark.parametrize(("name", "miner"), COMPATIBLE)
def test_loss_with_miner_finite(name: str, miner: str) -> None:
    emb, labels = make_batch(seed=8)
    loss, grad = loss_and_grad(name, emb, labels, miner=miner)
    assert_finite(loss, grad)
    assert loss > 0


@pytest.mark.parametrize(("name", "miner"), COMPATIBLE)
def test_loss_with_miner_identical_embeddings(name: str, miner: str) -> None:
    _, labels = make_batch(seed=9)
    emb = torch.full((len(labels), 8), -0.3).requires_grad_(True)
    assert_finite(*loss_and_grad(name, emb, labels, miner=miner))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "miner"), COMPATIBLE)
def test_loss_with_miner_low_precision(name: str, miner: str, dtype: torch.dtype) -> None:
    emb, labels = make_batch(seed=10)
    low = emb.detach().to(dtype).requires_grad_(True)
    loss, grad = loss_and_grad(name, low, labels, miner=miner)
    assert_finite(loss, grad)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("labels_kind", ["one_class", "all_distinct"])
@pytest.mark.parametrize(("name", "miner"), COMPATIBLE)
def test_loss_with_miner_no_valid_tuple_is_zero(name: str, miner: str, labels_kind: str) -> None:
    """No anchor has both a positive and a negative: nothing is mined, loss and gradient 0."""
    emb, labels = make_batch(seed=11)
    labels = torch.zeros_like(labels) if labels_kind == "one_class" else torch.arange(len(labels))
    loss, grad = loss_and_grad(name, emb, labels, miner=miner)
    assert loss == 0
    assert torch.equal(grad, torch.zeros_like(grad))


INCOMPATIBLE = [(n, m) for n in LOSS_NAMES for m in MINER_NAMES if (n, m) not in COMPATIBLE]


@pytest.mark.parametrize(("name", "miner"), INCOMPATIBLE)
def test_incompatible_mined_type_is_a_type_error(name: str, miner: str) -> None:
    emb, labels = make_batch(seed=12)
    mined = deepembed.miners.create(miner)(emb, labels)
    with pytest.raises(TypeError, match=type(mined).__name__):
        make_loss(name)(emb, labels, mined)


# ------------------------------------------------------------------------------ registry errors


@pytest.mark.parametrize("registry", [deepembed.losses, deepembed.miners])
def test_unknown_name_is_a_config_error(registry: ModuleType) -> None:
    with pytest.raises(ConfigError, match="'nope'") as info:
        registry.create("nope")
    for known in registry.names():  # the message lists what exists
        assert known in str(info.value)


def test_unknown_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        deepembed.losses.create("triplet", bogus=1)
    with pytest.raises(ConfigError, match="bogus"):
        deepembed.miners.create("batch_hard", bogus=1)


def test_create_passes_parameters() -> None:
    loss = deepembed.losses.create("triplet", margin=0.3, distance="cosine")
    assert (loss.margin, loss.distance) == (0.3, "cosine")
    miner = deepembed.miners.create("multi_similarity", epsilon=0.25)
    assert miner.epsilon == 0.25
