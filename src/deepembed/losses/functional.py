"""Small numerically careful building blocks shared by several losses."""

from __future__ import annotations

import torch


def masked_log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + sum_j mask_ij exp(x_ij)), stable; rows with no True give 0. (B,)."""
    x = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)  # the "1 +" term
    return torch.logsumexp(torch.cat([x, zeros], 1), dim=1)


def mean_nonzero(total: torch.Tensor, count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """total / count, or a graph-connected zero when count is 0 (PML's AvgNonZeroReducer)."""
    if int(count) == 0:
        return like.sum() * 0.0 + total * 0.0
    return total / count


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(sum_j mask_ij exp(x_ij)); rows with no True give 0, with zero gradient. (B,).

    PML's `logsumexp(..., add_one=False)`. An empty row is -inf inside; `where` outputs 0
    for it, and masked_fill's backward zeroes the NaN its logsumexp gradient carries.
    """
    lse = torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=1)
    return torch.where(mask.any(1), lse, torch.zeros_like(lse))
