"""Retrieval and clustering metrics as pure functions on numpy arrays.

Rank metrics take ``neighbour_labels`` (Q, k): the labels of the retrieved gallery items in
rank order, ``query_labels`` (Q,), and where needed ``relevant_counts`` (Q,): how many gallery
items share the query's label (self already excluded in leave-one-out). Queries with no
relevant item must be removed by the caller before averaging; the R-based metrics reject them.
"""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def _hits(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """(Q, k) bool: retrieved item at rank j has the query's label."""
    neighbour_labels = np.asarray(neighbour_labels)
    query_labels = np.asarray(query_labels)
    if neighbour_labels.ndim != 2:
        raise ValueError(f"neighbour_labels must be 2-D (Q, k), got {neighbour_labels.shape}")
    if query_labels.shape != (neighbour_labels.shape[0],):
        raise ValueError(
            f"query_labels must have shape ({neighbour_labels.shape[0]},), got {query_labels.shape}"
        )
    return neighbour_labels == query_labels[:, None]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_counts(relevant_counts: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Validate R per query: (Q,) int64, all >= 1 and <= number of retrieved columns."""
    counts = np.asarray(relevant_counts)
    if counts.shape != (hits.shape[0],):
        raise ValueError(f"relevant_counts must have shape ({hits.shape[0]},), got {counts.shape}")
    counts = counts.astype(np.int64)
    if counts.size and counts.min() < 1:
        raise ValueError("relevant_counts must be >= 1; drop queries without relevant items")
    if counts.size and counts.max() > hits.shape[1]:
        raise ValueError(
            f"need at least max(relevant_counts)={counts.max()} neighbours, got {hits.shape[1]}"
        )
    return counts


def _mean(per_query: np.ndarray) -> float:
    if per_query.size == 0:
        raise ValueError("no queries to average over")
    return float(per_query.mean())


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Recall@K as used in deep metric learning papers.

    Fraction of queries with at least one item of their class among the first k retrieved
    (if fewer than k items were retrieved, all of them count).
    """
    hits = _hits(neighbour_labels, query_labels)[:, : _check_k(k)]  # (Q, <=k)
    return _mean(hits.any(axis=1))


def precision_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the first k retrieved items sharing the label.

    If fewer than k items were retrieved (gallery smaller than k), the fraction is taken over
    the items retrieved.
    """
    hits = _hits(neighbour_labels, query_labels)[:, : _check_k(k)]  # (Q, <=k)
    if hits.shape[1] == 0:
        raise ValueError("no neighbours retrieved")
    return _mean(hits.mean(axis=1))


def r_precision(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, relevant_counts: np.ndarray
) -> float:
    """R-precision: per query, the fraction of relevant items among the first R retrieved,
    R = the query's relevant count; averaged over queries.
    """
    hits = _hits(neighbour_labels, query_labels)  # (Q, k)
    counts = _check_counts(relevant_counts, hits)  # (Q,)
    in_top_r = np.arange(hits.shape[1])[None, :] < counts[:, None]  # (Q, k)
    return _mean((hits & in_top_r).sum(axis=1) / counts)


def map_at_r(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, relevant_counts: np.ndarray
) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020).

    Per query: (1/R) * sum_{i<=R} P@i * rel_i, where rel_i says whether the i-th retrieved
    item is relevant and P@i is the precision of the first i items; averaged over queries.
    """
    hits = _hits(neighbour_labels, query_labels)  # (Q, k)
    counts = _check_counts(relevant_counts, hits)  # (Q,)
    ranks = np.arange(1, hits.shape[1] + 1)  # (k,) 1-based rank i
    precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]  # (Q, k) P@i
    in_top_r = ranks[None, :] <= counts[:, None]  # (Q, k)
    summed = (precision_at_i * (hits & in_top_r)).sum(axis=1)  # (Q,)
    return _mean(summed / counts)


def kmeans_assign(embeddings: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster index (N,) int64 of each row from k-means with ``n_clusters`` centroids.

    Uses ``faiss.Kmeans`` (k-means++ initialisation, 20 Lloyd iterations, one run, seeded)
    because it is much faster than scikit-learn on large embedding sets; k-means++ avoids
    the merged clusters that random initialisation often gives. Points are assigned to their
    nearest centroid.
    """
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))  # (N, D)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array, got shape {x.shape}")
    n_clusters = _check_k(n_clusters)
    if n_clusters > x.shape[0]:
        raise ValueError(f"cannot make {n_clusters} clusters from {x.shape[0]} points")
    kmeans = faiss.Kmeans(
        x.shape[1],
        n_clusters,
        niter=20,
        nredo=1,
        seed=int(seed),
        verbose=False,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        min_points_per_centroid=1,  # silence faiss's "too few points" warning
        max_points_per_centroid=1 << 30,  # train on every point, no subsampling
    )
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)  # (N, 1) nearest centroid
    return assign[:, 0].astype(np.int64)


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Normalized mutual information between labels and k-means clusters of the embeddings.

    k-means (see :func:`kmeans_assign`) uses as many clusters as there are classes; NMI is
    scikit-learn's ``normalized_mutual_info_score`` with its default arithmetic averaging.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != np.shape(embeddings)[0]:
        raise ValueError(f"labels must have shape ({np.shape(embeddings)[0]},), got {labels.shape}")
    clusters = kmeans_assign(embeddings, len(np.unique(labels)), seed=seed)  # (N,)
    return float(normalized_mutual_info_score(labels, clusters))
