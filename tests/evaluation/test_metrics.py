"""Rank metrics, NMI and evaluate() against per-query loops, scikit-learn and PML."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from deepembed.evaluation import (
    METRIC_NAMES,
    evaluate,
    evaluator,
    kmeans_assign,
    map_at_r,
    nmi,
    precision_at_k,
    r_precision,
    recall_at_k,
)

CLASS_SIZES = (1, 2, 3, 5, 8, 13)  # uneven; the singleton has no partner in leave-one-out


def uneven_labels(rng: np.random.Generator, sizes=CLASS_SIZES) -> np.ndarray:
    labels = np.repeat(np.arange(len(sizes)) * 10 + 3, sizes)  # non-contiguous label values
    return rng.permutation(labels)


def clustered(rng, labels, spread=1.0, dim=8):
    """Embeddings (N, dim) around a fixed random centre per label value (shared across calls,
    so a query set and a gallery set of the same class live in the same place)."""
    centres = np.stack([np.random.default_rng(int(c)).normal(size=dim) * 2.0 for c in labels])
    return (centres + spread * rng.normal(size=(len(labels), dim))).astype(np.float32)


# ---------- per-query loop oracles ----------


def ranked_lists(query, gallery, leave_one_out):
    """Per query, gallery indices by increasing cosine distance (ties by index)."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    lists = []
    for i in range(len(q)):
        d = 1.0 - g.astype(np.float64) @ q[i].astype(np.float64)
        order = [j for j in np.argsort(d, kind="stable") if not (leave_one_out and j == i)]
        lists.append(order)
    return lists


def loop_metrics(query, q_labels, gallery, g_labels, leave_one_out, ks=(1, 2, 4, 8)):
    """Straightforward per-query definitions of every rank metric."""
    out = {f"recall@{k}": [] for k in ks} | {f"precision@{k}": [] for k in ks}
    out |= {"r_precision": [], "map@r": []}
    excluded = 0
    for i, order in enumerate(ranked_lists(query, gallery, leave_one_out)):
        rel = [bool(g_labels[j] == q_labels[i]) for j in order]
        r = sum(rel)
        if r == 0:
            excluded += 1
            continue
        for k in ks:
            top = rel[:k]
            out[f"recall@{k}"].append(float(any(top)))
            out[f"precision@{k}"].append(sum(top) / len(top))
        out["r_precision"].append(sum(rel[:r]) / r)
        ap = 0.0
        for pos in range(r):
            if rel[pos]:
                ap += sum(rel[: pos + 1]) / (pos + 1)
        out["map@r"].append(ap / r)
    return {name: float(np.mean(v)) for name, v in out.items()}, excluded


ALL_RANK = (
    "recall@1", "recall@2", "recall@4", "recall@8",
    "precision@1", "precision@2", "precision@4", "precision@8",
    "r_precision", "map@r",
)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_leave_one_out_matches_loops(seed):
    rng = np.random.default_rng(seed)
    labels = uneven_labels(rng)
    x = clustered(rng, labels)
    got = evaluate(x, labels, metrics=ALL_RANK)
    want, excluded = loop_metrics(x, labels, x, labels, leave_one_out=True)
    for name in ALL_RANK:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    assert excluded == 1  # the singleton class
    assert got["num_excluded_queries"] == 1
    assert got["num_queries"] == len(labels) - 1


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_query_gallery_matches_loops(seed):
    rng = np.random.default_rng(seed)
    g_labels = uneven_labels(rng)
    q_labels = uneven_labels(rng, sizes=(2, 1, 4, 3, 2, 2, 3))  # class 63 not in gallery
    gallery = clustered(rng, g_labels)
    query = clustered(rng, q_labels)
    got = evaluate(query, q_labels, gallery, g_labels, metrics=ALL_RANK)
    want, excluded = loop_metrics(query, q_labels, gallery, g_labels, leave_one_out=False)
    for name in ALL_RANK:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    assert excluded == 3
    assert (got["num_queries"], got["num_excluded_queries"]) == (len(q_labels) - 3, 3)


