"""Precision@N and precision-recall curves over Hamming radii, as hashing papers plot them.

One exact Hamming pass (the popcount kernels of ``_hamming``; ``iter_knn(histograms=True)``
for tiny sets: chunks of query rows, each row's distances to the whole database counted per
distance 0..bits and then dropped) gives every point: per query, how many database items
(and relevant ones) lie at each distance is its whole ranking as tie groups, one group per
distance. The result is JSON-ready (lists of floats, ``None`` where a value is undefined)
for a run's metrics.json; :func:`deepembed.viz.hashing.plot_hashing_curves` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepembed.evaluation._knn_hamming import _hamming_kernels_apply, _iter_hamming
from deepembed.evaluation._knn_space import ArrayLike, EvaluationInputError
from deepembed.evaluation.evaluator import _relevance, _rows
from deepembed.evaluation.hashing import groups_from_histograms
from deepembed.evaluation.knn import iter_knn
from deepembed.evaluation.metrics import expected_hits

DEFAULT_NS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _check_ns(ns: Sequence[int]) -> list[int]:
    """Distinct positive integers, ascending."""
    if isinstance(ns, int):
        ns = (ns,)
    out: set[int] = set()
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise EvaluationInputError(f"ns must hold positive integers, got {n!r}")
        out.add(int(n))
    if not out:
        raise EvaluationInputError("ns is empty: no precision@N to compute")
    return sorted(out)


def hashing_curves(
    query_codes: ArrayLike,
    query_labels: ArrayLike | Sequence,
    db_codes: ArrayLike | None = None,
    db_labels: ArrayLike | Sequence | None = None,
    ns: Sequence[int] = DEFAULT_NS,
    chunk_size: int = 1024,
) -> dict:
    """Precision@N and the precision-recall curve over Hamming radii of binary codes.

    Definitions (relevance and exclusions as in :func:`~deepembed.evaluation.evaluate`:
    same label, or with (N, C) 0/1 label matrices at least one shared label; queries with no
    relevant database item are left out of every average and counted):

    * precision@N: expected fraction of relevant items among the N nearest, over random
      orders of equally distant items (tie-aware, never depends on database order); over
      the whole database where it holds fewer than N items. Equals ``precision@N`` of
      ``evaluate``.
    * radius r = 0..bits: the retrieved set is every database item within Hamming distance
      <= r. recall(r) = mean over queries of |relevant retrieved| / R (0 when nothing is
      retrieved). precision(r) = mean of |relevant retrieved| / |retrieved| over the queries
      that retrieve at least one item; where a query retrieves nothing its precision is
      undefined and it is left out of that radius's mean (``num_queries_retrieving`` counts
      those kept; ``None`` when no query retrieves anything). ``precision_empty_as_zero``
      instead counts such a query as 0 over all queries: the convention of "precision within
      Hamming radius 2" (DPSH, HashNet), equal to ``hamming_precision@r`` of ``evaluate``.
      (DeepHash-pytorch's ``pr_curve`` averages precision over queries with precision > 0,
      which also drops queries that retrieved only irrelevant items; neither value here does.)

    Args:
        query_codes: (Q, bits) binary codes: packed uint8, bool, {0, 1} or {-1, +1}.
        query_labels: (Q,) labels or a (Q, C) 0/1 label matrix.
        db_codes: (G, bits) database codes, or None: leave-one-out on the queries.
        db_labels: (G,) or (G, C) labels; required exactly when ``db_codes`` is given.
        ns: the N of precision@N (distinct, ascending in the result).
        chunk_size: query rows per block of the search.

    Returns:
        ``{"protocol", "distance": "hamming", "ties": "expected", "bits", "database_size",
        "num_queries", "num_queries_excluded", "precision_at_n": {"n": [...], "precision":
        [...]}, "pr_curve": {"radius": [0..bits], "precision": [...], "recall": [...],
        "precision_empty_as_zero": [...], "num_queries_retrieving": [...]},
        "distance_histogram": {"distance": [0..bits], "relevant": [...], "irrelevant":
        [...]}}``: the histogram counts (query, database item) pairs of the queries kept, at
        each Hamming distance, relevant or not (the query itself excluded in leave-one-out).

    Raises:
        EvaluationInputError: bad codes or labels, bad ``ns``, or no query with a relevant
            database item.
    """
    ns = _check_ns(ns)
    n_query = _rows(query_codes, "query")
    relevance = _relevance(query_labels, db_codes, db_labels, n_query)
    relevant = relevance.counts()  # (Q,)
    usable = relevant > 0
    n_used = int(usable.sum())
    if n_used == 0:
        raise EvaluationInputError(
            "no query has a relevant item in the database: the curves are undefined"
        )
    n_db = len(relevance.gallery)
    candidates = n_db - 1 if relevance.loo else n_db
    p_at_n = np.zeros(len(ns))
    sums: dict[str, np.ndarray] = {}
    bits = 0
    if _hamming_kernels_apply(query_codes, db_codes, "torch"):  # the counts, no lists
        chunks = _iter_hamming(
            query_codes,
            db_codes,
            0,
            relevance.loo,
            chunk_size,
            relevance.query,
            relevance.gallery,
            counts=True,
        )
    else:
        chunks = iter_knn(
            query_codes,
            db_codes,
            1,
            "hamming",
            exclude_self=relevance.loo,
            chunk_size=chunk_size,
            backend="torch",
            query_labels=relevance.query,
            gallery_labels=relevance.gallery,
            histograms=True,
        )
    for chunk in chunks:
        rows = chunk.start + np.arange(len(chunk.indices))
        keep = usable[rows]
        counts = chunk.distance_counts[keep]  # (p, bits + 1)
        hits_at = chunk.relevant_distance_counts[keep]
        bits = counts.shape[1] - 1
        groups = groups_from_histograms(counts, hits_at)
        for j, n in enumerate(ns):
            p_at_n[j] += float((expected_hits(groups, n) / min(n, candidates)).sum())
        within = np.cumsum(counts, axis=1)  # (p, bits + 1) retrieved within radius r
        hits = np.cumsum(hits_at, axis=1)
        precision = np.where(within > 0, hits / np.maximum(within, 1), 0.0)
        for name, value in (
            ("precision", precision),
            ("retrieving", within > 0),
            ("recall", hits / relevant[rows][keep][:, None]),
            ("pairs", counts),
            ("relevant_pairs", hits_at),
        ):
            sums[name] = sums.get(name, 0.0) + value.sum(axis=0)
    retrieving = sums["retrieving"].astype(np.int64)
    pairs, relevant_pairs = sums["pairs"].astype(np.int64), sums["relevant_pairs"].astype(np.int64)
    return {
        "protocol": "leave-one-out" if relevance.loo else "query-gallery",
        "distance": "hamming",
        "ties": "expected",
        "bits": bits,
        "database_size": n_db,
        "num_queries": n_used,
        "num_queries_excluded": n_query - n_used,
        "precision_at_n": {"n": ns, "precision": [float(v / n_used) for v in p_at_n]},
        "pr_curve": {
            "radius": list(range(bits + 1)),
            "precision": [
                float(s / c) if c > 0 else None
                for s, c in zip(sums["precision"], retrieving, strict=True)
            ],
            "recall": [float(v / n_used) for v in sums["recall"]],
            "precision_empty_as_zero": [float(v / n_used) for v in sums["precision"]],
            "num_queries_retrieving": [int(c) for c in retrieving],
        },
        "distance_histogram": {
            "distance": list(range(bits + 1)),
            "relevant": [int(v) for v in relevant_pairs],
            "irrelevant": [int(v) for v in pairs - relevant_pairs],
        },
    }
