"""Fused compare-and-insert top-k merges for the CPU search (numba kernels).

The torch search on CPU spends more time choosing neighbours than multiplying: ``topk`` and
mask/nonzero merges make several passes over every (rows, columns) block of scores. These
kernels make one pass: each score is compared with its row's current worst kept score, and
only the rare winner is inserted into that row's heap. A symmetric block of scores is read
once by rows and once by columns, so each block product serves both of its blocks' rows.

Each row keeps its best ``k1`` (score, column) pairs as a heap whose root is the worst,
in the total order "higher score first, then lower column": the result is the exact top-k1
with ties broken by lower gallery index, whatever the order the blocks arrive in.

Every kernel takes float32 scores (larger is nearer) and C-contiguous arrays.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_LANES = 64  # interleaved hit counters per row: columns l, l + 64, ... share counter l
_ROWS = 16  # rows per parallel task (one counter array each)


@nb.njit(inline="always")
def _worse(v: float, c: int, rv: float, rc: int) -> bool:
    """(v, c) ranks below (rv, rc): a lower score, or the same score at a higher column."""
    return v < rv or (v == rv and c > rc)


@nb.njit(inline="always")
def _sift(vals: np.ndarray, cols: np.ndarray, r: int, size: int, v: float, c: int) -> None:
    """Put (v, c) at the root of heap row r (its first ``size`` slots) and sift it down."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _worse(vals[r, right], cols[r, right], vals[r, child], cols[r, child]):
            child = right
        if not _worse(vals[r, child], cols[r, child], v, c):
            break
        vals[r, i] = vals[r, child]
        cols[r, i] = cols[r, child]
        i = child
    vals[r, i] = v
    cols[r, i] = c


@nb.njit(inline="always")
def _offer(vals: np.ndarray, cols: np.ndarray, r: int, s: float, col: int, own: int) -> None:
    """Insert (s, col) into heap row r if it beats the row's worst pair and is not ``own``."""
    if col != own and _worse(vals[r, 0], cols[r, 0], s, col):
        _sift(vals, cols, r, vals.shape[1], s, col)


# The hot loops live in their own (not inlined) functions: inside a prange body numba does
# not vectorise them, which made the counting passes ~6x slower.


@nb.njit(cache=True, nogil=True)
def _count_lanes(scores: np.ndarray, i: int, worst: np.ndarray, lane: np.ndarray) -> int:
    """Hits of row i, scores[i, j] >= worst[j], counted in lanes: lane[l] for columns l,
    l + _LANES, ... below the last whole lane row. Returns the total, tail included."""
    b = scores.shape[1]
    full = b - b % _LANES
    lane[:] = 0
    for j0 in range(0, full, _LANES):
        for lo in range(_LANES):
            lane[lo] += scores[i, j0 + lo] >= worst[j0 + lo]
    n = 0
    for lo in range(_LANES):
        n += lane[lo]
    for j in range(full, b):
        n += scores[i, j] >= worst[j]
    return n


@nb.njit(cache=True, nogil=True)
def _hit_columns(scores: np.ndarray, i: int, lane: np.ndarray, out: np.ndarray) -> int:
    """Columns of row i in the lanes that counted a hit, and the tail's, into ``out``;
    returns how many. The caller tests each against the live threshold."""
    b = scores.shape[1]
    full = b - b % _LANES
    n = 0
    for lo in range(_LANES):
        if lane[lo]:
            for j in range(lo, full, _LANES):
                out[n] = j
                n += 1
    for j in range(full, b):
        out[n] = j
        n += 1
    return n


