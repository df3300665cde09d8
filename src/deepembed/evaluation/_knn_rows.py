"""Exact selection on whole distance rows: the k nearest by (distance, gallery index), the
ties that straddle the cut, and the tie groups of the relevant items for whole-ranking metrics.
"""

from __future__ import annotations

import torch

from deepembed.evaluation._knn_space import _Space
from deepembed.evaluation.ties import groups_from_rows


def _lowest_index_cut(dist: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Columns (r, k) of the k smallest entries of dist (r, G) given each row's k-th value kth
    (r, 1): everything strictly below kth, then the lowest-index columns equal to it."""
    keep = dist < kth  # (r, G) certainly in the top k
    at_kth = dist == kth  # (r, G) candidates for the remaining slots
    slots = k - keep.sum(1, keepdim=True)  # (r, 1) remaining slots, >= 1
    # rank 1, 2, ... of each tied column among the tied columns of its row
    tie_rank = at_kth.to(torch.int32).cumsum(1, dtype=torch.int32)
    keep |= at_kth & (tie_rank <= slots)  # exactly k True per row
    return keep.nonzero()[:, 1].view(dist.shape[0], k)


def _order(vals: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (values, columns) reordered by (value, column)."""
    cols, by_col = cols.sort(dim=1)
    vals = torch.gather(vals, 1, by_col)
    vals, by_val = torch.sort(vals, dim=1, stable=True)
    return vals, torch.gather(cols, 1, by_val)


def _order_ties(vals: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by value (c, k1) put in (value, column) order; only rows with an internal
    tie are reordered, the rest are already in order."""
    tied = (vals[:, 1:] == vals[:, :-1]).any(1)  # (c,)
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        vals[rows], cols[rows] = _order(vals[rows], cols[rows])
    return vals, cols


def _select_k_smallest(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of dist (c, G), ties broken by lower column index.

    ``torch.topk`` may pick any of several columns tied at the k-th value; it is asked for
    k + 1 values and rows where the (k+1)-th equals the k-th are cut exactly instead.

    Returns:
        (values, columns), both (c, k), ordered by (distance, column).
    """
    m = min(k + 1, dist.shape[1])
    vals, cols = torch.topk(dist, m, dim=1, largest=False, sorted=True)  # (c, m) each
    cols = cols[:, :k].contiguous()  # (c, k)
    if m > k:
        straddle = vals[:, k] == vals[:, k - 1]  # (c,) tie across the cut
        if bool(straddle.any()):
            rows = straddle.nonzero().squeeze(1)
            cols[rows] = _lowest_index_cut(dist[rows], vals[rows, k - 1 : k], k)
    return _order(torch.gather(dist, 1, cols), cols)


def _full_rows(
    space: _Space,
    rows: torch.Tensor,
    k: int,
    exclude_self: bool,
    labels: tuple[torch.Tensor, torch.Tensor] | None,
    full_ranking: bool,
) -> tuple[torch.Tensor, ...]:
    """Exact lists of the query rows ``rows`` from their whole distance rows.

    Returns (distances (r, k), columns (r, k), tied_beyond (r,), relevant_tied_beyond (r,))
    and, with ``full_ranking``, the relevant items' TieGroups as a last element.
    """
    n_gallery = space.gallery.shape[0]
    q0, q1 = int(rows.min()), int(rows.max()) + 1
    contiguous = q1 - q0 == rows.numel()
    if contiguous:
        dist = space.to_distance(space.scores(q0, q1, 0, n_gallery), q0, q1)  # (r, G)
    else:  # scattered rows (straddling ties after a streamed search)
        sub = _Space(
            space.query[rows],
            space.gallery,
            space.distance,
            space.bias,
            None if space.query_sq is None else space.query_sq[rows],
        )
        dist = sub.to_distance(sub.scores(0, rows.numel(), 0, n_gallery), 0, rows.numel())
    rel = None
    if labels is not None:
        rel = labels[1][None, :] == labels[0][rows][:, None]  # (r, G) same label
    if exclude_self:
        dist[torch.arange(rows.numel()), rows] = float("inf")
        if rel is not None:
            rel[torch.arange(rows.numel()), rows] = False
    vals, cols = _select_k_smallest(dist, k)
    at_last = dist == vals[:, -1:]  # (r, G) items at the list's last distance
    in_list_at_last = vals == vals[:, -1:]  # (r, k)
    tied = at_last.sum(1) - in_list_at_last.sum(1)
    rel_tied = torch.zeros_like(tied)
    groups = None
    if rel is not None:
        rel_listed = torch.gather(rel, 1, cols) & in_list_at_last
        rel_tied = (at_last & rel).sum(1) - rel_listed.sum(1)
        if full_ranking:
            groups = groups_from_rows(dist, rel)
    out: tuple = (vals, cols, tied, rel_tied)
    return (*out, groups) if full_ranking else out
