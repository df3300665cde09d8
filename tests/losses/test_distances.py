"""Shared distances: the paired form against the matrix form, and finite gradients at 0."""

from __future__ import annotations

import pytest
import torch

from deepembed.distances import DISTANCES, paired_distance, pairwise_distance


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