def test_metric_functions_match_loops_on_random_label_lists():
    rng = np.random.default_rng(7)
    n_query, k = 40, 12
    query_labels = rng.integers(0, 4, size=n_query)
    neighbour_labels = rng.integers(0, 4, size=(n_query, k))  # (Q, k)
    # R: at least the hits in the list and at least 1, at most k (as a caller guarantees)
    hits = neighbour_labels == query_labels[:, None]
    counts = np.clip(hits.sum(1) + rng.integers(0, 3, size=n_query), 1, k)
    for kk in (1, 3, 12, 20):
        rec = [hits[i, :kk].any() for i in range(n_query)]
        prec = [hits[i, :kk].sum() / min(kk, k) for i in range(n_query)]
        assert recall_at_k(neighbour_labels, query_labels, kk) == pytest.approx(np.mean(rec))
        assert precision_at_k(neighbour_labels, query_labels, kk) == pytest.approx(np.mean(prec))
    rp, ap = [], []
    for i in range(n_query):
        r = counts[i]
        rp.append(hits[i, :r].sum() / r)
        ap.append(sum(hits[i, : j + 1].sum() / (j + 1) for j in range(r) if hits[i, j]) / r)
    assert r_precision(neighbour_labels, query_labels, counts) == pytest.approx(np.mean(rp))
    assert map_at_r(neighbour_labels, query_labels, counts) == pytest.approx(np.mean(ap))


def test_map_at_r_hand_example():
    # R = 3, relevant at ranks 1 and 3: (1/1 + 2/3) / 3; the hit at rank 4 is beyond R
    nl = np.array([[1, 0, 1, 1, 0]])
    assert map_at_r(nl, np.array([1]), np.array([3])) == pytest.approx((1 + 2 / 3) / 3)
    assert r_precision(nl, np.array([1]), np.array([3])) == pytest.approx(2 / 3)


