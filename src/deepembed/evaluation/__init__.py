"""Retrieval evaluation: exact k-NN search, rank metrics (Recall@K, MAP@R, ...) and NMI.

Metric names accepted by :func:`evaluate` are documented in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

from deepembed.evaluation.evaluator import DEFAULT_METRICS, METRIC_NAMES, evaluate
from deepembed.evaluation.knn import KNN_DISTANCES, EvaluationInputError, KnnResult, knn_search
from deepembed.evaluation.metrics import (
    kmeans_assign,
    map_at_r,
    nmi,
    precision_at_k,
    r_precision,
    recall_at_k,
)

__all__ = [
    "DEFAULT_METRICS",
    "KNN_DISTANCES",
    "METRIC_NAMES",
    "EvaluationInputError",
    "KnnResult",
    "evaluate",
    "kmeans_assign",
    "knn_search",
    "map_at_r",
    "nmi",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
]
