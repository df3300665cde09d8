"""Exact selection on whole distance rows: the k nearest by (distance, gallery index), the
ties that straddle the cut, the tie groups of the relevant items for whole-ranking metrics, and
per-distance counts of Hamming rows for radius metrics and curves.
"""

from __future__ import annotations

import torch

from deepembed.evaluation._knn_space import _Space
from deepembed.evaluation.ties import groups_from_rows

_HISTOGRAM_BLOCK = 1 << 22  # distance entries per block of the histogram pass (32 MB of int64)


def _relevant_rows(labels: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """(r, G) bool relevance of every gallery item to the query rows ``rows``: the same int
    label, or for (N, C) float 0/1 label matrices at least one shared label."""
    query, gallery = labels
    if query.ndim == 1:
        return gallery[None, :] == query[rows][:, None]
    return torch.mm(query[rows], gallery.T) > 0.5


def _distance_histograms(
    dist: torch.Tensor, rel: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, bits + 1) counts of gallery items at each Hamming distance 0..bits, and of the
    relevant ones among them; excluded items (+inf, the query itself) are not counted.

    Rows go in blocks of ``_HISTOGRAM_BLOCK`` entries so the int64 bin indices stay small.
    """
    n_rows, n_gallery = dist.shape
    width = bits + 2  # one overflow bin per row takes the excluded items
    counts = torch.zeros(n_rows, width, dtype=torch.int64, device=dist.device)
    rel_counts = torch.zeros_like(counts)
    step = max(1, _HISTOGRAM_BLOCK // max(1, n_gallery))
    for a in range(0, n_rows, step):
        b = min(a + step, n_rows)
        offsets = torch.arange(b - a, device=dist.device)[:, None] * width
        bins = dist[a:b].clamp(max=bits + 1).to(torch.int64) + offsets  # (s, G)
        counts[a:b] = torch.bincount(bins.ravel(), minlength=(b - a) * width).view(-1, width)
        rel_counts[a:b] = torch.bincount(bins[rel[a:b]], minlength=(b - a) * width).view(-1, width)
    return counts[:, : bits + 1], rel_counts[:, : bits + 1]


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
    histograms: bool = False,
) -> tuple:
    """Exact lists of the query rows ``rows`` from their whole distance rows.

    Returns (distances (r, k), columns (r, k), tied_beyond (r,), relevant_tied_beyond (r,),
    the relevant items' TieGroups or None, and with ``histograms`` (Hamming only, needs labels)
    the (r, bits + 1) counts of all and of relevant items at each distance, else None, None).
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
        rel = _relevant_rows(labels, rows)  # (r, G) same label / a shared label
    if exclude_self:
        dist[torch.arange(rows.numel()), rows] = float("inf")
        if rel is not None:
            rel[torch.arange(rows.numel()), rows] = False
    vals, cols = _select_k_smallest(dist, k)
    at_last = dist == vals[:, -1:]  # (r, G) items at the list's last distance
    in_list_at_last = vals == vals[:, -1:]  # (r, k)
    tied = at_last.sum(1) - in_list_at_last.sum(1)
    rel_tied = torch.zeros_like(tied)
    groups = counts = rel_counts = None
    if rel is not None:
        rel_listed = torch.gather(rel, 1, cols) & in_list_at_last
        rel_tied = (at_last & rel).sum(1) - rel_listed.sum(1)
        if full_ranking:
            groups = groups_from_rows(dist, rel)
        if histograms:
            counts, rel_counts = _distance_histograms(dist, rel, space.gallery.shape[1])
    return vals, cols, tied, rel_tied, groups, counts, rel_counts
