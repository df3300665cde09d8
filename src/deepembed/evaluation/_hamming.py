"""Hamming search on packed 64-bit words: popcount kernels (numba) for the k nearest codes and
for the per-distance counts that whole Hamming rankings reduce to.

Codes are packed into (N, W) uint64 words, zero-padded to whole words (48-bit codes take one
word, as 64-bit ones do: padding bits are zero on both sides, so distances are unchanged and
no code length has a slow path). Each distance is W XORs and popcounts; no (Q, G) matrix is
ever built:

* ``count_*`` kernels: per query row, how many gallery items (and how many relevant ones)
  lie at each distance 0..bits. Integer distances tie a lot, and these counts are exactly
  the tie groups of the whole ranking (see ``hashing.groups_from_histograms``), which is
  all every tie-aware rank metric needs. With one label per item the gallery is sorted by
  label once, so a query's relevant items are one contiguous run: the relevant counts cost
  a pass over that run, not a label test per pair.
* ``k_nearest``: per query row, the k nearest by (distance, gallery index) in one pass, and
  how many unlisted items tie with the last listed one. Scanning in index order, an item
  can only enter the final list if it is strictly nearer than the k-th nearest seen so far
  (a tie loses to the earlier index), so blocks of items are first tested with one vector
  compare against that threshold and only the rare block with a candidate is looked at.

The kernels run in parallel over query rows (numba threads; ``set_threads`` follows torch's
thread count, as the merge kernels in ``_select`` do).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

_TILE = 64  # gallery items per vector-compare block of the k-nearest scan
_LIST_BUDGET = 1 << 25  # listed neighbours per chunk of query rows (bounds the (c, k) lists)
_LANES = 4  # interleaved histograms per row: back-to-back increments of one bin do not stall


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 as an int64 (LLVM ctpop: one instruction, vectorised where the
    CPU can). Signed, so that comparisons with int64 thresholds stay integer: numba compares
    uint64 with int64 in float64."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


def _distance(a, b):  # pragma: no cover - replaced by the overload inside kernels
    """Differing bits of two codes: uint64 words (one-word codes) or rows of words."""
    raise NotImplementedError


@overload(_distance)  # LLVM inlines it
def _distance_impl(a, b):
    if isinstance(a, types.Integer):
        return lambda a, b: _popcount(a ^ b)

    def rows(a, b):
        d = 0
        for w in range(a.shape[0]):
            d += _popcount(a[w] ^ b[w])
        return d

    return rows


def set_threads() -> None:
    """numba threads = torch's thread count (within numba's pool)."""
    import torch

    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


# ---------- per-distance counts ----------


@nb.njit(inline="always")
def _count_run(x, g, lo: int, hi: int, lanes: np.ndarray) -> None:
    """Add the distances of x to gallery items lo:hi into ``lanes`` (4 interleaved rows)."""
    j = lo
    while j + _LANES <= hi:
        lanes[0, _distance(x, g[j])] += 1
        lanes[1, _distance(x, g[j + 1])] += 1
        lanes[2, _distance(x, g[j + 2])] += 1
        lanes[3, _distance(x, g[j + 3])] += 1
        j += _LANES
    while j < hi:
        lanes[0, _distance(x, g[j])] += 1
        j += 1


@nb.njit(parallel=True, cache=True, nogil=True)
def count_sorted(q, g, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, rel: np.ndarray):
    """Per query row i: counts[i, d] = gallery items at distance d, rel[i, d] = those among
    the relevant run g[lo[i]:hi[i]] (a gallery sorted by label).

    Args:
        q: (c,) uint64 or (c, W) query codes; g: (G,) or (G, W) gallery codes.
        lo, hi: (c,) int64 bounds of each row's relevant run (lo == hi: none).
        counts, rel: (c, bits + 1) int64 outputs.
    """
    width = counts.shape[1]
    for i in nb.prange(q.shape[0]):
        lanes = np.zeros((_LANES, width), np.int64)
        _count_run(q[i], g, 0, g.shape[0], lanes)
        for d in range(width):
            counts[i, d] = lanes[0, d] + lanes[1, d] + lanes[2, d] + lanes[3, d]
        lanes[:] = 0
        _count_run(q[i], g, lo[i], hi[i], lanes)
        for d in range(width):
            rel[i, d] = lanes[0, d] + lanes[1, d] + lanes[2, d] + lanes[3, d]


@nb.njit(parallel=True, cache=True, nogil=True)
def count_shared(q, g, q_words, g_words, counts: np.ndarray, rel: np.ndarray):
    """Per query row i: counts[i, d] = gallery items at distance d, rel[i, d] = those sharing
    a label with the query (label sets as (N, L) uint64 words: relevant when any AND is
    non-zero).

    Args:
        q, g: query (c, ...) and gallery (G, ...) codes as in :func:`count_sorted`.
        q_words, g_words: (c, L) and (G, L) uint64 label words.
        counts, rel: (c, bits + 1) int64 outputs.
    """
    width = counts.shape[1]
    n_words = q_words.shape[1]
    for i in nb.prange(q.shape[0]):
        lanes = np.zeros((2, 2 * width), np.int64)  # bins: distance + width * relevant
        x = q[i]
        for j in range(g.shape[0]):
            shared = False
            for w in range(n_words):
                shared |= (q_words[i, w] & g_words[j, w]) != 0
            lanes[j & 1, _distance(x, g[j]) + width * shared] += 1
        for d in range(width):
            rel[i, d] = lanes[0, width + d] + lanes[1, width + d]
            counts[i, d] = lanes[0, d] + lanes[1, d] + rel[i, d]


# ---------- the k nearest ----------


@nb.njit(cache=True, nogil=True)
def _compact(dist: np.ndarray, cols: np.ndarray, n: int, t: int):
    """Keep the candidates at distance <= t (in order); grow the buffers if still over half
    full. Returns (dist, cols, n)."""
    m = 0
    for h in range(n):
        if dist[h] <= t:
            dist[m] = dist[h]
            cols[m] = cols[h]
            m += 1
    if 2 * m > dist.shape[0]:
        grown_d = np.empty(2 * dist.shape[0], dist.dtype)
        grown_c = np.empty(2 * cols.shape[0], cols.dtype)
        grown_d[:m] = dist[:m]
        grown_c[:m] = cols[:m]
        return grown_d, grown_c, m
    return dist, cols, m


@nb.njit(parallel=True, cache=True, nogil=True)
def k_nearest(q, g, k: int, bits: int, own0: int, cap: int, out_d, out_i, out_tied):
    """The k nearest gallery items of each query row by (distance, gallery index).

    Args:
        q: (c,) uint64 or (c, W) query codes; g: (G,) or (G, W) gallery codes.
        k: 1 <= k <= the candidates of every row (G, or G - 1 with ``own0 >= 0``).
        bits: code length; distances are 0..bits.
        own0: leave-one-out: row i never gets gallery item own0 + i; -1: no exclusion.
        cap: initial candidates buffered per row (>= 1; compacted, then grown, when full).
        out_d: (c, k) int64 distances, ascending; out_i: (c, k) int64 gallery indices.
        out_tied: (c,) int64 unlisted items at the distance of the last listed one.
    """
    n_gallery = g.shape[0]
    for i in nb.prange(q.shape[0]):
        x = q[i]
        own = own0 + i if own0 >= 0 else -1
        hist = np.zeros(bits + 2, np.int64)  # admitted candidates per distance
        cand_d = np.empty(cap, np.int64)
        cand_i = np.empty(cap, np.int64)
        n = 0
        t = bits + 1  # the k-th nearest distance so far (bits + 1: fewer than k seen)
        live = 0  # admitted candidates at distance <= t
        beyond = 0  # items seen at distance == t after t was reached (never admitted)
        for j0 in range(0, n_gallery, _TILE):
            j1 = min(j0 + _TILE, n_gallery)
            tile = g[j0:j1]
            near = 0
            for j in range(tile.shape[0]):  # one vector compare per block of items
                near += _distance(x, tile[j]) <= t
            if near == 0:
                continue
            for j in range(j0, j1):
                d = _distance(x, g[j])
                if d > t or j == own:
                    continue
                if d == t:  # ties the k-th: an earlier index holds the place
                    beyond += 1
                    continue
                if n == cand_d.shape[0]:
                    cand_d, cand_i, n = _compact(cand_d, cand_i, n, t)
                cand_d[n] = d
                cand_i[n] = j
                n += 1
                hist[d] += 1
                live += 1
                while live - hist[t] >= k:  # k candidates nearer than t: t moves in
                    live -= hist[t]
                    t -= 1
                    beyond = 0  # every item seen at the new t was admitted
        # candidates at distance < t are all listed; the earliest ones at t fill the rest
        slots = k - (live - hist[t])
        out_tied[i] = hist[t] - slots + beyond
        start = np.zeros(t + 1, np.int64)
        total = 0
        for d in range(t + 1):
            start[d] = total
            total += hist[d]
        for h in range(n):
            d = cand_d[h]
            if d > t:
                continue
            if d == t:
                if slots == 0:
                    continue
                slots -= 1
            out_d[i, start[d]] = d
            out_i[i, start[d]] = cand_i[h]
            start[d] += 1


# ---------- the search: chunks of query rows ----------


def code_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """(N, W) uint64 words of codes from :func:`_knn_space.binary_codes` (packed uint8 rows,
    or bool rows of ``bits`` bits), zero-padded to whole words; (N,) for one-word codes."""
    packed = codes if codes.dtype == np.uint8 else np.packbits(codes, axis=1)
    pad = -packed.shape[1] % 8
    words = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)
    return np.ascontiguousarray(words[:, 0]) if words.shape[1] == 1 else words


def _set_bits(words: np.ndarray) -> np.ndarray:
    """(c,) int64 set bits of each row of (c,) or (c, W) uint64 words."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(len(words), -1)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int64)


