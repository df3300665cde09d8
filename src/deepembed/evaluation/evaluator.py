"""One-call retrieval evaluation: a single exact k-NN search shared by all rank metrics.

The search streams chunk by chunk of queries; each chunk's metrics are accumulated and the
chunk dropped, so memory stays bounded even for Recall@1000 on 60,000 queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.evaluation import metrics as m
from deepembed.evaluation._knn_space import ArrayLike, EvaluationInputError, as_sign_bits
from deepembed.evaluation._ranking import AT_K, RADIUS, Ranking
from deepembed.evaluation.relevance import Relevance, parse_labels

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")

METRIC_NAMES: dict[str, str] = {
    "recall@K": "fraction of queries with at least one relevant item in the top K",
    "precision@K": "mean fraction of relevant items in the top K (precision@N of hashing)",
    "r_precision": "mean fraction of relevant items in the top R, R = relevant count",
    "map@r": "MAP@R of Musgrave et al. (2020): mean over queries of (1/R) sum_{i<=R} P@i rel_i",
    "map": "mean average precision over the whole gallery (mAP@all of hashing papers): "
    "(1/R) sum_i P@i rel_i",
    "map@K": "mean AP@K, IR denominator: sum_{i<=K} P@i rel_i / min(K, R), R = relevant "
    "items in the gallery (a query whose top min(K, R) are all relevant scores 1)",
    "map_hash@K": "mean AP@K of hashing papers (DeepHash-pytorch CalcTopMap, mAP@1000): "
    "sum_{i<=K} P@i rel_i / (relevant items in the top K); 0 when the top K holds none",
    "hamming_precision@R": "distance='hamming' only, R >= 0 a radius: mean fraction of "
    "relevant items among the gallery items within Hamming distance <= R; a query with "
    "none within R counts 0 (DPSH / HashNet 'precision within Hamming radius 2')",
    "mrr": "mean reciprocal rank of the first relevant item over the whole ranking",
    "knn_accuracy@K": "majority vote of the K nearest (order: distance, gallery index) is "
    "right (single labels only)",
    "nmi": "normalized mutual information of labels and seeded k-means (clusters = classes; "
    "single labels only)",
    "ami": "adjusted mutual information of labels and the same k-means clusters",
    "f1": "pairwise F1 of the same k-means clusters (Song et al. 2016)",
}
"""Accepted metric names (patterns; K any positive integer) and what each measures.

Relevant: same label; with (N, C) 0/1 label matrices (multi-label), at least one shared
label. R is the number of relevant gallery items of a query (itself excluded in
leave-one-out); queries with R = 0 are left out of every rank-metric average and counted.

