"""Shared oracle-test helpers: seeded batches, value+gradient comparison, PML adapters."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_metric_learning import distances as pml_distances

from deepembed.miners import Pairs, Triplets

TOL = {"atol": 1e-5, "rtol": 1e-5}

# class sizes of the batches every oracle test runs on
BATCHES: dict[str, tuple[int, ...]] = {
    "balanced": (4, 4, 4, 4, 4, 4),
    "uneven": (2, 3, 5, 7, 9),
    "singletons": (1, 1, 1, 3, 4, 6),
}
# batches with no negative (one class) or no positive (all distinct) at all
DEGENERATE: dict[str, tuple[int, ...]] = {"one_class": (12,), "all_distinct": (1,) * 12}


def make_batch(
    sizes: tuple[int, ...], seed: int, dim: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 clustered embeddings (leaf, requires grad) and shuffled non-contiguous labels."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    perm = torch.randperm(len(classes), generator=gen)
    classes = classes[perm]
    centres = torch.randn(len(sizes), dim, generator=gen, dtype=torch.float64)
    noise = torch.randn(len(classes), dim, generator=gen, dtype=torch.float64)
    emb = (centres[classes] + 0.8 * noise).requires_grad_(True)
    return emb, classes * 7 - 20


def value_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], emb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(emb), in the dtype fn computed it in, and its gradient w.r.t. emb (zeros where the
    loss is a constant)."""
    emb = emb.detach().clone().requires_grad_(True)
    loss = torch.as_tensor(fn(emb))  # no cast: assert_same checks the dtype
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, emb, allow_unused=True)
        grad = torch.zeros_like(emb) if grad is None else grad
    else:
        grad = torch.zeros_like(emb)
    return loss.detach(), grad


def assert_same(
    ours: Callable[[torch.Tensor], torch.Tensor],
    theirs: Callable[[torch.Tensor], torch.Tensor],
    emb: torch.Tensor,
) -> None:
    """Loss value and gradient of two loss functions agree to 1e-5; ours is a float64 scalar
    (computed in float64, not cast afterwards)."""
    value, grad = value_and_grad(ours, emb)
    exp_value, exp_grad = value_and_grad(theirs, emb)
    assert value.shape == ()
    assert value.dtype == torch.float64, f"the loss is {value.dtype}, expected float64"
    torch.testing.assert_close(value, exp_value.to(value.dtype), **TOL)
    torch.testing.assert_close(grad, exp_grad, **TOL)


def pml_pairs(pairs: Pairs) -> tuple[torch.Tensor, ...]:
    """Our Pairs as PML's (a1, p, a2, n) indices tuple."""
    return pairs.anchor_pos, pairs.positive, pairs.anchor_neg, pairs.negative


def pml_triplets(triplets: Triplets) -> tuple[torch.Tensor, ...]:
    """Our Triplets as PML's (a, p, n) indices tuple."""
    return triplets.anchor, triplets.positive, triplets.negative


def as_pairs(indices: tuple[torch.Tensor, ...]) -> Pairs:
    """PML's (a1, p, a2, n) as our Pairs."""
    return Pairs(*indices)


def as_triplets(indices: tuple[torch.Tensor, ...]) -> Triplets:
    """PML's (a, p, n) as our Triplets."""
    return Triplets(*indices)


# our distance name -> PML distance on raw (unnormalised) embeddings
RAW_DISTANCES: dict[str, Callable[[], pml_distances.BaseDistance]] = {
    "euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False),
    "squared_euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False, power=2),
    "cosine": lambda: pml_distances.CosineSimilarity(),
}


def assert_quadratic_memory(compute: Callable[[], torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
    """Run `compute()` (a loss of the leaf `emb`, B rows) and backward: the loss and the
    gradient are finite, the loss positive, and autograd saved fewer than 16 B^2 numbers
    (O(B^2), never O(B^3)). Returns the loss."""
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = compute()
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all())
    batch = len(emb)
    assert sum(saved) < 16 * batch * batch, f"autograd saved {sum(saved)} numbers"
    return loss