def test_r_metrics_reject_zero_relevant_and_short_lists():
    nl = np.array([[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="drop queries"):
        map_at_r(nl, np.array([1, 1]), np.array([1, 0]))
    with pytest.raises(ValueError, match="at least max"):
        r_precision(nl, np.array([1, 1]), np.array([1, 3]))


# ---------- pytorch-metric-learning as an independent implementation ----------


def _pml_accuracy(query, q_labels, gallery=None, g_labels=None):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
    )
    if gallery is None:
        return calc.get_accuracy(query, q_labels, query, q_labels, ref_includes_query=True)
    return calc.get_accuracy(query, q_labels, gallery, g_labels, ref_includes_query=False)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_matches_pytorch_metric_learning(leave_one_out):
    # unit vectors: PML's L2 k-NN ranks exactly like our cosine distance; continuous random
    # data has no ties, and the spread keeps the metrics strictly between 0 and 1
    rng = np.random.default_rng(11)
    g_labels = uneven_labels(rng, sizes=(3, 5, 8, 13, 21, 4))
    gallery = _unit(clustered(rng, g_labels, spread=2.0, dim=16))
    if leave_one_out:
        query, q_labels = gallery, g_labels
        ours = evaluate(query, q_labels, metrics=("precision@1", "r_precision", "map@r"))
        pml = _pml_accuracy(query, q_labels)
    else:
        q_labels = uneven_labels(rng, sizes=(4, 4, 6, 9, 9, 5, 3))  # class 63: no gallery item
        query = _unit(clustered(rng, q_labels, spread=2.0, dim=16))
        ours = evaluate(
            query, q_labels, gallery, g_labels, metrics=("precision@1", "r_precision", "map@r")
        )
        pml = _pml_accuracy(query, q_labels, gallery, g_labels)
    assert 0.05 < ours["map@r"] < 0.95  # not a degenerate case
    assert ours["num_excluded_queries"] == (0 if leave_one_out else 3)
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


# ---------- NMI ----------


def test_nmi_matches_sklearn_on_same_assignment():
    rng = np.random.default_rng(3)
    labels = uneven_labels(rng)
    x = clustered(rng, labels, spread=1.5)
    clusters = kmeans_assign(x, len(np.unique(labels)), seed=5)
    assert clusters.shape == labels.shape and clusters.dtype == np.int64
    assert set(clusters) <= set(range(len(np.unique(labels))))
    expected = normalized_mutual_info_score(labels, clusters)
    assert nmi(x, labels, seed=5) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0


def test_nmi_is_one_on_perfectly_separated_clusters():
    rng = np.random.default_rng(4)
    labels = uneven_labels(rng, sizes=(5, 9, 14, 20, 30))
    x = clustered(rng, labels, spread=1e-3) * 100.0
    for seed in range(3):
        assert nmi(x, labels, seed=seed) == pytest.approx(1.0)
    assert evaluate(x, labels, metrics=("nmi",))["nmi"] == pytest.approx(1.0)


def test_kmeans_assign_rejects_too_many_clusters():
    with pytest.raises(ValueError, match="cannot make 5 clusters from 3 points"):
        kmeans_assign(np.eye(3), 5)


# ---------- evaluate(): contract and errors ----------


def test_evaluate_defaults_and_keys():
    rng = np.random.default_rng(8)
    labels = uneven_labels(rng)
    out = evaluate(clustered(rng, labels), labels)
    expected = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"]
    assert list(out) == [*expected, "num_queries", "num_excluded_queries", "primary_metric"]
    assert all(isinstance(out[m], float) for m in expected)
    assert out["primary_metric"] == "map@r"
    assert out["recall@1"] <= out["recall@2"] <= out["recall@4"] <= out["recall@8"]
    assert (
        evaluate(clustered(rng, labels), labels, metrics=("recall@4", "nmi"))["primary_metric"]
        == "recall@4"
    )


def test_evaluate_runs_one_search_with_largest_k(monkeypatch):
    calls = []
    real = evaluator.knn_search

    def spy(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator, "knn_search", spy)
    rng = np.random.default_rng(9)
    labels = uneven_labels(rng)  # largest class 13 -> R <= 12 in leave-one-out
    x = clustered(rng, labels)
    evaluate(x, labels, metrics=("recall@1", "precision@5", "map@r", "r_precision"))
    evaluate(x, labels, metrics=("recall@1", "recall@20"))
    evaluate(x, labels, metrics=("nmi",))
    assert calls == [12, 20]


def test_metric_names_are_documented():
    assert set(METRIC_NAMES) == {"recall@K", "precision@K", "r_precision", "map@r", "nmi"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gallery": np.zeros((0, 4)), "gallery_labels": np.zeros(0)}, "empty gallery: nothing"),
        ({"query": np.zeros((0, 4)), "query_labels": np.zeros(0)}, "empty query"),
        ({"query_labels": np.zeros(5)}, "query_labels must have one label per row"),
        (
            {"gallery": np.ones((4, 4)), "gallery_labels": np.zeros(3)},
            "gallery_labels must have one label per row",
        ),
        ({"gallery": np.ones((4, 4))}, "gallery given without gallery_labels"),
        ({"metrics": ("recall@1", "mAP")}, "unknown metric 'mAP'"),
        ({"metrics": ("recall@0",)}, "unknown metric 'recall@0'"),
        ({"metrics": ()}, "no metrics requested"),
        ({"distance": "hamming"}, "unknown distance"),
        ({"query_labels": np.arange(6)}, "no query has a same-class item"),
    ],
)
def test_evaluate_errors(kwargs, message):
    args = {
        "query": np.random.default_rng(0).normal(size=(6, 4)),
        "query_labels": [0, 0, 1, 1, 2, 2],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as info:
        evaluate(**args)
    assert "\n" not in str(info.value)