Rank metrics are tie-aware: where gallery items are equally distant from a query, the value
is the expected one over a uniformly random order of the tied items (results say
``"ties": "expected"``); for ``map_hash@K``, whose denominator depends on the order, it is
the expectation of the ratio. ``hamming_precision@R`` takes a set (all items within the
radius) and has no ties. kNN accuracy is the exception: it votes over the first K items in
the order (distance, gallery index), a tie in votes going to the label with the nearest voter.
"""

_PLAIN_RANK = ("r_precision", "map@r", "map", "mrr")


def parse_metrics(metrics: Sequence[str]) -> tuple[list[str], int]:
    """Validated metric names in order, de-duplicated; the largest K of the @K metrics."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    names: list[str] = []
    max_k = 0
    for name in metrics:
        match = AT_K.match(name) if isinstance(name, str) else None
        if match:
            max_k = max(max_k, int(match.group(2)))
        elif name not in (*_PLAIN_RANK, *m.CLUSTER_METRICS) and not (
            isinstance(name, str) and RADIUS.match(name)
        ):
            raise EvaluationInputError(
                f"unknown metric {name!r}; expected {', '.join(METRIC_NAMES)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise EvaluationInputError("no metrics requested")
    return names, max_k


def _rows(x: ArrayLike, name: str) -> int:
    """Number of rows of a 2-D input, with a one-line error for empty sets."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, dim), got shape {shape}")
    if shape[0] == 0:
        what = "nothing to search" if name == "gallery" else "nothing to evaluate"
        raise EvaluationInputError(f"empty {name}: {what}")
    return int(shape[0])


def _check_inputs(names: list[str], relevance: Relevance, distance: str) -> None:
    """Refuse metric requests the inputs cannot serve, with one-line errors."""
    radius = [n for n in names if RADIUS.match(n)]
    if radius and distance != "hamming":
        raise EvaluationInputError(
            f"{radius[0]} counts items within a Hamming radius: it needs distance='hamming' "
            f"(binary codes), got distance={distance!r}"
        )
    single = [n for n in names if n in m.CLUSTER_METRICS or n.startswith("knn_accuracy@")]
    if single:
        relevance.require_single(", ".join(single))


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _cluster_input(query: ArrayLike, distance: str) -> np.ndarray:
    """(Q, D) rows k-means clusters in the retrieval geometry."""
    if distance == "hamming":
        return as_sign_bits(query, "query").numpy()
    emb = _as_numpy(query)
    if not np.isfinite(emb).all():
        raise EvaluationInputError("query contains NaN or infinite values")
    if distance == "cosine":
        emb = F.normalize(torch.from_numpy(emb), dim=1).numpy()
    return emb


def _relevance(
    query_labels: ArrayLike | Sequence,
    gallery: ArrayLike | None,
    gallery_labels: ArrayLike | Sequence | None,
    n_query: int,
) -> Relevance:
    """Parsed, encoded labels of the query and gallery (the query set in leave-one-out)."""
    q_labels = parse_labels(query_labels, n_query, "query_labels")
    if gallery is None:
        if gallery_labels is not None:
            raise EvaluationInputError("gallery_labels given without gallery")
        return Relevance(q_labels, None)
    if gallery_labels is None:
        raise EvaluationInputError("gallery given without gallery_labels")
    g_labels = parse_labels(gallery_labels, _rows(gallery, "gallery"), "gallery_labels")
    return Relevance(q_labels, g_labels)


def evaluate(
    query: ArrayLike,
    query_labels: ArrayLike | Sequence,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Sequence | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    distance: str = "cosine",
    backend: str = "auto",
    chunk_size: int = 1024,
    seed: int = 0,
    primary_metric: str | None = None,
) -> dict[str, float | int | str]:
    """Retrieval and clustering metrics of query embeddings against a gallery.

    One exact k-NN search feeds every rank metric, with k the largest K requested (and the
    largest relevant count R for ``r_precision`` / ``map@r``); ``map`` and ``mrr`` also take
    the tie groups of every relevant item from the same pass, and ``hamming_precision@R``
    the per-distance counts of every Hamming row. Hamming codes on CPU (backend "auto" or
    "torch") take every rank metric from those counts, one tie group per distance, counted
    by popcount kernels in one pass (lists are searched only for ``knn_accuracy@K``); the
    values are the same. Queries with no relevant item in the gallery
    are left out of every average and counted. Rank metrics are expected values over random
    orders of tied items (see :data:`METRIC_NAMES`). Clustering metrics
    share one seeded k-means (greedy k-means++, restarts keeping the lowest inertia, see
    :mod:`deepembed.evaluation.clustering`) of the query rows (L2-normalised for cosine,
    -1/+1 for Hamming).

    Args:
        query: (Q, D) query embeddings (numpy or torch), or binary codes for Hamming.
        query_labels: (Q,) class label of each query, or a (Q, C) 0/1 label matrix
            (multi-label: relevant = at least one shared label; rank metrics and
            ``hamming_precision@R`` only).
        gallery: (G, D) gallery rows, or None for leave-one-out on the queries (each query
            searches all other queries: CUB, Cars, SOP).
        gallery_labels: (G,) labels, or (G, C) with query label matrices; required exactly
            when ``gallery`` is given.
        metrics: names from :data:`METRIC_NAMES`.
        distance: "cosine", "inner_product", "euclidean", "squared_euclidean" or "hamming"
            (packed uint8, bool, {0,1} or {-1,+1} codes).
        backend: k-NN backend, "auto", "torch" or "faiss" (same neighbours).
        chunk_size: query rows per search chunk.
        seed: k-means seed.
        primary_metric: the metric a caller should select models on; default "map@r" if
            requested, else the first metric.

    Returns:
        A flat dict: ``{metric: float}`` in request order, then ``protocol``
        ("leave-one-out" or "query-gallery"), ``distance``, ``ties`` ("expected"), ``k`` (the
        neighbours searched), ``num_queries`` (queries averaged over), ``num_queries_excluded``
        (queries without a relevant item) and ``primary_metric``.

    Raises:
        ValueError: unknown metric, empty query or gallery, label/row count mismatch, bad
            embeddings, no query with a relevant gallery item when rank metrics are asked,
            ``hamming_precision@R`` without Hamming distance, or multi-label input with
            clustering metrics or kNN accuracy.
    """
    names, max_k = parse_metrics(metrics)
    if primary_metric is not None and primary_metric not in names:
        raise EvaluationInputError(f"primary_metric {primary_metric!r} is not among the metrics")
    n_query = _rows(query, "query")
    relevance = _relevance(query_labels, gallery, gallery_labels, n_query)
    loo = relevance.loo
    _check_inputs(names, relevance, distance)
    q_codes = relevance.query

    results: dict[str, float] = {}
    rank_names = [n for n in names if n not in m.CLUSTER_METRICS]
    n_used, n_excluded, k = n_query, 0, 0
    if rank_names:
        ranking = Ranking.plan(query, gallery, relevance, rank_names, max_k, distance, backend)
        n_used, k = int(ranking.usable.sum()), ranking.k
        n_excluded = n_query - n_used
        sums = dict.fromkeys(rank_names, 0.0)
        for _, values in ranking.blocks(chunk_size):
            for name, v in values.items():
                sums[name] += float(v.sum())
        results = {name: total / n_used for name, total in sums.items()}
    cluster_names = tuple(n for n in names if n in m.CLUSTER_METRICS)
    if cluster_names:
        emb = _cluster_input(query, distance)
        results |= m.clustering_scores(emb, q_codes, cluster_names, seed=seed)

    out: dict[str, float | int | str] = {name: float(results[name]) for name in names}
    out["protocol"] = "leave-one-out" if loo else "query-gallery"
    out["distance"] = distance
    out["ties"] = "expected"
    out["k"] = k
    out["num_queries"] = n_used
    out["num_queries_excluded"] = n_excluded
    out["primary_metric"] = primary_metric or ("map@r" if "map@r" in names else names[0])
    return out


def per_query_scores(
    query: ArrayLike,
    query_labels: ArrayLike | Sequence,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Sequence | None = None,
    metrics: Sequence[str] = ("map@r",),
    distance: str = "cosine",
    backend: str = "auto",
    chunk_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Every query's value of rank metrics, from the same search as :func:`evaluate`.

    Arguments as for :func:`evaluate` (rank metrics only). Returns ``{metric: (Q,) float64}``
    whose means over the finite entries are ``evaluate``'s figures; a query with no relevant
    item in the gallery gets NaN (``evaluate`` leaves it out of its averages).
    """
    names, max_k = parse_metrics(metrics)
    clustering = [n for n in names if n in m.CLUSTER_METRICS]
    if clustering:
        raise EvaluationInputError(f"{clustering[0]} is a clustering metric, not a per-query one")
    n_query = _rows(query, "query")
    relevance = _relevance(query_labels, gallery, gallery_labels, n_query)
    _check_inputs(names, relevance, distance)
    ranking = Ranking.plan(query, gallery, relevance, names, max_k, distance, backend)
    out = {name: np.full(n_query, np.nan) for name in names}
    for rows, values in ranking.blocks(chunk_size):
        for name, v in values.items():
            out[name][rows] = v
    return out
