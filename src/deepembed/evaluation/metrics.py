"""Retrieval and clustering metrics as pure functions on numpy arrays.

Rank metrics take the :class:`~deepembed.evaluation.ties.TieGroups` of each query's ranking
and return one value per query: the expected value of the metric when the items inside each
group of equal distances come in a uniformly random order (McSherry & Najork, "Computing
information retrieval performance measures efficiently in the presence of tied scores",
ECIR 2008). Without ties this is the ordinary value. Queries without any relevant item must
be removed by the caller; their values are meaningless.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from deepembed.evaluation.clustering import kmeans_assign
from deepembed.evaluation.ties import TieGroups


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _cutoff(groups: TieGroups, cutoff: int | np.ndarray) -> np.ndarray:
    """(Q, 1) int64 per-query rank cutoff."""
    c = np.asarray(cutoff, dtype=np.int64)
    return np.broadcast_to(c.reshape(-1, 1) if c.ndim else c, (len(groups), 1))


def _taken(groups: TieGroups, cutoff: int | np.ndarray) -> np.ndarray:
    """(Q, m) how many ranks of each group lie within the first ``cutoff`` ranks."""
    return np.clip(_cutoff(groups, cutoff) - groups.start, 0, groups.size)


def expected_hits(groups: TieGroups, cutoff: int | np.ndarray) -> np.ndarray:
    """(Q,) expected number of relevant items among the first ``cutoff`` ranks.

    A group cut by the cutoff contributes its relevant share of the ranks it keeps.
    """
    share = groups.relevant / np.maximum(groups.size, 1)  # (Q, m)
    return (share * _taken(groups, cutoff)).sum(axis=1)


def recall_at_k(groups: TieGroups, k: int) -> np.ndarray:
    """(Q,) Recall@K of the DML literature: P(at least one relevant item in the top k).

    A group cut at rank k keeps t of its n ranks; none of its r relevant items is among
    them with the hypergeometric probability C(n - r, t) / C(n, t).
    """
    n, r, t = groups.size, groups.relevant, _taken(groups, _check_k(k))
    out = ((t == n) & (n > 0) & (r > 0)).any(axis=1).astype(np.float64)  # a whole group hits
    rows, cols = np.nonzero((t > 0) & (t < n) & (r > 0) & (out[:, None] == 0))  # cut groups
    n, r, t = n[rows, cols], r[rows, cols], t[rows, cols]  # at most one per row
    possible = t <= n - r  # all t kept ranks can be irrelevant
    safe = np.where(possible, n - r - t, 0)
    log_none = gammaln(n - r + 1) - gammaln(safe + 1) + gammaln(n - t + 1) - gammaln(n + 1)
    out[rows] = 1.0 - np.where(possible, np.exp(log_none), 0.0)
    return out


def precision_at_k(groups: TieGroups, k: int, num_candidates: int) -> np.ndarray:
    """(Q,) expected fraction of relevant items in the top k.

    If the gallery holds fewer than k candidates, the fraction is over all of them.
    """
    k = _check_k(k)
    return expected_hits(groups, k) / min(k, num_candidates)


def r_precision(groups: TieGroups, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) expected fraction of relevant items in the top R, R = the query's relevant count."""
    return expected_hits(groups, num_relevant) / num_relevant


def _precision_sum(groups: TieGroups, cutoff: int | np.ndarray | None) -> np.ndarray:
    """(Q,) expected sum over ranks i <= cutoff of P@i * rel_i (all ranks if None).

    For rank i in a group (start s, size n, r relevant, c relevant before it):
    E[rel_i * hits(1..i)] = (r/n) * (c + 1 + (i - s - 1)(r - 1)/(n - 1)). Summed over the
    group's first e ranks with weight 1/i this needs only dH = H(s + e) - H(s):
    (r/n) * ((c + 1) dH + (r - 1)/(n - 1) * (e - (s + 1) dH)).
    """
    e = groups.size if cutoff is None else _taken(groups, cutoff)  # (Q, m) ranks used
    rows, cols = np.nonzero((e > 0) & (groups.relevant > 0))  # the groups that contribute
    s, n, r, c = (
        a[rows, cols] for a in (groups.start, groups.size, groups.relevant, groups.relevant_before)
    )
    e = e[rows, cols]
    s_f, e_f, n_f, r_f = (a.astype(np.float64) for a in (s, e, n, r))
    # exact for the common untied case e == 1; digamma differences otherwise
    d_harmonic = np.where(e == 1, 1.0 / (s_f + 1.0), digamma(s_f + e_f + 1.0) - digamma(s_f + 1.0))
    d_harmonic = np.where(e == 0, 0.0, d_harmonic)
    pair = np.where(n > 1, (r_f - 1.0) / np.maximum(n_f - 1.0, 1.0), 0.0)
    inner = (c + 1.0) * d_harmonic + pair * (e_f - (s_f + 1.0) * d_harmonic)
    return np.bincount(rows, weights=r_f / n_f * inner, minlength=len(groups))


def map_at_r(groups: TieGroups, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020):
    (1/R) * sum_{i<=R} P@i * rel_i."""
    return _precision_sum(groups, num_relevant) / num_relevant


def map_at_k(groups: TieGroups, k: int, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) AP@K = sum_{i<=k} P@i * rel_i / min(k, R), the usual IR normalisation: a query
    whose relevant items fill the top min(k, R) ranks scores 1."""
    k = _check_k(k)
    return _precision_sum(groups, k) / np.minimum(k, num_relevant)


