"""Pairwise distances and similarities shared by losses, miners and evaluation."""

from __future__ import annotations

import torch

DISTANCES = ("cosine", "euclidean", "squared_euclidean")

_NORM_EPS = 1e-12  # F.normalize's floor on a row norm


class _UnitRows(torch.autograd.Function):
    """x / max(||x||, eps) by rows, with the backward written out: (g - u (g . u)) / n, one
    pass, where autograd through F.normalize takes the norm's and the division's backward
    (~8 elementwise (N, D) passes). A row whose norm is floored is a plain division by eps."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (N, 1)
        floored = norm < _NORM_EPS
        norm = norm.clamp_min(_NORM_EPS)
        unit = x / norm
        ctx.save_for_backward(unit, norm, floored)
        return unit

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        unit, norm, floored = ctx.saved_tensors
        along = (grad * unit).sum(1, keepdim=True).masked_fill_(floored, 0.0)  # (N, 1)
        return (grad - unit * along) / norm


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """F.normalize(x, dim=1) for a 2-D x (same value and gradient), with a fused backward."""
    return _UnitRows.apply(x)


def pairwise_similarity(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity matrix (N, M) of the L2-normalised rows of x and y."""
    x = unit_rows(x)
    y = x if y is None else unit_rows(y)
    return x @ y.T


def pairwise_distance(
    x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "euclidean"
) -> torch.Tensor:
    """Distance matrix (N, M): "cosine" (1 - cos), "euclidean" or "squared_euclidean".

    Zero euclidean distances (identical rows) have a zero, finite gradient.
    """
    if kind == "cosine":
        return 1.0 - pairwise_similarity(x, y)
    y_ = x if y is None else y
    if kind == "euclidean":
        # cdist: the Gram-matrix product with a fused backward (~2x faster than autograd
        # through sqrt and clamp); its gradient at a zero distance is 0, never NaN
        return torch.cdist(x, y_)
    # (N, M) via the Gram trick; clamp removes tiny negatives from cancellation
    sq = (x * x).sum(1, keepdim=True) - 2.0 * (x @ y_.T) + (y_ * y_).sum(1)[None, :]
    sq = sq.clamp_min(0.0)
    if kind == "squared_euclidean":
        return sq
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")


def paired_distance(x: torch.Tensor, y: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Distances (T,) between matching rows x[t] and y[t], with the conventions of
    :func:`pairwise_distance`: O(T D) instead of a whole matrix, for a few mined pairs.

    A zero euclidean distance has a zero, finite gradient (the square root is taken of the
    squared distance floored at 1e-30, which stops its gradient there).
    """
    if kind == "cosine":
        return 1.0 - (unit_rows(x) * unit_rows(y)).sum(1)
    sq = (x - y).pow(2).sum(1)
    if kind == "squared_euclidean":
        return sq
    if kind == "euclidean":
        return sq.clamp_min(1e-30).sqrt()
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")
