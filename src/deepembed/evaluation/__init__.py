"""Retrieval evaluation: one exact k-NN search, tie-aware rank metrics, clustering metrics,
and the hashing literature's metrics and curves for binary codes (:func:`hashing_curves`).

Metric names accepted by :func:`evaluate` are documented in :data:`METRIC_NAMES`. Labels are
one per item, or (N, C) 0/1 label matrices (multi-label: relevant = a shared label).
"""

from __future__ import annotations

from deepembed.evaluation._knn_space import (
    EvaluationInputError,
    KnnChunk,
    KnnResult,
    as_sign_bits,
)
from deepembed.evaluation.clustering import kmeans_assign
from deepembed.evaluation.evaluator import (
    DEFAULT_METRICS,
    METRIC_NAMES,
    evaluate,
    parse_metrics,
    per_query_scores,
)
from deepembed.evaluation.hashing import groups_from_histograms, hamming_precision, map_hash_at_k
from deepembed.evaluation.hashing_curves import DEFAULT_NS, hashing_curves
from deepembed.evaluation.knn import KNN_BACKENDS, KNN_DISTANCES, iter_knn, knn_search
from deepembed.evaluation.metrics import (
    CLUSTER_METRICS,
    average_precision,
    clustering_scores,
    expected_hits,
    knn_accuracy,
    map_at_k,
    map_at_r,
    nmi,
    pairwise_f1,
    precision_at_k,
    r_precision,
    recall_at_k,
    reciprocal_rank,
)
from deepembed.evaluation.relevance import Relevance, parse_labels
from deepembed.evaluation.ties import TieGroups, groups_from_list, groups_from_rows

__all__ = [
    "CLUSTER_METRICS",
    "DEFAULT_METRICS",
    "DEFAULT_NS",
    "KNN_BACKENDS",
    "KNN_DISTANCES",
    "METRIC_NAMES",
    "EvaluationInputError",
    "KnnChunk",
    "KnnResult",
    "Relevance",
    "TieGroups",
    "as_sign_bits",
    "average_precision",
    "clustering_scores",
    "evaluate",
    "expected_hits",
    "groups_from_histograms",
    "groups_from_list",
    "groups_from_rows",
    "hamming_precision",
    "hashing_curves",
    "iter_knn",
    "kmeans_assign",
    "knn_accuracy",
    "knn_search",
    "map_at_k",
    "map_at_r",
    "map_hash_at_k",
    "nmi",
    "pairwise_f1",
    "parse_labels",
    "parse_metrics",
    "per_query_scores",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "reciprocal_rank",
]