def average_precision(groups: TieGroups, num_relevant: np.ndarray) -> np.ndarray:
    """(Q,) average precision over the whole ranking: sum_i P@i * rel_i / R.

    ``groups`` must hold every relevant item (see ``ties.groups_from_rows``).
    """
    return _precision_sum(groups, None) / num_relevant


def reciprocal_rank(groups: TieGroups) -> np.ndarray:
    """(Q,) expected 1 / rank of the first relevant item (0 if none is in ``groups``).

    In the first group holding relevant items (start s, size n, r relevant) the first
    relevant one sits at s + x with probability C(n - x, r - 1) / C(n, r), x = 1..n-r+1.
    """
    has = groups.relevant > 0  # (Q, m)
    big = np.iinfo(np.int64).max
    first = np.argmin(np.where(has, groups.start, big), axis=1)  # (Q,) first relevant group
    rows = np.arange(len(groups))
    s, n, r = (
        a[rows, first].astype(np.float64) for a in (groups.start, groups.size, groups.relevant)
    )
    found = has[rows, first]
    out = np.where(found, 1.0 / (s + 1.0), 0.0)  # exact when the group has no irrelevant item
    mixed = np.nonzero(found & (n > r))[0]
    if mixed.size:
        s_m, n_m, r_m = s[mixed, None], n[mixed, None], r[mixed, None]
        log_total = gammaln(n_m + 1) - gammaln(r_m + 1) - gammaln(n_m - r_m + 1)  # log C(n, r)
        acc = np.zeros(mixed.size)
        longest = int((n_m - r_m).max()) + 1
        for x0 in range(1, longest + 1, 4096):  # blocks of positions bound the memory
            x = np.arange(x0, min(x0 + 4096, longest + 1), dtype=np.float64)[None, :]
            ok = x <= n_m - r_m + 1
            rest = np.where(ok, n_m - x, r_m - 1)
            log_p = gammaln(rest + 1) - gammaln(r_m) - gammaln(rest - r_m + 2) - log_total
            acc += np.where(ok, np.exp(log_p) / (s_m + x), 0.0).sum(axis=1)
        out[mixed] = acc
    return out


def knn_accuracy(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q,) 1.0 where the majority label of the k nearest neighbours is the query's label.

    Neighbours are taken in the order (distance, gallery index); a tie in votes goes to the
    label whose nearest voter ranks first. Labels must be non-negative integers.
    """
    top = np.asarray(neighbour_labels)[:, : _check_k(k)]  # (Q, k')
    n_query, width = top.shape
    if top.size == 0:
        return np.zeros(n_query)
    key = np.arange(n_query)[:, None] * (int(top.max()) + 1) + top  # (Q, k') (row, label)
    _, inverse, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    votes = counts[inverse].reshape(n_query, width)  # (Q, k') votes of each slot's label
    winner = np.argmax(votes * (width + 1) - np.arange(width)[None, :], axis=1)
    return (top[np.arange(n_query), winner] == np.asarray(query_labels)).astype(np.float64)


def pairwise_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """F1 over pairs of items (Song et al., "Deep Metric Learning via Lifted Structured
    Feature Embedding", CVPR 2016): precision = same-class pairs among same-cluster pairs,
    recall = same-cluster pairs among same-class pairs. Counted from the contingency table.
    """
    table = contingency_matrix(labels, clusters, sparse=True)  # (classes, clusters)

    def pairs(counts: np.ndarray) -> float:
        counts = np.asarray(counts, dtype=np.float64)
        return float((counts * (counts - 1.0) / 2.0).sum())

    both = pairs(table.data)  # pairs with the same class and the same cluster
    same_cluster = pairs(np.asarray(table.sum(axis=0)).ravel())
    same_class = pairs(np.asarray(table.sum(axis=1)).ravel())
    if both == 0.0:
        return 0.0
    precision, recall = both / same_cluster, both / same_class
    return 2.0 * precision * recall / (precision + recall)


CLUSTER_METRICS = ("nmi", "ami", "f1")


def clustering_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, ...] = CLUSTER_METRICS,
    seed: int = 0,
) -> dict[str, float]:
    """NMI, AMI and pairwise F1 of seeded k-means with as many clusters as classes (see
    :mod:`deepembed.evaluation.clustering`: greedy k-means++, restarts, Lloyd to convergence).

    NMI and AMI are scikit-learn's (arithmetic normalisation); F1 is :func:`pairwise_f1`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != np.shape(embeddings)[0]:
        raise ValueError(f"labels must have shape ({np.shape(embeddings)[0]},), got {labels.shape}")
    clusters = kmeans_assign(embeddings, len(np.unique(labels)), seed=seed)  # (N,)
    score = {
        "nmi": normalized_mutual_info_score,
        "ami": adjusted_mutual_info_score,
        "f1": pairwise_f1,
    }
    return {name: float(score[name](labels, clusters)) for name in names}


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Normalized mutual information between labels and k-means clusters of the embeddings
    (see :func:`clustering_scores`)."""
    return clustering_scores(embeddings, labels, ("nmi",), seed)["nmi"]
