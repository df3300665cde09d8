"""Pairwise distances and similarities shared by losses, miners and evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "euclidean", "squared_euclidean")


def pairwise_similarity(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity matrix (N, M) of the L2-normalised rows of x and y."""
    x = F.normalize(x, dim=1)
    y = x if y is None else F.normalize(y, dim=1)
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
        return 1.0 - (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1)
    sq = (x - y).pow(2).sum(1)
    if kind == "squared_euclidean":
        return sq
    if kind == "euclidean":
        return sq.clamp_min(1e-30).sqrt()
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")
