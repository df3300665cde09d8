"""The oracle helpers themselves: a check that cannot fail checks nothing."""

from __future__ import annotations

import pytest
import torch

from tests.losses.oracle import BATCHES, assert_same, make_batch, value_and_grad


def squares(emb: torch.Tensor) -> torch.Tensor:
    return (emb**2).mean()


def squares_in_float32(emb: torch.Tensor) -> torch.Tensor:
    return (emb.float() ** 2).mean()


def test_value_and_grad_keeps_the_loss_dtype() -> None:
    emb, _ = make_batch(BATCHES["balanced"], seed=0)
    assert value_and_grad(squares, emb)[0].dtype == torch.float64
    value, grad = value_and_grad(squares_in_float32, emb)
    assert value.dtype == torch.float32 and grad.dtype == torch.float64


def test_assert_same_refuses_a_loss_computed_in_float32() -> None:
    """Float32 arithmetic inside a loss would pass the 1e-5 tolerances on these small batches:
    only the dtype check catches it."""
    emb, _ = make_batch(BATCHES["balanced"], seed=0)
    assert_same(squares, squares, emb)
    with pytest.raises(AssertionError, match="float64"):
        assert_same(squares_in_float32, squares, emb)