@nb.njit(parallel=True, cache=True, nogil=True)
def merge_rows(
    scores: np.ndarray,
    vals: np.ndarray,
    cols: np.ndarray,
    row0: int,
    col0: int,
    exclude_self: bool,
) -> None:
    """Merge a block of scores into the heaps of its rows, in place.

    Each row is counted against its worst kept score in ``_LANES`` interleaved lanes (plain
    vector compares and adds); only the columns of lanes that counted a hit are then
    looked at one by one.

    Args:
        scores: (c, b) float32 scores of rows row0.. against columns col0...
        vals, cols: (c, k1) float32 / int32 heaps of the block's rows.
        row0, col0: global indices of the block's first row and first column.
        exclude_self: never insert column row0 + i into row i.
    """
    c, b = scores.shape
    for task in nb.prange((c + _ROWS - 1) // _ROWS):
        lane = np.empty(_LANES, dtype=np.int32)
        cand = np.empty(b, dtype=np.int64)
        worst = np.empty(b, dtype=scores.dtype)  # the row's threshold, once per column
        for i in range(task * _ROWS, min(c, task * _ROWS + _ROWS)):
            worst[:] = vals[i, 0]
            if _count_lanes(scores, i, worst, lane) == 0:
                continue
            own = row0 + i if exclude_self else -1
            for h in range(_hit_columns(scores, i, lane, cand)):
                j = cand[h]
                if scores[i, j] >= vals[i, 0]:
                    _offer(vals, cols, i, scores[i, j], col0 + j, own)


@nb.njit(parallel=True, cache=True, nogil=True)
def merge_cols(
    scores: np.ndarray,
    vals: np.ndarray,
    cols: np.ndarray,
    row0: int,
    col0: int,
    exclude_self: bool,
) -> None:
    """Merge a block of scores, transposed, into the heaps of its columns, in place.

    Column j of ``scores`` (c, b) is heap row j of ``vals``/``cols`` (b, k1); its candidates
    are the block's rows, global indices row0... Reading the block by columns is slow, so it
    is read by rows against each column's worst kept score before this block (a superset of
    the winners, found with the lanes of :func:`merge_rows`), and only those hits are then
    offered, column by column, in parallel.
    """
    c, b = scores.shape
    worst = vals[:, 0].copy()  # (b,) each column's worst kept score before this block
    lanes = np.empty((c, _LANES), dtype=np.int32)  # (c, _LANES) each row's lane counts
    counts = np.zeros(c + 1, dtype=np.int64)
    for i in nb.prange(c):
        counts[i + 1] = _count_lanes(scores, i, worst, lanes[i])
    starts = np.cumsum(counts)  # (c + 1,) row i's hits go to starts[i]:starts[i + 1]
    total = starts[c]
    if total == 0:
        return
    hit_rows = np.empty(total, dtype=np.int64)
    hit_cols = np.empty(total, dtype=np.int64)
    for task in nb.prange((c + _ROWS - 1) // _ROWS):
        cand = np.empty(b, dtype=np.int64)
        for i in range(task * _ROWS, min(c, task * _ROWS + _ROWS)):
            p = starts[i]
            if p == starts[i + 1]:
                continue
            for h in range(_hit_columns(scores, i, lanes[i], cand)):
                j = cand[h]
                if scores[i, j] >= worst[j]:
                    hit_rows[p], hit_cols[p] = i, j
                    p += 1
    # group the hits by column (counting sort)
    col_starts = np.zeros(b + 1, dtype=np.int64)
    for h in range(total):
        col_starts[hit_cols[h] + 1] += 1
    col_starts = np.cumsum(col_starts)
    fill = col_starts[:-1].copy()
    by_col = np.empty(total, dtype=np.int64)
    for h in range(total):
        by_col[fill[hit_cols[h]]] = hit_rows[h]
        fill[hit_cols[h]] += 1
    for j in nb.prange(b):
        own = col0 + j if exclude_self else -1
        for h in range(col_starts[j], col_starts[j + 1]):
            i = by_col[h]
            if scores[i, j] >= vals[j, 0]:
                _offer(vals, cols, j, scores[i, j], row0 + i, own)


@nb.njit(parallel=True, cache=True, nogil=True)
def sort_heaps(vals: np.ndarray, cols: np.ndarray) -> None:
    """Sort each heap row in place, best first: higher score, then lower column."""
    n, k = vals.shape
    for r in nb.prange(n):
        for end in range(k - 1, 0, -1):  # heap sort: move the worst to the end, repeat
            last_v, last_c = vals[r, end], cols[r, end]
            vals[r, end], cols[r, end] = vals[r, 0], cols[r, 0]
            _sift(vals, cols, r, end, last_v, last_c)
