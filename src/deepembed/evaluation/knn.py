"""Exact k-nearest-neighbour search in bounded memory, shared by every rank metric.

Two ways to reach the same neighbours:

* ``torch``: blocks of query rows against blocks of gallery rows (BLAS matrix products),
  each block merged into a running best k+1 per query. On CPU one fused pass per block does
  the merge (numba kernels in ``_select``: a vector comparison with each row's worst kept
  score, a heap insert for the rare winner), and a set searched against itself
  (``gallery=None``) multiplies each block pair once and merges it into both blocks' rows:
  half the products. On other devices ``topk`` merges the blocks.
* ``faiss``: ``IndexFlatIP`` / ``IndexFlatL2`` / ``IndexBinaryFlat`` search for k+1.

Both then order each list by (distance, gallery index). Where the (k+1)-th distance equals the
k-th (a tie straddles the cut) the row is recomputed against the whole gallery, in blocks of
rows, which also counts the tied items beyond the list. Hamming distances, and the whole-
ranking metrics (mAP, MRR), use that full-row pass for every query.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from deepembed.errors import UserError
from deepembed.evaluation.ties import TieGroups, groups_from_rows

KNN_DISTANCES = ("cosine", "inner_product", "euclidean", "squared_euclidean", "hamming")
KNN_BACKENDS = ("auto", "torch", "faiss")

ArrayLike = np.ndarray | torch.Tensor

_ROW_BUDGET = 1 << 25  # distance entries in one full-row block (128 MB of float32)
_GALLERY_BLOCK = 4096  # gallery rows per streamed block: a 1024 x 4096 block stays in cache
_PAIR_BLOCK = 1024  # rows per block of the symmetric search: 4 MB of dot products, in cache
_SYMMETRIC_HEAP_BUDGET = 1 << 30  # bytes of (N, k + 1) heaps; beyond it, the streamed search
_CPU_KERNELS = True  # merge on CPU with the fused numba kernels (tests turn it off)
_FAISS_BLAS_MIN = 128_000  # faiss uses BLAS only when n_queries * dim >= this
_FAISS_BINARY_BYTES = (4, 8, 16, 20, 32, 64)  # code sizes with specialised Hamming kernels


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


@dataclass(frozen=True)
class KnnChunk:
    """Neighbours of query rows ``start .. start + c - 1`` and what rank metrics need on ties.

    Attributes:
        start: first query row of the chunk.
        distances: (c, k) float32, ascending; ties ordered by gallery index.
        indices: (c, k) int64 gallery rows.
        tied_beyond: (c,) gallery items outside the list at the distance of its last item.
        relevant_tied_beyond: (c,) how many of those share the query's label (0 without labels).
        relevant_groups: tie groups of all relevant items over the whole ranking (only when
            asked for with ``full_ranking``), else None.
    """

    start: int
    distances: np.ndarray
    indices: np.ndarray
    tied_beyond: np.ndarray
    relevant_tied_beyond: np.ndarray
    relevant_groups: TieGroups | None = None


# ---------- inputs ----------


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


def as_sign_bits(x: ArrayLike, name: str = "codes") -> torch.Tensor:
    """Binary codes as a (N, bits) float32 tensor of -1/+1.

    Accepts packed codes (uint8 rows from ``np.packbits``, 8 bits per byte, most significant
    first), or one entry per bit: bool, {0, 1} or {-1, +1} values of any other dtype.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, bits), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EvaluationInputError(f"empty {name}: nothing to search")
    if arr.dtype == np.uint8:
        bits = np.unpackbits(arr, axis=1)  # (N, 8 * bytes) in {0, 1}
    elif arr.dtype == np.bool_:
        bits = arr
    else:
        values = np.unique(arr)
        if np.isin(values, (0, 1)).all():
            bits = arr
        elif np.isin(values, (-1, 1)).all():
            bits = arr > 0
        else:
            raise EvaluationInputError(
                f"hamming distance needs binary codes: {name} must be packed uint8, bool, "
                f"{{0, 1}} or {{-1, +1}}, found values such as {values[:3].tolist()}"
            )
    if bits.shape[1] == 0:
        raise EvaluationInputError(f"{name} has zero-length codes")
    return torch.from_numpy(np.where(np.asarray(bits, bool), 1.0, -1.0).astype(np.float32))


