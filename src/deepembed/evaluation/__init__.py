"""Retrieval evaluation: one exact k-NN search, tie-aware rank metrics, clustering metrics.

Metric names accepted by :func:`evaluate` are documented in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

from deepembed.evaluation._knn_space import (
    EvaluationInputError,
    KnnChunk,
    KnnResult,
    as_sign_bits,
)
from deepembed.evaluation.clustering import kmeans_assign
from deepembed.evaluation.evaluator import DEFAULT_METRICS, METRIC_NAMES, evaluate, parse_metrics
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
from deepembed.evaluation.ties import TieGroups, groups_from_list, groups_from_rows

__all__ = [
    "CLUSTER_METRICS",
    "DEFAULT_METRICS",
    "KNN_BACKENDS",
    "KNN_DISTANCES",
    "METRIC_NAMES",
    "EvaluationInputError",
    "KnnChunk",
    "KnnResult",
    "TieGroups",
    "as_sign_bits",
    "average_precision",
    "clustering_scores",
    "evaluate",
    "expected_hits",
    "groups_from_list",
    "groups_from_rows",
    "iter_knn",
    "kmeans_assign",
    "knn_accuracy",
    "knn_search",
    "map_at_k",
    "map_at_r",
    "nmi",
    "pairwise_f1",
    "parse_metrics",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "reciprocal_rank",
]
