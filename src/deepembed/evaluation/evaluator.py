"""One-call retrieval evaluation: a single exact k-NN search shared by all rank metrics.

The search streams chunk by chunk of queries; each chunk's metrics are accumulated and the
chunk dropped, so memory stays bounded even for Recall@1000 on 60,000 queries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.evaluation import metrics as m
from deepembed.evaluation._knn_space import ArrayLike, EvaluationInputError, as_sign_bits
from deepembed.evaluation.knn import iter_knn
from deepembed.evaluation.ties import TieGroups, groups_from_list

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")

METRIC_NAMES: dict[str, str] = {
    "recall@K": "fraction of queries with at least one same-class item in the top K",
    "precision@K": "mean fraction of same-class items in the top K",
    "r_precision": "mean fraction of same-class items in the top R, R = relevant count",
    "map@r": "MAP@R of Musgrave et al. (2020): mean over queries of (1/R) sum_{i<=R} P@i rel_i",
    "map": "mean average precision over the whole ranking: (1/R) sum_i P@i rel_i",
    "map@K": "mean AP@K: sum_{i<=K} P@i rel_i / min(K, R)",
    "mrr": "mean reciprocal rank of the first same-class item over the whole ranking",
    "knn_accuracy@K": "majority vote of the K nearest (order: distance, gallery index) is right",
    "nmi": "normalized mutual information of labels and seeded k-means (clusters = classes)",
    "ami": "adjusted mutual information of labels and the same k-means clusters",
    "f1": "pairwise F1 of the same k-means clusters (Song et al. 2016)",
}
"""Accepted metric names (patterns; K any positive integer) and what each measures.

Rank metrics are tie-aware: where gallery items are equally distant from a query, the value
is the expected one over a uniformly random order of the tied items (results say
``"ties": "expected"``). kNN accuracy is the exception: it votes over the first K items in
the order (distance, gallery index), a tie in votes going to the label with the nearest voter.
"""

_AT_K = re.compile(r"^(recall|precision|map|knn_accuracy)@([1-9][0-9]*)$")
_PLAIN_RANK = ("r_precision", "map@r", "map", "mrr")
_FULL_RANKING = ("map", "mrr")
_METRIC_BLOCK = 1 << 20  # (rows x k) entries per block of per-query metric arrays


def parse_metrics(metrics: Sequence[str]) -> tuple[list[str], int]:
    """Validated metric names in order, de-duplicated; the largest K of the @K metrics."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    names: list[str] = []
    max_k = 0
    for name in metrics:
        match = _AT_K.match(name) if isinstance(name, str) else None
        if match:
            max_k = max(max_k, int(match.group(2)))
        elif name not in (*_PLAIN_RANK, *m.CLUSTER_METRICS):
            raise EvaluationInputError(
                f"unknown metric {name!r}; expected {', '.join(METRIC_NAMES)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise EvaluationInputError("no metrics requested")
    return names, max_k


def _labels(labels: ArrayLike | Sequence, n_rows: int, name: str) -> np.ndarray:
    """Labels as a (N,) numpy array with one entry per embedding row."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise EvaluationInputError(
            f"{name} must have one label per row: expected shape ({n_rows},), got {arr.shape}"
        )
    return arr


def _rows(x: ArrayLike, name: str) -> int:
    """Number of rows of a 2-D input, with a one-line error for empty sets."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, dim), got shape {shape}")
    if shape[0] == 0:
        what = "nothing to search" if name == "gallery" else "nothing to evaluate"
        raise EvaluationInputError(f"empty {name}: {what}")
    return int(shape[0])


def _relevant_counts(query_codes: np.ndarray, gallery_codes: np.ndarray, loo: bool) -> np.ndarray:
    """(Q,) number of gallery items sharing each query's label (self excluded if LOO)."""
    per_class = np.bincount(gallery_codes, minlength=int(query_codes.max()) + 1)
    rel = per_class[query_codes].astype(np.int64)
    return rel - 1 if loo else rel