@dataclass(frozen=True)
class _Space:
    """Query and gallery rows prepared so that a larger score ``q . g - bias`` means nearer.

    cosine: unit rows, score = cos. inner_product: raw rows, score = dot. euclidean: score =
    2 q.g - |g|^2 = |q|^2 - |q - g|^2. hamming: -1/+1 rows, score = bits - 2 * hamming.
    """

    query: torch.Tensor  # (Q, D)
    gallery: torch.Tensor  # (G, D)
    distance: str
    bias: torch.Tensor | None = None  # (G,) |g|^2 for the euclidean distances
    query_sq: torch.Tensor | None = None  # (Q,) |q|^2 for the euclidean distances

    def dots(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        """(q1 - q0, g1 - g0) dot products of query rows q0:q1 with gallery rows g0:g1.

        Every path of the search gets its products here, so all of them round alike. (numpy's
        OpenBLAS multiplies ~1.25x faster on the AMD CPU measured, but its spinning threads
        then starve the merge kernels: 4x slower overall.)
        """
        return torch.mm(self.query[q0:q1], self.gallery[g0:g1].T)

    def scores(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        """(q1 - q0, g1 - g0) scores of query rows q0:q1 against gallery rows g0:g1."""
        return self.scores_from_dots(self.dots(q0, q1, g0, g1), g0, g1, axis=1)

    def scores_from_dots(self, dots: torch.Tensor, g0: int, g1: int, axis: int) -> torch.Tensor:
        """Scores from dot products with gallery rows g0:g1 laid along ``axis`` of ``dots``.

        2 q.g is exact, then the bias costs one rounding; without a bias the dot products
        themselves are returned.
        """
        if self.bias is None:
            return dots
        bias = self.bias[g0:g1]
        return torch.add(-(bias[None, :] if axis == 1 else bias[:, None]), dots, alpha=2.0)

    def to_distance(self, scores: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
        """Distances of scores of query rows q0:q1 (in place; monotone decreasing)."""
        if self.distance == "cosine":
            return scores.neg_().add_(1.0)
        if self.distance == "inner_product":
            return scores.neg_()
        if self.distance == "hamming":
            return scores.neg_().add_(self.gallery.shape[1]).mul_(0.5)
        # |q|^2 - score, clamped because cancellation can go slightly negative
        sq = scores.neg_().add_(self.query_sq[q0:q1, None]).clamp_min_(0.0)  # type: ignore[index]
        return sq.sqrt_() if self.distance == "euclidean" else sq


def _prepare(query: ArrayLike, gallery: ArrayLike, distance: str, same: bool) -> _Space:
    """Validate inputs and build the search space for ``distance``."""
    if distance == "hamming":
        q = as_sign_bits(query, "query")
        g = q if same else as_sign_bits(gallery, "gallery")
        if q.shape[1] != g.shape[1]:
            raise EvaluationInputError(
                f"code length mismatch: query has {q.shape[1]} bits, gallery has {g.shape[1]}"
            )
        return _Space(q, g, distance)
    q = _as_matrix(query, "query")  # (Q, D)
    g = q if same else _as_matrix(gallery, "gallery")  # (G, D)
    if q.shape[1] != g.shape[1]:
        raise EvaluationInputError(
            f"dimension mismatch: query has {q.shape[1]} columns, gallery has {g.shape[1]}"
        )
    g = g.to(q.device)
    if distance == "cosine":
        q = F.normalize(q, dim=1)
        g = q if same else F.normalize(g, dim=1)
        return _Space(q, g, distance)
    if distance == "inner_product":
        return _Space(q, g, distance)
    return _Space(q, g, distance, bias=(g * g).sum(1), query_sq=(q * q).sum(1))


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise EvaluationInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------- exact selection on full rows ----------


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


# ---------- streamed top-(k+1) candidates ----------


def _merge(
    vals: torch.Tensor, cols: torch.Tensor, block: torch.Tensor, g0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block of scores (c, b) into the running best (c, k1) scores and columns."""
    better = block > vals[:, -1:]  # (c, b) beats the running k1-th; most entries do not
    rows, bcols = better.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return vals, cols
    counts = torch.bincount(rows, minlength=block.shape[0])  # (c,)
    width = int(counts.max())
    # pack each row's candidates left-aligned into (c, width), padded with -inf
    pos = torch.arange(rows.numel(), device=block.device) - (counts.cumsum(0) - counts)[rows]
    cand_v = torch.full((block.shape[0], width), -math.inf, device=block.device)
    cand_c = torch.zeros((block.shape[0], width), dtype=torch.int64, device=block.device)
    cand_v[rows, pos] = block[rows, bcols]
    cand_c[rows, pos] = bcols + g0
    vals, pick = torch.topk(torch.cat([vals, cand_v], 1), k1, dim=1)
    return vals, torch.gather(torch.cat([cols, cand_c], 1), 1, pick)


def _kernels(space: _Space) -> ModuleType | None:
    """The fused CPU merge kernels (numba) when they apply to ``space``, else None."""
    if not _CPU_KERNELS or space.query.device.type != "cpu":
        return None
    import numba

    from deepembed.evaluation import _select  # imported late: numba loads in ~0.5 s

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return _select


def _empty_heaps(n: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k1) heaps that any real candidate beats: float32 scores -inf, int32 columns past
    any index (8 bytes a slot)."""
    return np.full((n, k1), -np.inf, np.float32), np.full((n, k1), np.iinfo(np.int32).max)


def _stream_candidates(
    space: _Space, q0: int, q1: int, k1: int, exclude_self: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k1 scores (c, k1) and gallery columns of query rows q0:q1, gallery in blocks,
    best first (ties by lower column)."""
    n_gallery = space.gallery.shape[0]
    kernels = _kernels(space)
    if kernels is not None:  # CPU: block dot products, then one fused pass merges them
        vals_np, cols_np = _empty_heaps(q1 - q0, k1)
        for g0 in range(0, n_gallery, _GALLERY_BLOCK):
            g1 = min(g0 + _GALLERY_BLOCK, n_gallery)
            scores = space.scores(q0, q1, g0, g1).numpy()  # (c, b)
            kernels.merge_rows(scores, vals_np, cols_np, q0, g0, exclude_self)
        kernels.sort_heaps(vals_np, cols_np)
        return torch.from_numpy(vals_np), torch.from_numpy(cols_np.astype(np.int64))
    vals = cols = None
    for g0 in range(0, n_gallery, _GALLERY_BLOCK):
        g1 = min(g0 + _GALLERY_BLOCK, n_gallery)
        block = space.scores(q0, q1, g0, g1)  # (c, b)
        if exclude_self and g0 < q1 and q0 < g1:  # this block holds some queries themselves
            own = torch.arange(max(q0, g0), min(q1, g1), device=block.device)
            block[own - q0, own - g0] = -math.inf
        if vals is None or vals.shape[1] < k1:
            prev_v = block[:, :0] if vals is None else vals
            prev_c = torch.zeros_like(prev_v, dtype=torch.int64) if cols is None else cols
            both_v = torch.cat([prev_v, block], 1)
            both_c = torch.cat(
                [prev_c, torch.arange(g0, g1, device=block.device).expand(block.shape[0], -1)], 1
            )
            vals, pick = torch.topk(both_v, min(k1, both_v.shape[1]), dim=1)
            cols = torch.gather(both_c, 1, pick)
        else:
            vals, cols = _merge(vals, cols, block, g0, k1)
    return vals, cols  # type: ignore[return-value]


def _symmetric_candidates(
    space: _Space, k1: int, exclude_self: bool, kernels: ModuleType
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Best k1 scores and columns of every row of a set searched against itself (CPU).

    The score matrix is symmetric, so each off-diagonal block pair (a < b) is multiplied
    once: its (ca, cb) dot products are merged into the heaps of block a's rows and, read by
    columns, into those of block b's rows. The diagonal blocks go first, so that every heap
    starts from its own block's best and later blocks are mostly rejected by one comparison.
    Block a is complete after its row of pairs (pairs (a' < a, a) came earlier) and is
    yielded then as (q0, q1, scores (c, k1), columns (c, k1)), best first. Memory: the
    (N, k1) heaps plus one block of dot products.
    """
    n = space.query.shape[0]
    vals, cols = _empty_heaps(n, k1)
    bounds = [(b0, min(b0 + _PAIR_BLOCK, n)) for b0 in range(0, n, _PAIR_BLOCK)]
    for i0, i1 in bounds:
        scores = space.scores(i0, i1, i0, i1).numpy()  # (c, c), both triangles
        kernels.merge_rows(scores, vals[i0:i1], cols[i0:i1], i0, i0, exclude_self)
    for a, (i0, i1) in enumerate(bounds):
        for j0, j1 in bounds[a + 1 :]:
            dots = space.dots(i0, i1, j0, j1)  # (ci, cj)
            rows_i = space.scores_from_dots(dots, j0, j1, axis=1).numpy()  # block i's rows
            rows_j = space.scores_from_dots(dots, i0, i1, axis=0).numpy()  # block j's, by column
            kernels.merge_rows(rows_i, vals[i0:i1], cols[i0:i1], i0, j0, False)
            kernels.merge_cols(rows_j, vals[j0:j1], cols[j0:j1], i0, j0, False)
        block_v, block_c = vals[i0:i1], cols[i0:i1]
        kernels.sort_heaps(block_v, block_c)
        yield i0, i1, torch.from_numpy(block_v), torch.from_numpy(block_c.astype(np.int64))


def _faiss_candidates(
    space: _Space, q0: int, q1: int, k1: int, exclude_self: bool, index: faiss.Index
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k1 distances (c, k1) and columns of query rows q0:q1 from a faiss index."""
    want = k1 + 1 if exclude_self else k1
    q = space.query[q0:q1].cpu().numpy()
    if space.distance == "hamming":
        q = _pack_for_faiss(q)
    dist, cols = index.search(np.ascontiguousarray(q), want)  # (c, want) each
    dist_t = torch.from_numpy(np.asarray(dist, dtype=np.float32))
    cols_t = torch.from_numpy(cols.astype(np.int64))
    if exclude_self:  # drop the query itself, or the last column where it was not returned
        own = torch.arange(q0, q1)[:, None]
        is_own = cols_t == own
        drop = torch.where(is_own.any(1), is_own.int().argmax(1), torch.full_like(own[:, 0], k1))
        keep = torch.ones_like(is_own)
        keep[torch.arange(q1 - q0), drop] = False
        dist_t = dist_t[keep].view(q1 - q0, k1)
        cols_t = cols_t[keep].view(q1 - q0, k1)
    if space.distance == "cosine":
        dist_t = dist_t.neg_().add_(1.0)
    elif space.distance == "inner_product":
        dist_t = dist_t.neg_()
    elif space.distance == "euclidean":
        dist_t = dist_t.clamp_min_(0.0).sqrt_()
    elif space.distance == "squared_euclidean":
        dist_t = dist_t.clamp_min_(0.0)
    return dist_t.to(space.query.device), cols_t.to(space.query.device)


def _pack_for_faiss(signs: np.ndarray) -> np.ndarray:
    """-1/+1 rows (N, bits) as packed uint8 codes, zero-padded to a specialised code size."""
    packed = np.packbits(signs > 0, axis=1)  # (N, ceil(bits / 8))
    size = next((s for s in _FAISS_BINARY_BYTES if s >= packed.shape[1]), None)
    size = size or -(-packed.shape[1] // 8) * 8
    return np.pad(packed, ((0, 0), (0, size - packed.shape[1])))


def _faiss_index(space: _Space) -> faiss.Index:
    """A flat faiss index over the gallery in the space's distance."""
    g = space.gallery.cpu().numpy()
    if space.distance == "hamming":
        codes = _pack_for_faiss(g)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return index
    if space.distance in ("cosine", "inner_product"):
        index = faiss.IndexFlatIP(g.shape[1])
    else:
        index = faiss.IndexFlatL2(g.shape[1])
    index.add(np.ascontiguousarray(g))
    return index


def _resolve_backend(backend: str, space: _Space, full_ranking: bool, same_set: bool) -> str:
    """The backend that will run for ``backend`` (see :func:`iter_knn`)."""
    if backend not in KNN_BACKENDS:
        raise EvaluationInputError(
            f"unknown backend {backend!r}; expected one of {', '.join(KNN_BACKENDS)}"
        )
    if backend == "faiss" and space.query.device.type != "cpu":
        raise EvaluationInputError("backend 'faiss' searches on the CPU; pass CPU inputs")
    if full_ranking:  # needs whole distance rows, which faiss does not expose
        return "torch"
    if space.distance == "hamming":
        return "torch" if backend == "auto" else backend
    if backend == "auto":
        # measured on 2 cores, dim 128: a set against itself (gallery=None, 60k rows, the
        # symmetric search with the fused merges) torch 7.2 s vs faiss IndexFlat 11.8 s; a
        # separate gallery (14k x 12.6k, In-Shop size, no symmetry to use) faiss 0.57 s vs
        # torch 0.86 s. GPUs use torch
        cpu = space.query.device.type == "cpu"
        return "faiss" if cpu and not same_set else "torch"
    return backend


# ---------- the search ----------


@torch.no_grad()
def iter_knn(
    query: ArrayLike,
    gallery: ArrayLike | None,
    k: int,
    distance: str = "cosine",
    exclude_self: bool = False,
    chunk_size: int = 1024,
    backend: str = "auto",
    query_labels: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    full_ranking: bool = False,
) -> Iterator[KnnChunk]:
    """Exact k nearest gallery rows, yielded chunk by chunk of query rows.

    Memory stays bounded: at most ``chunk_size x 4096`` scores while streaming (1024 x 1024
    and the (Q, k + 1) heaps, at most 1 GB, for the symmetric ``gallery=None`` search), and about
    32M distances (128 MB) per block of rows in the full-row pass; the (Q, G) matrix is never
    built. Runs on the device of ``query`` if it is a torch tensor, else on CPU, in float32.
    Ties are broken by lower gallery index, including which tied item makes the cut; the tied
    items left beyond the cut are counted (``tied_beyond``).

    Args:
        query: (Q, D) float rows, or binary codes for ``distance="hamming"`` (see
            :func:`as_sign_bits`).
        gallery: (G, D) rows, or None to search the query set itself.
        k: neighbours wanted per query; clipped to G (G - 1 with ``exclude_self``).
        distance: "cosine" (1 - cos), "inner_product" (minus the dot product), "euclidean",
            "squared_euclidean" or "hamming" (differing bits).
        exclude_self: query and gallery are the same set (leave-one-out); query row i never
            gets gallery row i. Requires Q == G.
        chunk_size: query rows per chunk (faiss gets at least 128000 / D rows, its BLAS
            threshold; the symmetric torch search with ``gallery=None`` uses its own blocks).
        backend: "torch", "faiss" or "auto" (on CPU: torch's symmetric search for a set
            against itself, faiss with a separate gallery; torch on other devices; measured
            in ``_resolve_backend``). Hamming distances and
            ``full_ranking`` use the exact full-row pass of torch (with "faiss", Hamming lists
            come from faiss and rows with a tie at the cut are redone by that pass).
        query_labels, gallery_labels: int labels (Q,), (G,): enable ``relevant_tied_beyond``
            and ``full_ranking``.
        full_ranking: also return the tie groups of every relevant item over the whole
            ranking (needs labels).

    Raises:
        ValueError: empty or non-2-D input, dimension mismatch, non-finite values, unknown
            distance or backend, or non-positive ``k``/``chunk_size``.
    """
    if distance not in KNN_DISTANCES:
        raise EvaluationInputError(
            f"unknown distance {distance!r}; expected one of {', '.join(KNN_DISTANCES)}"
        )
    k = _check_positive(k, "k")
    chunk_size = _check_positive(chunk_size, "chunk_size")
    space = _prepare(query, query if gallery is None else gallery, distance, gallery is None)
    n_query, n_gallery = space.query.shape[0], space.gallery.shape[0]
    if exclude_self and n_query != n_gallery:
        raise EvaluationInputError(
            f"exclude_self needs query and gallery to be the same set, got {n_query} query "
            f"rows and {n_gallery} gallery rows"
        )
    if full_ranking and query_labels is None:
        raise EvaluationInputError("full_ranking needs query_labels and gallery_labels")
    device = space.query.device
    labels = None
    if query_labels is not None:
        g_lab = query_labels if gallery_labels is None else gallery_labels
        labels = (
            torch.as_tensor(np.asarray(query_labels, np.int64), device=device),
            torch.as_tensor(np.asarray(g_lab, np.int64), device=device),
        )
    k = min(k, n_gallery - 1 if exclude_self else n_gallery)
    used = _resolve_backend(backend, space, full_ranking, gallery is None)
    exact_rows = used == "torch" and (distance == "hamming" or full_ranking)
    if k == 0:  # leave-one-out on a single row: no candidates at all
        none = np.zeros((n_query, 0))
        zeros = np.zeros(n_query, np.int64)
        yield KnnChunk(0, none.astype(np.float32), none.astype(np.int64), zeros, zeros)
        return

    row_block = max(1, min(chunk_size, _ROW_BUDGET // n_gallery))
    if exact_rows:
        for q0 in range(0, n_query, row_block):
            rows = torch.arange(q0, min(q0 + row_block, n_query), device=device)
            yield _chunk(q0, _full_rows(space, rows, k, exclude_self, labels, full_ranking))
        return
    k1 = min(k + 1, n_gallery - 1 if exclude_self else n_gallery)  # one more exposes a tie
    symmetric = gallery is None and used == "torch"
    for q0, q1, dist, cols in _candidate_chunks(
        space, used, k, k1, exclude_self, chunk_size, symmetric
    ):
        dist, cols = _order_ties(dist, cols)  # ascending already (topk or heaps sorted)
        straddle = (
            dist[:, k] == dist[:, k - 1]
            if k1 > k
            else torch.zeros(q1 - q0, dtype=bool, device=device)
        )
        dist, cols = dist[:, :k].contiguous(), cols[:, :k].contiguous()
        tied = torch.zeros(q1 - q0, dtype=torch.int64, device=device)
        rel_tied = tied.clone()
        redo = straddle.nonzero().squeeze(1)
        for r0 in range(0, redo.numel(), row_block):  # exact pass for straddling ties only
            part = redo[r0 : r0 + row_block]
            v, c, t, rt = _full_rows(space, part + q0, k, exclude_self, labels, False)
            dist[part], cols[part], tied[part], rel_tied[part] = v, c, t, rt
        yield _chunk(q0, (dist, cols, tied, rel_tied))


def _candidate_chunks(
    space: _Space,
    used: str,
    k: int,
    k1: int,
    exclude_self: bool,
    chunk_size: int,
    symmetric: bool,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """(q0, q1, distances (c, k1) ascending, gallery columns (c, k1)) for consecutive chunks
    of query rows, from faiss, the symmetric search (a set against itself, on CPU) or the
    streamed torch search."""
    n_query = space.query.shape[0]
    kernels = _kernels(space) if used == "torch" else None
    heap_bytes = 8 * n_query * k1  # the symmetric search keeps every row's heap till the end
    if symmetric and kernels is not None and heap_bytes <= _SYMMETRIC_HEAP_BUDGET:
        for q0, q1, scores, cols in _symmetric_candidates(space, k1, exclude_self, kernels):
            yield q0, q1, space.to_distance(scores, q0, q1), cols
        return
    index = None
    step = chunk_size
    if used == "faiss":
        index = _faiss_index(space)
        # few large searches: faiss parallelises within one call; output bounded by budget
        step = max(chunk_size, -(-_FAISS_BLAS_MIN // space.query.shape[1]), _ROW_BUDGET // 2 // k)
    for q0 in range(0, n_query, step):
        q1 = min(q0 + step, n_query)
        if index is not None:
            yield q0, q1, *_faiss_candidates(space, q0, q1, k1, exclude_self, index)
        else:
            scores, cols = _stream_candidates(space, q0, q1, k1, exclude_self)
            yield q0, q1, space.to_distance(scores, q0, q1), cols


def _chunk(start: int, parts: tuple) -> KnnChunk:
    """A KnnChunk from (distances, columns, tied, relevant tied[, groups]) tensors."""
    dist, cols, tied, rel_tied = (p.cpu().numpy() for p in parts[:4])
    groups = parts[4] if len(parts) > 4 else None
    return KnnChunk(
        start,
        dist.astype(np.float32),
        cols.astype(np.int64),
        tied.astype(np.int64),
        rel_tied.astype(np.int64),
        groups,
    )


def knn_search(
    query: ArrayLike,
    gallery: ArrayLike,
    k: int,
    distance: str = "cosine",
    exclude_self: bool = False,
    chunk_size: int = 1024,
    backend: str = "auto",
) -> KnnResult:
    """Exact k nearest gallery rows for every query row, nearest first (see :func:`iter_knn`).

    Returns:
        KnnResult with (Q, k) float32 distances and int64 indices, ties by lower index.
    """
    chunks = list(iter_knn(query, gallery, k, distance, exclude_self, chunk_size, backend=backend))
    return KnnResult(
        distances=np.concatenate([c.distances for c in chunks]),
        indices=np.concatenate([c.indices for c in chunks]),
    )
