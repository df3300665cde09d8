"""Shared distances: the paired form against the matrix form, finite gradients at 0, and
the fused row normalisation against F.normalize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepembed.distances import DISTANCES, paired_distance, pairwise_distance, unit_rows


@pytest.mark.parametrize("kind", DISTANCES)
def test_paired_distance_equals_the_matrix_entries(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, dtype=torch.float64, generator=gen)
    rows = torch.randint(0, 30, (50,), generator=gen)
    cols = torch.randint(0, 30, (50,), generator=gen)
    expected = pairwise_distance(x, kind=kind)[rows, cols]
    torch.testing.assert_close(paired_distance(x[rows], x[cols], kind), expected)


@pytest.mark.parametrize("kind", DISTANCES)
def test_paired_distance_of_identical_rows_has_a_finite_gradient(kind: str) -> None:
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    paired_distance(x, x.detach().clone(), kind).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_distance_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown distance"):
        paired_distance(torch.zeros(2, 2), torch.zeros(2, 2), "manhattan")


def test_unit_rows_matches_normalize_in_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    x[1] = 0.0  # a zero row: F.normalize floors its norm at 1e-12
    x[2] *= 1e-14  # a tiny row, floored too
    x[3] *= 1e3
    upstream = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    grads = []
    for f in (unit_rows, lambda t: F.normalize(t, dim=1)):
        leaf = x.clone().requires_grad_()
        out = f(leaf)
        (out * upstream).sum().backward()
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert torch.autograd.gradcheck(unit_rows, (x[[0, 3, 4]].clone().requires_grad_(),))


def test_unit_rows_under_bfloat16_autocast_gives_input_dtype_gradients() -> None:
    x = torch.randn(8, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unit_rows(x.bfloat16())
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert torch.isfinite(x.grad).all()
