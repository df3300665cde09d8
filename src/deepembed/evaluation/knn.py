"""Exact k-nearest-neighbour search in bounded memory (chunked torch matmul + topk)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.errors import UserError

KNN_DISTANCES = ("cosine", "euclidean", "squared_euclidean")

ArrayLike = np.ndarray | torch.Tensor


class EvaluationInputError(UserError, ValueError):
    """Unusable evaluation input (empty set, bad shape, non-finite values, unknown name)."""


@dataclass(frozen=True)
class KnnResult:
    """Neighbours of each query, nearest first.

    Attributes:
        distances: (Q, k) float32 distances, ascending along each row.
        indices: (Q, k) int64 gallery row indices matching ``distances``.
    """

    distances: np.ndarray
    indices: np.ndarray


def _as_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """Check one input and return it as a detached float32 (N, D) tensor."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise EvaluationInputError(f"{name} is not a numeric array: {exc}") from None
    if t.ndim != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise EvaluationInputError(f"empty {name}: nothing to search")
    if t.shape[1] == 0:
        raise EvaluationInputError(f"{name} has zero-dimensional rows")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise EvaluationInputError(f"{name} contains NaN or infinite values")
    return t


def _chunk_distances(
    q: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor | None, distance: str
) -> torch.Tensor:
    """Distances (c, G) between a query chunk q (c, D) and the prepared gallery g (G, D)."""
    if g_sq is None:  # cosine: rows of q and g are already unit length
        return torch.mm(q, g.T).neg_().add_(1.0)
    # ||q||^2 - 2 q.g + ||g||^2, clamped because cancellation can go slightly negative
    q_sq = (q * q).sum(1, keepdim=True)  # (c, 1)
    sq = torch.addmm(g_sq[None, :], q, g.T, alpha=-2.0).add_(q_sq).clamp_min_(0.0)  # (c, G)
    return sq.sqrt_() if distance == "euclidean" else sq


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


def _select_k_smallest(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of dist (c, G), ties broken by lower column index.

    ``torch.topk`` may pick any of several columns tied at the k-th value. It is asked for
    k + 1 values: rows where the (k+1)-th equals the k-th have a tie straddling the cut and
    are redone exactly (all columns below the k-th value plus the lowest-index tied ones).
    The k columns are then ordered by (distance, column): sort by column, then stable-sort
    by distance.

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
    cols = cols.sort(dim=1).values  # (c, k) ascending column
    vals, order = torch.sort(torch.gather(dist, 1, cols), dim=1, stable=True)
    return vals, torch.gather(cols, 1, order)


@torch.no_grad()
def knn_search(
    query: ArrayLike,
    gallery: ArrayLike,
    k: int,
    distance: str = "cosine",
    exclude_self: bool = False,
    chunk_size: int = 4096,
) -> KnnResult:
    """Exact k nearest gallery rows for every query row.

    Queries are processed ``chunk_size`` rows at a time, so peak memory is about
    ``chunk_size x G`` distances; the full (Q, G) matrix is never built. Computation runs on
    the device of ``query`` if it is a torch tensor, else on CPU, in float32.

    Ties are broken deterministically: among equal distances the lower gallery index comes
    first, including at the k-th position (which tied item makes the cut).

    Args:
        query: (Q, D) float array or tensor.
        gallery: (G, D) float array or tensor.
        k: neighbours wanted per query; clipped to G (G - 1 with ``exclude_self``).
        distance: "cosine" (1 - dot product of L2-normalised rows), "euclidean" (L2) or
            "squared_euclidean".
        exclude_self: query and gallery are the same set (leave-one-out); row i of the
            query never gets gallery row i as a neighbour. Requires Q == G.
        chunk_size: number of query rows per distance block.

    Returns:
        KnnResult with (Q, k) float32 distances and int64 indices, nearest first.

    Raises:
        ValueError: empty or non-2-D input, dimension mismatch, non-finite values,
            unknown distance, or non-positive ``k``/``chunk_size``.
    """
    if distance not in KNN_DISTANCES:
        raise EvaluationInputError(
            f"unknown distance {distance!r}; expected one of {', '.join(KNN_DISTANCES)}"
        )
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise EvaluationInputError(f"k must be a positive integer, got {k!r}")
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise EvaluationInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    q_all = _as_matrix(query, "query")  # (Q, D)
    g = _as_matrix(gallery, "gallery")  # (G, D)
    if q_all.shape[1] != g.shape[1]:
        raise EvaluationInputError(
            f"dimension mismatch: query has {q_all.shape[1]} columns, gallery has {g.shape[1]}"
        )
    n_query, n_gallery = q_all.shape[0], g.shape[0]
    if exclude_self and n_query != n_gallery:
        raise EvaluationInputError(
            f"exclude_self needs query and gallery to be the same set, got {n_query} query "
            f"rows and {n_gallery} gallery rows"
        )
    g = g.to(q_all.device)
    k = min(int(k), n_gallery - 1 if exclude_self else n_gallery)
    if k == 0:  # leave-one-out on a single row: no candidates at all
        return KnnResult(
            distances=np.zeros((n_query, 0), dtype=np.float32),
            indices=np.zeros((n_query, 0), dtype=np.int64),
        )

    if distance == "cosine":
        g = F.normalize(g, dim=1)
        g_sq = None
    else:
        g_sq = (g * g).sum(1)  # (G,)

    out_dist = np.empty((n_query, k), dtype=np.float32)
    out_idx = np.empty((n_query, k), dtype=np.int64)
    for start in range(0, n_query, int(chunk_size)):
        q = q_all[start : start + int(chunk_size)]  # (c, D)
        if distance == "cosine":
            q = F.normalize(q, dim=1)
        dist = _chunk_distances(q, g, g_sq, distance)  # (c, G)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=dist.device)
            dist[rows, rows + start] = float("inf")
        vals, cols = _select_k_smallest(dist, k)  # (c, k) each
        out_dist[start : start + q.shape[0]] = vals.cpu().numpy()
        out_idx[start : start + q.shape[0]] = cols.cpu().numpy()
    return KnnResult(distances=out_dist, indices=out_idx)