def _rank_metric(
    name: str, num_candidates: int
) -> Callable[[TieGroups, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Per-query function (groups, full_groups, R, neighbour labels, query labels) -> (q,)."""
    match = _AT_K.match(name)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if kind == "recall":
            return lambda g, fg, r, nl, ql: m.recall_at_k(g, k)
        if kind == "precision":
            return lambda g, fg, r, nl, ql: m.precision_at_k(g, k, num_candidates)
        if kind == "map":
            return lambda g, fg, r, nl, ql: m.map_at_k(g, k, r)
        return lambda g, fg, r, nl, ql: m.knn_accuracy(nl, ql, k)
    return {
        "r_precision": lambda g, fg, r, nl, ql: m.r_precision(g, r),
        "map@r": lambda g, fg, r, nl, ql: m.map_at_r(g, r),
        "map": lambda g, fg, r, nl, ql: m.average_precision(fg, r),
        "mrr": lambda g, fg, r, nl, ql: m.reciprocal_rank(fg),
    }[name]


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
    the tie groups of every relevant item from the same pass. Queries whose class has no item
    in the gallery are left out of every average and counted. Rank metrics are expected
    values over random orders of tied items (see :data:`METRIC_NAMES`). Clustering metrics
    share one seeded k-means (greedy k-means++, restarts keeping the lowest inertia, see
    :mod:`deepembed.evaluation.clustering`) of the query rows (L2-normalised for cosine,
    -1/+1 for Hamming).

    Args:
        query: (Q, D) query embeddings (numpy or torch), or binary codes for Hamming.
        query_labels: (Q,) class label of each query.
        gallery: (G, D) gallery rows, or None for leave-one-out on the queries (each query
            searches all other queries: CUB, Cars, SOP).
        gallery_labels: (G,) labels; required exactly when ``gallery`` is given.
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
            embeddings, or no query with a relevant gallery item when rank metrics are asked.
    """
    names, max_k = parse_metrics(metrics)
    if primary_metric is not None and primary_metric not in names:
        raise EvaluationInputError(f"primary_metric {primary_metric!r} is not among the metrics")
    n_query = _rows(query, "query")
    q_labels = _labels(query_labels, n_query, "query_labels")
    loo = gallery is None
    if loo:
        if gallery_labels is not None:
            raise EvaluationInputError("gallery_labels given without gallery")
        g_labels = q_labels
    else:
        if gallery_labels is None:
            raise EvaluationInputError("gallery given without gallery_labels")
        g_labels = _labels(gallery_labels, _rows(gallery, "gallery"), "gallery_labels")
    # labels of any type -> int codes shared by query and gallery
    both = q_labels if loo else np.concatenate([q_labels, g_labels])
    codes = np.unique(both, return_inverse=True)[1].astype(np.int64).ravel()
    q_codes, g_codes = codes[:n_query], (codes if loo else codes[n_query:])

    results: dict[str, float] = {}
    rank_names = [n for n in names if n not in m.CLUSTER_METRICS]
    n_used, n_excluded, k = n_query, 0, 0
    if rank_names:
        relevant = _relevant_counts(q_codes, g_codes, loo)  # (Q,)
        usable = relevant > 0  # (Q,) queries with something to find
        n_used = int(usable.sum())
        n_excluded = n_query - n_used
        if n_used == 0:
            raise EvaluationInputError(
                "no query has a same-class item in the gallery: rank metrics are undefined"
            )
        k = max(1, max_k)
        if any(n in ("r_precision", "map@r") for n in rank_names):
            k = max(k, int(relevant.max()))
        num_candidates = len(g_codes) - 1 if loo else len(g_codes)
        k = min(k, num_candidates)
        per_query = {name: _rank_metric(name, num_candidates) for name in rank_names}
        sums = dict.fromkeys(rank_names, 0.0)
        for chunk in iter_knn(
            query,
            gallery,
            k,
            distance,
            exclude_self=loo,
            chunk_size=chunk_size,
            backend=backend,
            query_labels=q_codes,
            gallery_labels=g_codes,
            full_ranking=any(n in _FULL_RANKING for n in rank_names),
        ):
            # metric arrays are (rows, k): sub-chunks of ~1M entries keep them small
            step = max(1, _METRIC_BLOCK // max(k, 1))
            for r0 in range(0, len(chunk.indices), step):
                part = np.arange(r0, min(r0 + step, len(chunk.indices)))
                part = part[usable[chunk.start + part]]  # rows with a relevant item
                if part.size == 0:
                    continue
                nb = g_codes[chunk.indices[part]]  # (p, k) labels of the neighbours
                ql, rel = q_codes[chunk.start + part], relevant[chunk.start + part]
                groups = groups_from_list(
                    chunk.distances[part],
                    nb == ql[:, None],
                    chunk.tied_beyond[part],
                    chunk.relevant_tied_beyond[part],
                )
                full = chunk.relevant_groups.select(part) if chunk.relevant_groups else groups
                for name, fn in per_query.items():
                    sums[name] += float(fn(groups, full, rel, nb, ql).sum())
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