class _Labels:
    """What the count kernels need of the labels: the gallery sorted by label and each query's
    run in it (one label per item), or label sets as uint64 words (multi-label); ``codes``
    is the gallery in the order the count kernels read it."""

    def __init__(self, query: np.ndarray, gallery: np.ndarray, g_words: np.ndarray):
        from deepembed.evaluation.relevance import _words

        query, gallery = np.asarray(query), np.asarray(gallery)
        self.multi = query.ndim == 2
        if self.multi:
            q_bool, g_bool = query.astype(bool), gallery.astype(bool)
            self.q_words, self.g_words = _words(q_bool), _words(g_bool)
            self.codes = g_words
            return
        self.query, self.gallery = query.astype(np.int64), gallery.astype(np.int64)
        order = np.argsort(self.gallery, kind="stable")
        sorted_labels = self.gallery[order]
        self.codes = np.ascontiguousarray(g_words[order])  # the gallery sorted by label
        self.lo = np.searchsorted(sorted_labels, self.query, side="left").astype(np.int64)
        self.hi = np.searchsorted(sorted_labels, self.query, side="right").astype(np.int64)

    def count(self, q: np.ndarray, q0: int, q1: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(c, bits + 1) counts of all and of relevant gallery items per distance, rows q0:q1
        (the query itself still counted)."""
        counts = np.zeros((q1 - q0, bits + 1), np.int64)
        rel = np.zeros_like(counts)
        if self.multi:
            count_shared(q, self.codes, self.q_words[q0:q1], self.g_words, counts, rel)
        else:
            count_sorted(q, self.codes, self.lo[q0:q1], self.hi[q0:q1], counts, rel)
        return counts, rel

    def hits(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(p, k) bool: gallery item cols[i, j] is relevant to query rows[i]."""
        if self.multi:
            common = self.q_words[rows][:, None, :] & self.g_words[cols]
            return (common != 0).any(axis=2)
        return self.gallery[cols] == self.query[rows][:, None]


def iter_chunks(
    q_codes: np.ndarray,
    g_codes: np.ndarray | None,
    bits: int,
    k: int,
    exclude_self: bool,
    chunk_size: int,
    query_labels: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    counts: bool = False,
):
    """KnnChunks of a Hamming search (see :func:`knn.iter_knn`): the k nearest of each query
    row (none for k == 0), the unlisted items tied with the last listed one (and, with labels,
    the relevant ones among them), and with ``counts`` the per-distance counts of all and of
    relevant gallery items (the query itself excluded in leave-one-out).

    Args:
        q_codes, g_codes: validated codes (:func:`_knn_space.binary_codes`) of the same
            length; ``g_codes`` None: the query set itself.
        bits: the code length.
        k: listed neighbours per row, 0 <= k <= the candidates of every row.
        query_labels, gallery_labels: (Q,) int / (Q, C) 0/1 labels (gallery_labels None:
            the query labels); required for ``counts``.
    """
    from deepembed.evaluation._knn_space import KnnChunk

    set_threads()
    q = code_words(q_codes, bits)
    g = q if g_codes is None else code_words(g_codes, bits)
    labels = None
    if query_labels is not None:
        g_lab = query_labels if gallery_labels is None else gallery_labels
        labels = _Labels(query_labels, g_lab, g)
    need_counts = labels is not None and (counts or k > 0)
    n_query = q.shape[0]
    step = max(1, min(chunk_size, _LIST_BUDGET // max(k, 1)))
    for q0 in range(0, n_query, step):
        q1 = min(q0 + step, n_query)
        c = q1 - q0
        block = q[q0:q1]
        hist = rel = None
        if need_counts:
            assert labels is not None
            hist, rel = labels.count(block, q0, q1, bits)
            if exclude_self:  # gallery item q0 + i is query row i itself: not counted
                own = np.arange(q0, q1)
                at = _set_bits(block ^ g[q0:q1])  # its distance: 0 for the same set
                hist[np.arange(c), at] -= 1
                rel[np.arange(c), at] -= labels.hits(own, own[:, None])[:, 0]
        dist = np.zeros((c, k), np.int64)
        cols = np.zeros((c, k), np.int64)
        tied = np.zeros(c, np.int64)
        rel_tied = np.zeros(c, np.int64)
        if k > 0:
            own0 = q0 if exclude_self else -1
            k_nearest(block, g, k, bits, own0, 2 * k + 256, dist, cols, tied)
            if labels is not None:
                rows = np.arange(q0, q1)
                last = dist[:, -1:]  # (c, 1)
                listed_rel = (labels.hits(rows, cols) & (dist == last)).sum(axis=1)
                rel_tied = rel[np.arange(c), last[:, 0]] - listed_rel  # type: ignore[index]
        yield KnnChunk(
            q0,
            dist.astype(np.float32),
            cols,
            tied,
            rel_tied,
            None,
            hist if counts else None,
            rel if counts else None,
        )
