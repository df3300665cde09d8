"""Tie groups of a ranking: the gallery items that share one distance to a query.

Rank metrics in :mod:`deepembed.evaluation.metrics` are computed from these groups as the
expected value over a uniformly random order of the items inside each group, so the result
never depends on how a sort happened to order equal distances (Hamming distances tie a lot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TieGroups:
    """Per query, groups of equally distant gallery items; (Q, m) int64 arrays.

    Unused slots have ``size == 0``. Groups with no relevant item may be left out (they
    contribute nothing) as long as ``start`` and ``relevant_before`` count them.

    Attributes:
        start: gallery items strictly nearer than the group (its first rank is start + 1).
        size: items in the group.
        relevant: relevant items (same label as the query) in the group.
        relevant_before: relevant items strictly nearer than the group.
    """

    start: np.ndarray
    size: np.ndarray
    relevant: np.ndarray
    relevant_before: np.ndarray

    def __len__(self) -> int:
        return self.start.shape[0]

    def select(self, rows: np.ndarray) -> TieGroups:
        """The groups of a subset of queries (boolean mask or indices)."""
        return TieGroups(
            self.start[rows], self.size[rows], self.relevant[rows], self.relevant_before[rows]
        )


def groups_from_list(
    distances: np.ndarray,
    hits: np.ndarray,
    tied_beyond: np.ndarray | None = None,
    relevant_tied_beyond: np.ndarray | None = None,
) -> TieGroups:
    """Tie groups of a ranked top-k list.

    Args:
        distances: (Q, k) ascending distances of the listed neighbours.
        hits: (Q, k) bool, listed neighbour is relevant.
        tied_beyond: (Q,) unlisted gallery items at the distance of the last listed one; they
            join the last group (None: no such items).
        relevant_tied_beyond: (Q,) how many of those are relevant.
    """
    n_query, k = hits.shape
    if k == 0:
        empty = np.zeros((n_query, 0), np.int64)
        return TieGroups(empty, empty, empty, empty)
    new_group = np.ones((n_query, k), bool)
    new_group[:, 1:] = distances[:, 1:] != distances[:, :-1]
    group = np.cumsum(new_group, axis=1) - 1  # (Q, k) group index of each slot
    flat = (group + np.arange(n_query)[:, None] * k).ravel()
    size = np.bincount(flat, minlength=n_query * k).reshape(n_query, k)
    relevant = np.bincount(flat, weights=hits.ravel(), minlength=n_query * k)
    relevant = relevant.reshape(n_query, k).round().astype(np.int64)
    rows, last = np.arange(n_query), group[:, -1]
    if tied_beyond is not None:
        size[rows, last] += np.asarray(tied_beyond, np.int64)
    if relevant_tied_beyond is not None:
        relevant[rows, last] += np.asarray(relevant_tied_beyond, np.int64)
    # starts use the listed sizes: only the last group is extended past the list
    listed = np.bincount(flat, minlength=n_query * k).reshape(n_query, k)
    start = np.cumsum(listed, axis=1) - listed
    relevant_before = np.cumsum(relevant, axis=1) - relevant
    return TieGroups(start.astype(np.int64), size.astype(np.int64), relevant, relevant_before)


def groups_from_rows(distances: torch.Tensor, relevant: torch.Tensor) -> TieGroups:
    """Tie groups holding the relevant items over the whole ranking of each row.

    Never sorts a full row: the relevant distances (R per row) are sorted, and every gallery
    distance is located among them with two binary searches.

    Args:
        distances: (c, G) distances; excluded items (the query itself) are +inf.
        relevant: (c, G) bool, never true at an excluded item.
    """
    c = distances.shape[0]
    counts = relevant.sum(1)  # (c,) R per row
    m = int(counts.max()) if c else 0
    if m == 0:
        empty = np.zeros((c, 0), np.int64)
        return TieGroups(empty, empty, empty, empty)
    inf = torch.tensor(float("inf"), dtype=distances.dtype, device=distances.device)
    # (c, m) relevant distances ascending; rows with fewer than m padded with +inf
    rel_d = torch.topk(torch.where(relevant, distances, inf), m, dim=1, largest=False).values
    rel_d = rel_d.contiguous()
    offsets = (torch.arange(c, device=distances.device) * (m + 1))[:, None]  # (c, 1)

    def at_most(bucket: torch.Tensor) -> torch.Tensor:
        # (c, m): per relevant slot j, gallery items whose bucket is <= j
        hist = torch.bincount((bucket + offsets).ravel(), minlength=c * (m + 1))
        return hist.view(c, m + 1).cumsum(1)[:, :m]

    contiguous = distances.contiguous()
    # item strictly nearer than rel_d[j]  <=>  (#relevant <= its distance) <= j
    nearer = at_most(torch.searchsorted(rel_d, contiguous, right=True))
    # item at most as far as rel_d[j]     <=>  (#relevant < its distance) <= j
    not_farther = at_most(torch.searchsorted(rel_d, contiguous, right=False))
    first = torch.searchsorted(rel_d, rel_d, right=False)  # (c, m) first slot of each value
    last = torch.searchsorted(rel_d, rel_d, right=True)  # (c, m) one past its last slot
    slot = torch.arange(m, device=distances.device)[None, :]
    leader = (first == slot) & (slot < counts[:, None])  # one slot per group
    zero = torch.zeros_like(nearer)
    size = torch.where(leader, not_farther - nearer, zero)
    return TieGroups(
        nearer.cpu().numpy().astype(np.int64),
        size.cpu().numpy().astype(np.int64),
        torch.where(leader, last - first, zero).cpu().numpy().astype(np.int64),
        first.cpu().numpy().astype(np.int64),
    )
