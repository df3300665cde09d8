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

Hamming searches on CPU (backend "auto" or "torch") instead run popcount kernels on codes
packed into 64-bit words (``_hamming``): one pass over the gallery per query row gives its k
nearest by (distance, index), the tied items at the cut and, with labels, the per-distance
counts of all and of relevant items that whole Hamming rankings reduce to. Tiny searches
(fewer than ``_HAMMING_MIN_PAIRS`` pairs) keep the torch pass, which has no kernels to load.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch

from deepembed.evaluation._knn_faiss import _faiss_candidates, _faiss_index
from deepembed.evaluation._knn_hamming import _hamming_kernels_apply, _hamming_knn
from deepembed.evaluation._knn_rows import _full_rows, _order_ties
from deepembed.evaluation._knn_space import (
    ArrayLike,
    EvaluationInputError,
    KnnChunk,
    KnnResult,
    _check_positive,
    _prepare,
    _Space,
)

KNN_DISTANCES = ("cosine", "inner_product", "euclidean", "squared_euclidean", "hamming")
KNN_BACKENDS = ("auto", "torch", "faiss")

_ROW_BUDGET = 1 << 25  # distance entries in one full-row block (128 MB of float32)
_GALLERY_BLOCK = 4096  # gallery rows per streamed block: a 1024 x 4096 block stays in cache
_PAIR_BLOCK = 1024  # rows per block of the symmetric search: 4 MB of dot products, in cache
_SYMMETRIC_HEAP_BUDGET = 1 << 30  # bytes of (N, k + 1) heaps; beyond it, the streamed search
_CPU_KERNELS = True  # merge on CPU with the fused numba kernels (tests turn it off)
_FAISS_BLAS_MIN = 128_000  # faiss uses BLAS only when n_queries * dim >= this


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
    histograms: bool = False,
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
            in ``_resolve_backend``). Hamming distances on CPU with "auto" or "torch" run
            the popcount kernels of ``_hamming`` (one pass per query row, no distance
            matrix; tiny searches excepted, see ``_HAMMING_MIN_PAIRS``); otherwise Hamming
            distances and ``full_ranking`` use the exact full-row pass of torch (with
            "faiss", Hamming lists come from faiss and rows with a tie at the cut are redone
            by that pass).
        query_labels, gallery_labels: int labels (Q,), (G,), or (Q, C), (G, C) 0/1 label
            matrices (relevant: at least one shared label): enable ``relevant_tied_beyond``,
            ``full_ranking`` and ``histograms``.
        full_ranking: also return the tie groups of every relevant item over the whole
            ranking (needs labels).
        histograms: Hamming only: also return, per query, how many gallery items (and how
            many relevant ones) lie at each distance 0..bits (needs labels).

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
    if distance == "hamming" and _hamming_kernels_apply(query, gallery, backend):
        yield from _hamming_knn(
            query, gallery, k, exclude_self, chunk_size, query_labels, gallery_labels,
            full_ranking, histograms,
        )  # fmt: skip
        return
    space = _prepare(query, query if gallery is None else gallery, distance, gallery is None)
    n_query, n_gallery = space.query.shape[0], space.gallery.shape[0]
    if exclude_self and n_query != n_gallery:
        raise EvaluationInputError(
            f"exclude_self needs query and gallery to be the same set, got {n_query} query "
            f"rows and {n_gallery} gallery rows"
        )
    if (full_ranking or histograms) and query_labels is None:
        raise EvaluationInputError("full_ranking needs query_labels and gallery_labels")
    if histograms and distance != "hamming":
        raise EvaluationInputError("distance histograms need distance='hamming'")
    device = space.query.device
    labels = None
    if query_labels is not None:
        g_lab = query_labels if gallery_labels is None else gallery_labels
        labels = (_label_tensor(query_labels, device), _label_tensor(g_lab, device))
    k = min(k, n_gallery - 1 if exclude_self else n_gallery)
    used = _resolve_backend(backend, space, full_ranking or histograms, gallery is None)
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
            yield _chunk(
                q0, _full_rows(space, rows, k, exclude_self, labels, full_ranking, histograms)
            )
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
            v, c, t, rt, *_ = _full_rows(space, part + q0, k, exclude_self, labels, False)
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


def _label_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,) int64 labels, or a (N, C) 0/1 label matrix as float32 (relevance by products)."""
    arr = np.asarray(labels)
    if arr.ndim == 2:
        return torch.as_tensor(arr.astype(np.float32), device=device)
    return torch.as_tensor(arr.astype(np.int64), device=device)


def _chunk(start: int, parts: tuple) -> KnnChunk:
    """A KnnChunk from (distances, columns, tied, relevant tied[, groups, counts, relevant
    counts]) tensors (None where not asked for)."""
    dist, cols, tied, rel_tied = (p.cpu().numpy() for p in parts[:4])
    groups, counts, rel_counts = (*parts[4:], None, None, None)[:3]
    return KnnChunk(
        start,
        dist.astype(np.float32),
        cols.astype(np.int64),
        tied.astype(np.int64),
        rel_tied.astype(np.int64),
        groups,
        None if counts is None else counts.cpu().numpy(),
        None if rel_counts is None else rel_counts.cpu().numpy(),
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
