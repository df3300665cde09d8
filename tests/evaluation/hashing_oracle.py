"""Brute-force definitions of the hashing metrics: plain loops over queries, Hamming
distances from unpacked bits, and tie-aware values as the mean over every placement of the
relevant items inside each group of equal distances (each placement is equally likely under a
uniformly random order of tied items)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def hamming(query_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    """(Q, G) differing bits, from (Q, bits) and (G, bits) bool rows."""
    return (query_bits[:, None, :] != db_bits[None, :, :]).sum(-1)


def relevant(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(Q, G) bool: same label, or for (N, C) matrices at least one shared label (loops)."""
    q, g = np.asarray(query_labels), np.asarray(db_labels)
    out = np.zeros((len(q), len(g)), bool)
    for i in range(len(q)):
        for j in range(len(g)):
            out[i, j] = bool((q[i] & g[j]).any()) if q.ndim == 2 else q[i] == g[j]
    return out


def per_query(dist: np.ndarray, rel: np.ndarray, leave_one_out: bool):
    """Yield (query index, distances, relevance) over the candidates of each query with at
    least one relevant candidate (the query itself removed in leave-one-out)."""
    for i in range(dist.shape[0]):
        keep = np.array([j for j in range(dist.shape[1]) if not (leave_one_out and j == i)])
        if keep.size and rel[i, keep].any():
            yield i, dist[i, keep], rel[i, keep]


def radius_precision(dist: np.ndarray, rel: np.ndarray, radius: int) -> float | None:
    """Precision of the items within Hamming distance <= radius; None if there is none."""
    inside = dist <= radius
    return float(rel[inside].sum() / inside.sum()) if inside.any() else None


def ap_hash(order: list[bool], k: int) -> float:
    """AP@k of DeepHash-pytorch's CalcTopMap on one ordered relevance list."""
    top = order[:k]
    if not any(top):
        return 0.0
    hits, total = 0, 0.0
    for i, is_rel in enumerate(top):
        if is_rel:
            hits += 1
            total += hits / (i + 1)
    return total / hits


def expected_over_orders(dist: np.ndarray, rel: np.ndarray, k: int, metric) -> float:
    """Mean of metric(order, k) over every placement of relevant items inside each tie
    group; groups starting at rank k or later cannot change the top k and are left as is."""
    values = np.unique(dist)
    choices, start = [], 0
    for v in values:
        n, r = int((dist == v).sum()), int(rel[dist == v].sum())
        if start < k:
            choices.append([set(c) for c in itertools.combinations(range(n), r)])
        else:
            choices.append([set(range(r))])
        start += n
    total, count = 0.0, 0
    for choice in itertools.product(*choices):
        order = [
            j in placed
            for placed, v in zip(choice, values, strict=True)
            for j in range(int((dist == v).sum()))
        ]
        total += metric(order, k)
        count += 1
    return total / count


def precision_at(order: list[bool], n: int) -> float:
    """Precision of the first n items (all of them if fewer)."""
    top = order[:n]
    return sum(top) / len(top)


def oracle_metrics(
    dist: np.ndarray,
    rel: np.ndarray,
    leave_one_out: bool,
    radii=(),
    ks=(),
) -> dict[str, float]:
    """Means over queries with a relevant candidate of hamming_precision@R (nothing within
    R counts 0), map_hash@K and precision@K (both over every order of tied items)."""
    sums: dict[str, list[float]] = {}
    for _, d, r in per_query(dist, rel, leave_one_out):
        for radius in radii:
            value = radius_precision(d, r, radius)
            sums.setdefault(f"hamming_precision@{radius}", []).append(value or 0.0)
        for k in ks:
            sums.setdefault(f"map_hash@{k}", []).append(expected_over_orders(d, r, k, ap_hash))
            sums.setdefault(f"precision@{k}", []).append(
                expected_over_orders(d, r, k, precision_at)
            )
    return {name: float(np.mean(v)) for name, v in sums.items()}


def oracle_pr_curve(dist: np.ndarray, rel: np.ndarray, leave_one_out: bool, bits: int):
    """Per radius 0..bits: precision over the queries retrieving something (None if none
    does), recall over all queries, precision with empty retrievals as 0, the count kept."""
    precision, recall, zero, kept = [], [], [], []
    for radius in range(bits + 1):
        p_values, r_values, z_values = [], [], []
        for _, d, r in per_query(dist, rel, leave_one_out):
            p = radius_precision(d, r, radius)
            if p is not None:
                p_values.append(p)
            z_values.append(p or 0.0)
            r_values.append(float(r[d <= radius].sum() / r.sum()))
        precision.append(float(np.mean(p_values)) if p_values else None)
        recall.append(float(np.mean(r_values)))
        zero.append(float(np.mean(z_values)))
        kept.append(len(p_values))
    return precision, recall, zero, kept


def all_orders_mean(rel: list[bool], k: int, metric) -> float:
    """Mean of metric over every permutation of a list whose items all tie (tiny lists)."""
    perms = list(itertools.permutations(rel))
    assert len(perms) == math.factorial(len(rel))
    return float(np.mean([metric(list(p), k) for p in perms]))
