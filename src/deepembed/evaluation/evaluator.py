"""One-call retrieval evaluation: a single k-NN search shared by all rank metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.evaluation.knn import ArrayLike, EvaluationInputError, knn_search
from deepembed.evaluation.metrics import map_at_r, nmi, precision_at_k, r_precision, recall_at_k

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")

METRIC_NAMES: dict[str, str] = {
    "recall@K": "fraction of queries with a same-class item in the top K (K >= 1)",
    "precision@K": "mean fraction of same-class items in the top K (K >= 1)",
    "r_precision": "mean fraction of same-class items in the top R, R = relevant count",
    "map@r": "MAP@R of Musgrave et al. (2020): mean over queries of (1/R) sum P@i rel_i, i<=R",
    "nmi": "normalized mutual information between labels and k-means clusters of the queries",
}
"""Accepted metric names (patterns) and what each measures."""

_AT_K = re.compile(r"^(recall|precision)@([1-9][0-9]*)$")
_R_METRICS = ("r_precision", "map@r")


def _parse_metrics(metrics: Sequence[str]) -> tuple[list[str], int]:
    """Validate metric names; return them de-duplicated in order, and the largest K asked."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    names: list[str] = []
    max_k = 0
    for name in metrics:
        match = _AT_K.match(name) if isinstance(name, str) else None
        if match:
            max_k = max(max_k, int(match.group(2)))
        elif name not in ("r_precision", "map@r", "nmi"):
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


def _relevant_counts(
    query_labels: np.ndarray, gallery_labels: np.ndarray, leave_one_out: bool
) -> np.ndarray:
    """(Q,) number of gallery items sharing each query's label (self excluded if LOO)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)  # (C,), (C,)
    pos = np.searchsorted(classes, query_labels).clip(max=len(classes) - 1)  # (Q,)
    found = classes[pos] == query_labels  # (Q,)
    rel = np.where(found, counts[pos], 0).astype(np.int64)
    return rel - 1 if leave_one_out else rel


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def evaluate(
    query: ArrayLike,
    query_labels: ArrayLike | Sequence,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Sequence | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    distance: str = "cosine",
) -> dict[str, float | int | str]:
    """Retrieval metrics of query embeddings against a gallery.

    One k-NN search (k = the largest K requested, and the largest relevant count if
    ``r_precision`` or ``map@r`` is requested) feeds every rank metric. Queries whose class
    has no item in the gallery are left out of the rank-metric averages. NMI clusters the
    query embeddings (L2-normalised first when ``distance="cosine"``, so k-means works in the
    retrieval geometry) with as many clusters as query classes.

    Args:
        query: (Q, D) query embeddings (numpy array or torch tensor).
        query_labels: (Q,) class label of each query.
        gallery: (G, D) gallery embeddings, or None for leave-one-out on the queries (each
            query searches all other queries).
        gallery_labels: (G,) labels; required exactly when ``gallery`` is given.
        metrics: names from :data:`METRIC_NAMES` (``recall@K``, ``precision@K``,
            ``r_precision``, ``map@r``, ``nmi``).
        distance: "cosine", "euclidean" or "squared_euclidean", see
            :func:`~deepembed.evaluation.knn.knn_search`.

    Returns:
        ``{metric: float}`` in request order, plus ``num_queries`` (queries averaged over
        by rank metrics), ``num_excluded_queries`` (queries without a relevant item) and
        ``primary_metric`` ("map@r" if requested, else the first metric name).

    Raises:
        ValueError: unknown metric, empty query or gallery, label/row count mismatch, bad
            embeddings, or no query with a relevant gallery item when rank metrics are asked.
    """
    names, max_k = _parse_metrics(metrics)
    n_query = _rows(query, "query")
    q_labels = _labels(query_labels, n_query, "query_labels")
    leave_one_out = gallery is None
    if leave_one_out:
        if gallery_labels is not None:
            raise EvaluationInputError("gallery_labels given without gallery")
        gallery, g_labels = query, q_labels
    else:
        if gallery_labels is None:
            raise EvaluationInputError("gallery given without gallery_labels")
        g_labels = _labels(gallery_labels, _rows(gallery, "gallery"), "gallery_labels")

    results: dict[str, float | int | str] = {}
    rank_names = [n for n in names if n != "nmi"]
    n_used, n_excluded = n_query, 0
    if rank_names:
        relevant = _relevant_counts(q_labels, g_labels, leave_one_out)  # (Q,)
        usable = relevant > 0  # (Q,) queries with something to find
        n_used = int(usable.sum())
        n_excluded = n_query - n_used
        if n_used == 0:
            raise EvaluationInputError(
                "no query has a same-class item in the gallery: rank metrics are undefined"
            )
        k = max_k
        if any(n in _R_METRICS for n in rank_names):
            k = max(k, int(relevant.max()))
        knn = knn_search(query, gallery, k, distance=distance, exclude_self=leave_one_out)
        nb_labels = g_labels[knn.indices[usable]]  # (Q_used, k) labels of retrieved items
        ql, rel = q_labels[usable], relevant[usable]  # (Q_used,) each
        for name in rank_names:
            match = _AT_K.match(name)
            if match:
                fn = recall_at_k if match.group(1) == "recall" else precision_at_k
                results[name] = fn(nb_labels, ql, int(match.group(2)))
            elif name == "r_precision":
                results[name] = r_precision(nb_labels, ql, rel)
            else:
                results[name] = map_at_r(nb_labels, ql, rel)
    if "nmi" in names:
        emb = _as_numpy(query)  # (Q, D)
        if distance == "cosine":
            emb = F.normalize(torch.from_numpy(emb), dim=1).numpy()
        if not np.isfinite(emb).all():
            raise EvaluationInputError("query contains NaN or infinite values")
        results["nmi"] = nmi(emb, q_labels)

    ordered: dict[str, float | int | str] = {name: float(results[name]) for name in names}
    ordered["num_queries"] = n_used
    ordered["num_excluded_queries"] = n_excluded
    ordered["primary_metric"] = "map@r" if "map@r" in names else names[0]
    return ordered
