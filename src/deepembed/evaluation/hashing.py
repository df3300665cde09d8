"""Metrics of the hashing literature, tie-aware and exact.

* ``map_hash_at_k``: AP over the top K divided by the relevant items retrieved in the top K
  (DeepHash-pytorch's ``CalcTopMap``), as an expected value over random orders of tied items.
  Its denominator depends on the order, so the expectation is taken of the ratio: conditioned
  on how many relevant items the tie group cut at K brings into the top K (hypergeometric),
  everything else is linear.
* ``hamming_precision``: precision of the set of gallery items within a Hamming radius.
* ``groups_from_histograms``: the whole ranking of a Hamming query as tie groups, one per
  distance 0..bits, from the per-distance counts of the search (``iter_knn(histograms=True)``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln

from deepembed.evaluation.metrics import _check_k, _precision_sum, _taken
from deepembed.evaluation.ties import TieGroups

_H_BLOCK = 4096  # hypergeometric outcomes per block (rows x block entries)


def groups_from_histograms(counts: np.ndarray, relevant: np.ndarray) -> TieGroups:
    """Tie groups of whole Hamming rankings from (Q, bits + 1) per-distance counts of all
    gallery items and of the relevant ones (group d = the items at distance d)."""
    counts = np.asarray(counts, np.int64)
    relevant = np.asarray(relevant, np.int64)
    return TieGroups(
        np.cumsum(counts, axis=1) - counts,
        counts,
        relevant,
        np.cumsum(relevant, axis=1) - relevant,
    )


def hamming_precision(counts: np.ndarray, relevant: np.ndarray, radius: int) -> np.ndarray:
    """(Q,) fraction of relevant items among the gallery items within Hamming distance
    <= ``radius``; 0 for a query with no item within the radius (the convention of DPSH,
    HashNet and DeepHash-pytorch for "precision within Hamming radius 2").

    Args:
        counts: (Q, bits + 1) gallery items at each distance (the query itself excluded).
        relevant: (Q, bits + 1) relevant items at each distance.
        radius: a non-negative integer; a radius >= bits takes the whole gallery.
    """
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    upto = min(int(radius), counts.shape[1] - 1) + 1
    within = counts[:, :upto].sum(axis=1)
    hits = relevant[:, :upto].sum(axis=1)
    return np.where(within > 0, hits / np.maximum(within, 1), 0.0)


def _block_sum(s, t, c, a, n, r, lo, hi) -> np.ndarray:
    """Expected AP numerator-over-denominator for rows whose group (start s, size n, r
    relevant, c relevant before it) is cut after t ranks, with a = the expected precision
    sum of the complete groups before it: sum over h (relevant items among the t kept ranks,
    hypergeometric on lo..hi) of P(h) * (a + B(h)) / (c + h). All arguments are (p,) floats.

    B(h) is the expected sum of P@i over the kept ranks holding relevant items when h of
    the t kept ranks are relevant, uniformly placed: ``_precision_sum``'s group formula with
    (n, r) -> (t, h): (h/t) * ((c + 1) dH + (h - 1)/(t - 1) * (t - (s + 1) dH)).
    """
    d_h = np.where(t == 1, 1.0 / (s + 1.0), digamma(s + t + 1.0) - digamma(s + 1.0))
    log_total = gammaln(n + 1) - gammaln(t + 1) - gammaln(n - t + 1)  # log C(n, t)
    out = np.zeros(s.shape[0])
    span = int((hi - lo).max()) + 1
    for x0 in range(0, span, _H_BLOCK):  # blocks of outcomes bound the memory
        h = lo[:, None] + np.arange(x0, min(x0 + _H_BLOCK, span))[None, :]  # (p, b)
        ok = h <= hi[:, None]
        h = np.where(ok, h, lo[:, None])
        col = lambda v: v[:, None]  # noqa: E731
        log_p = (
            gammaln(col(r) + 1)
            - gammaln(h + 1)
            - gammaln(col(r) - h + 1)
            + gammaln(col(n - r) + 1)
            - gammaln(col(t) - h + 1)
            - gammaln(col(n - r - t) + h + 1)
            - col(log_total)
        )
        pair = np.where(col(t) > 1, (h - 1.0) / np.maximum(col(t) - 1.0, 1.0), 0.0)
        inner = (col(c) + 1.0) * col(d_h) + pair * (col(t) - (col(s) + 1.0) * col(d_h))
        b_h = h / col(t) * inner
        found = col(c) + h
        value = np.where(found > 0, (col(a) + b_h) / np.maximum(found, 1.0), 0.0)
        out += np.where(ok, np.exp(log_p) * value, 0.0).sum(axis=1)
    return out


def map_hash_at_k(groups: TieGroups, k: int) -> np.ndarray:
    """(Q,) AP@K of the hashing literature: sum_{i<=k} P@i rel_i / (relevant items in the top
    k), 0 when the top k holds none (DeepHash-pytorch ``CalcTopMap``, "mAP@1000"/"mAP@5000").

    The value is the expectation over uniformly random orders of tied items, ratio included:
    a tie group cut at k brings h of its relevant items into the top k with hypergeometric
    probability, and the AP given h is exact (see :func:`_block_sum`). ``groups`` must list
    every item of the top k (``groups_from_list`` with ``tied_beyond``, or whole rankings).
    """
    k = _check_k(k)
    taken = _taken(groups, k)  # (Q, m) ranks of each group inside the top k
    cut = (taken > 0) & (taken < groups.size)  # (Q, m) at most one group per row
    rows, cols = np.nonzero(cut)
    ends = np.full(len(groups), k, np.int64)  # ranks covered by the complete groups
    ends[rows] = groups.start[rows, cols]
    before = _precision_sum(groups, ends)  # (Q,) expected numerator of the complete groups
    complete = groups.start + groups.size <= ends[:, None]  # (Q, m) wholly in the top k
    found = (groups.relevant * complete).sum(axis=1)  # (Q,) relevant items they hold
    out = np.where(found > 0, before / np.maximum(found, 1), 0.0)
    if rows.size:
        s, n, r, c, t = (
            a[rows, cols].astype(np.float64)
            for a in (groups.start, groups.size, groups.relevant, groups.relevant_before, taken)
        )
        lo = np.maximum(0.0, t - (n - r)).astype(np.int64)
        hi = np.minimum(r, t).astype(np.int64)
        out[rows] = _block_sum(s, t, c, before[rows], n, r, lo, hi)
    return out
