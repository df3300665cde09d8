"""Rank metrics, clustering metrics and evaluate() against per-query loops over every order
of tied items, scikit-learn, pair loops and PML."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from deepembed.evaluation import (
    METRIC_NAMES,
    _ranking,
    evaluate,
    groups_from_list,
    kmeans_assign,
    knn,
    map_at_r,
    nmi,
    pairwise_f1,
    per_query_scores,
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


# ---------- oracles: plain definitions, averaged over every order of tied items ----------


def plain_metrics(rel: list[bool], r: int, ks=(1, 2, 3, 5)) -> dict[str, float]:
    """Every rank metric of one fully ordered relevance list, by its textbook definition."""
    out: dict[str, float] = {}
    hits_at = np.cumsum(rel)
    precision_at = hits_at / np.arange(1, len(rel) + 1)
    for k in ks:
        top = rel[:k]
        out[f"recall@{k}"] = float(any(top))
        out[f"precision@{k}"] = sum(top) / len(top)
        out[f"map@{k}"] = sum(precision_at[i] for i in range(len(top)) if top[i]) / min(k, r)
    out["r_precision"] = sum(rel[:r]) / r
    out["map@r"] = sum(precision_at[i] for i in range(r) if rel[i]) / r
    out["map"] = sum(precision_at[i] for i in range(len(rel)) if rel[i]) / r
    out["mrr"] = 1.0 / (rel.index(True) + 1)
    return out


def expected_metrics(dist: np.ndarray, rel: np.ndarray, ks=(1, 2, 3, 5)) -> dict[str, float]:
    """Mean of plain_metrics over every placement of relevant items inside each tie group
    (all equally likely under a uniformly random order of tied items)."""
    values = np.unique(dist)
    per_group = []
    for v in values:
        members = np.nonzero(dist == v)[0]
        n, r = len(members), int(rel[members].sum())
        per_group.append([set(c) for c in itertools.combinations(range(n), r)])
    total: dict[str, float] = {}
    count = 0
    for choice in itertools.product(*per_group):
        order = [
            j in placed
            for placed, v in zip(choice, values, strict=True)
            for j in range(int((dist == v).sum()))
        ]
        for name, value in plain_metrics(order, int(rel.sum()), ks).items():
            total[name] = total.get(name, 0.0) + value
        count += 1
    return {name: value / count for name, value in total.items()}


def knn_vote(ordered_labels: list, label, k: int) -> float:
    """1.0 if the majority of the first k labels is `label`; vote ties: nearest voter wins."""
    top = ordered_labels[:k]
    best = max(top.count(x) for x in top)
    winner = next(x for x in top if top.count(x) == best)
    return float(winner == label)


def oracle_rows(distances: np.ndarray, q_labels, g_labels, leave_one_out, ks=(1, 2, 3, 5)):
    """Every query's value of every metric by loops, NaN for a query with no relevant item."""
    rows: dict[str, list[float]] = {}
    for i in range(len(q_labels)):
        keep = [j for j in range(len(g_labels)) if not (leave_one_out and j == i)]
        dist = distances[i, keep]
        rel = np.asarray(g_labels)[keep] == q_labels[i]
        if not rel.any():
            for name in rows:
                rows[name].append(np.nan)
            continue
        values = expected_metrics(dist, rel, ks)
        order = np.lexsort((np.array(keep), dist))  # (distance, gallery index)
        ordered = [g_labels[keep[j]] for j in order]
        for k in ks:
            values[f"knn_accuracy@{k}"] = knn_vote(ordered, q_labels[i], k)
        for name, value in values.items():
            rows.setdefault(name, [np.nan] * i).append(value)
    return {name: np.array(v) for name, v in rows.items()}


def oracle(distances: np.ndarray, q_labels, g_labels, leave_one_out, ks=(1, 2, 3, 5)):
    """Mean of every metric over queries with a relevant item, and the excluded count."""
    rows = oracle_rows(distances, q_labels, g_labels, leave_one_out, ks)
    excluded = int(np.isnan(next(iter(rows.values()))).sum())
    return {name: float(np.nanmean(v)) for name, v in rows.items()}, excluded


KS = (1, 2, 3, 5)
ALL_RANK = tuple(
    [f"{m}@{k}" for m in ("recall", "precision", "map", "knn_accuracy") for k in KS]
    + ["r_precision", "map@r", "map", "mrr"]
)


def cosine_distances(query, gallery):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    return 1.0 - q.astype(np.float64) @ g.T.astype(np.float64)


def hamming_distances(query_bits, gallery_bits):
    return (query_bits[:, None, :] != gallery_bits[None, :, :]).sum(-1).astype(float)


def assert_all_match(got, want, names=ALL_RANK, tol=1e-9):
    for name in names:
        assert got[name] == pytest.approx(want[name], abs=tol), name


def backend_metrics(backend: str) -> tuple[str, ...]:
    """The metrics a backend serves. "map" and "mrr" need every relevant item's place in the
    whole ranking, which faiss's k-lists do not give: evaluate() takes them from torch's
    full-row pass whatever the backend, so with them in the request faiss would never run."""
    if backend == "faiss":
        return tuple(n for n in ALL_RANK if n not in _ranking._FULL_RANKING)
    return ALL_RANK


@pytest.fixture
def faiss_indexes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the faiss indexes the k-NN search builds: proof that the faiss path ran."""
    built: list[int] = []
    build = knn._faiss_index

    def spy(space: knn._Space) -> object:
        built.append(1)
        return build(space)

    monkeypatch.setattr(knn, "_faiss_index", spy)
    return built


# ---------- evaluate() against the oracles ----------


@pytest.mark.parametrize("seed", [0, 1])
def test_float_leave_one_out_matches_loops(seed):
    rng = np.random.default_rng(seed)
    labels = uneven_labels(rng)
    x = clustered(rng, labels)
    got = evaluate(x, labels, metrics=ALL_RANK)
    want, excluded = oracle(cosine_distances(x, x), labels, labels, leave_one_out=True)
    assert_all_match(got, want)
    assert excluded == 1  # the singleton class
    assert (got["num_queries"], got["num_queries_excluded"]) == (len(labels) - 1, 1)
    assert got["protocol"] == "leave-one-out" and got["ties"] == "expected"


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_per_query_scores_match_loops_and_average_to_evaluate(leave_one_out):
    rng = np.random.default_rng(4)
    labels = uneven_labels(rng)
    x = clustered(rng, labels)
    names = ("map@r", "recall@2", "map", "knn_accuracy@3")
    g, g_labels = (None, None) if leave_one_out else (x[::2] + 0.01, labels[::2])
    got = per_query_scores(x, labels, g, g_labels, metrics=names)
    ref = x if leave_one_out else g
    want = oracle_rows(
        cosine_distances(x, ref), labels, labels if g is None else g_labels, leave_one_out
    )
    means = evaluate(x, labels, g, g_labels, metrics=names)
    for name in names:
        assert got[name].shape == (len(labels),)
        np.testing.assert_allclose(got[name], want[name], atol=1e-9, equal_nan=True)
        assert np.nanmean(got[name]) == pytest.approx(means[name], abs=1e-12)
    assert np.isnan(got["map@r"]).sum() == means["num_queries_excluded"]
    assert means["num_queries_excluded"] >= leave_one_out  # the singleton class


def test_per_query_scores_refuse_clustering_metrics():
    with pytest.raises(ValueError, match="clustering metric"):
        per_query_scores(np.eye(4), [0, 0, 1, 1], metrics=("nmi",))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_float_query_gallery_matches_loops(backend, faiss_indexes):
    rng = np.random.default_rng(1)
    g_labels = uneven_labels(rng)
    q_labels = uneven_labels(rng, sizes=(2, 1, 4, 3, 2, 2, 3))  # class 63 not in gallery
    gallery, query = clustered(rng, g_labels), clustered(rng, q_labels)
    names = backend_metrics(backend)
    got = evaluate(query, q_labels, gallery, g_labels, metrics=names, backend=backend)
    assert bool(faiss_indexes) == (backend == "faiss")
    want, excluded = oracle(cosine_distances(query, gallery), q_labels, g_labels, False)
    assert_all_match(got, want, names)
    assert excluded == 3
    assert (got["num_queries"], got["num_queries_excluded"]) == (len(q_labels) - 3, 3)
    assert got["protocol"] == "query-gallery"


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_hamming_ties_give_expected_values(leave_one_out, backend, faiss_indexes):
    # 3-bit codes: 8 distinct codes for 14 items, distances 0..3, so nearly every rank
    # metric cuts through a tie group; the oracle averages over every order inside groups
    rng = np.random.default_rng(5)
    g_labels = rng.permutation(np.repeat([0, 1, 2, 3], [2, 3, 4, 5]))
    g_bits = rng.integers(0, 2, size=(14, 3)).astype(bool)
    if leave_one_out:
        q_bits, q_labels, gallery, gal_labels = g_bits, g_labels, None, None
        full = hamming_distances(g_bits, g_bits)
    else:
        q_labels = np.array([0, 1, 1, 2, 3, 3, 7])  # class 7: no gallery item
        q_bits = rng.integers(0, 2, size=(7, 3)).astype(bool)
        gallery, gal_labels = np.packbits(g_bits, axis=1), g_labels
        full = hamming_distances(q_bits, g_bits)
    got = evaluate(
        np.packbits(q_bits, axis=1) if not leave_one_out else 2 * g_bits.astype(int) - 1,
        q_labels,
        gallery,
        gal_labels,
        metrics=backend_metrics(backend),
        distance="hamming",
        backend=backend,
        chunk_size=3,
    )
    assert bool(faiss_indexes) == (backend == "faiss")
    want, excluded = oracle(full, q_labels, g_labels, leave_one_out)
    assert_all_match(got, want, backend_metrics(backend))
    assert got["num_queries_excluded"] == excluded == (0 if leave_one_out else 1)
    assert got["distance"] == "hamming" and got["ties"] == "expected"


def test_float_ties_from_duplicate_rows_give_expected_values():
    rng = np.random.default_rng(6)
    base = rng.integers(-2, 3, size=(5, 3)).astype(np.float32)
    pick = rng.integers(0, 5, size=16)
    x = base[pick]  # (16, 3) duplicated rows: exact ties in float distances
    labels = rng.integers(0, 3, size=16)
    got = evaluate(x, labels, metrics=ALL_RANK, distance="squared_euclidean")
    full = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).astype(float)
    want, _ = oracle(full, labels, labels, leave_one_out=True)
    assert_all_match(got, want)


def test_groups_without_ties_reduce_to_plain_ranking():
    hits = np.array([[True, False, True, True, False]])
    groups = groups_from_list(np.arange(5.0)[None, :], hits)
    # R = 3, relevant at ranks 1 and 3 within R: (1/1 + 2/3) / 3
    assert map_at_r(groups, np.array([3]))[0] == pytest.approx((1 + 2 / 3) / 3)
    assert r_precision(groups, np.array([3]))[0] == pytest.approx(2 / 3)
    assert recall_at_k(groups, 1)[0] == 1.0


def test_tie_at_the_cut_uses_hypergeometric_recall():
    # list of 2 at distance 1 (neither relevant) + 3 more tied items beyond, 1 relevant:
    # 5 tied items, 1 relevant; Recall@2 = P(relevant among 2 of 5) = 2/5
    groups = groups_from_list(np.ones((1, 2)), np.zeros((1, 2), bool), [3], [1])
    assert recall_at_k(groups, 2)[0] == pytest.approx(0.4)
    assert recall_at_k(groups, 1)[0] == pytest.approx(0.2)


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
    names = ("precision@1", "r_precision", "map@r")
    if leave_one_out:
        query, q_labels = gallery, g_labels
        ours = evaluate(query, q_labels, metrics=names)
        pml = _pml_accuracy(query, q_labels)
    else:
        q_labels = uneven_labels(rng, sizes=(4, 4, 6, 9, 9, 5, 3))  # class 63: no gallery item
        query = _unit(clustered(rng, q_labels, spread=2.0, dim=16))
        ours = evaluate(query, q_labels, gallery, g_labels, metrics=names)
        pml = _pml_accuracy(query, q_labels, gallery, g_labels)
    assert 0.05 < ours["map@r"] < 0.95  # not a degenerate case
    assert ours["num_queries_excluded"] == (0 if leave_one_out else 3)
    assert ours["precision@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)


# ---------- clustering ----------


def test_nmi_ami_match_sklearn_on_same_assignment():
    rng = np.random.default_rng(3)
    labels = uneven_labels(rng)
    x = clustered(rng, labels, spread=1.5)
    clusters = kmeans_assign(x, len(np.unique(labels)), seed=5)
    assert clusters.shape == labels.shape and clusters.dtype == np.int64
    assert set(clusters) <= set(range(len(np.unique(labels))))
    expected = normalized_mutual_info_score(labels, clusters)
    assert nmi(x, labels, seed=5) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0
    got = evaluate(x, labels, metrics=("ami", "nmi", "f1"), distance="euclidean", seed=5)
    assert got["nmi"] == pytest.approx(expected, abs=1e-12)
    assert got["ami"] == pytest.approx(adjusted_mutual_info_score(labels, clusters), abs=1e-12)
    assert got["f1"] == pytest.approx(pairwise_f1(labels, clusters), abs=1e-12)
    assert got["primary_metric"] == "ami"


def test_pairwise_f1_matches_pair_loop():
    rng = np.random.default_rng(12)
    for _ in range(5):
        labels = rng.integers(0, 4, size=30)
        clusters = rng.integers(0, 5, size=30)
        tp = fp = fn = 0
        for i, j in itertools.combinations(range(30), 2):
            same_class, same_cluster = labels[i] == labels[j], clusters[i] == clusters[j]
            tp += same_class and same_cluster
            fp += same_cluster and not same_class
            fn += same_class and not same_cluster
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        expected = 2 * precision * recall / (precision + recall)
        assert pairwise_f1(labels, clusters) == pytest.approx(expected, abs=1e-12)
    assert pairwise_f1(np.array([0, 0, 1]), np.array([0, 1, 2])) == 0.0


def test_clustering_is_perfect_on_separated_clusters():
    rng = np.random.default_rng(4)
    labels = uneven_labels(rng, sizes=(5, 9, 14, 20, 30))
    x = clustered(rng, labels, spread=1e-3) * 100.0
    for seed in range(3):
        assert nmi(x, labels, seed=seed) == pytest.approx(1.0)
    got = evaluate(x, labels, metrics=("nmi", "ami", "f1"))
    assert got["nmi"] == pytest.approx(1.0) and got["ami"] == pytest.approx(1.0)
    assert got["f1"] == pytest.approx(1.0)


def test_kmeans_assign_rejects_too_many_clusters():
    with pytest.raises(ValueError, match="cannot make 5 clusters from 3 points"):
        kmeans_assign(np.eye(3), 5)


# ---------- evaluate(): contract and errors ----------


def test_evaluate_defaults_and_keys():
    rng = np.random.default_rng(8)
    labels = uneven_labels(rng)
    out = evaluate(clustered(rng, labels), labels)
    expected = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"]
    info = ["protocol", "distance", "ties", "k", "num_queries", "num_queries_excluded"]
    assert list(out) == [*expected, *info, "primary_metric"]
    assert all(isinstance(out[m], float) for m in expected)
    assert out["primary_metric"] == "map@r" and out["k"] == 12
    assert out["recall@1"] <= out["recall@2"] <= out["recall@4"] <= out["recall@8"]
    x = clustered(rng, labels)
    assert evaluate(x, labels, metrics=("recall@4", "nmi"))["primary_metric"] == "recall@4"
    assert (
        evaluate(x, labels, metrics=("map@r", "mrr"), primary_metric="mrr")["primary_metric"]
        == "mrr"
    )


def test_labels_of_any_type():
    rng = np.random.default_rng(13)
    labels = uneven_labels(rng)
    x = clustered(rng, labels)
    names = np.array([f"class-{v}" for v in labels])
    a = evaluate(x, labels, metrics=("map@r", "knn_accuracy@3", "nmi"))
    b = evaluate(x, names, metrics=("map@r", "knn_accuracy@3", "nmi"))
    assert a == b


def test_evaluate_runs_one_search_with_largest_k(monkeypatch):
    calls = []
    real = _ranking.iter_knn

    def spy(*args, **kwargs):
        calls.append((args[2], kwargs["full_ranking"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_ranking, "iter_knn", spy)
    rng = np.random.default_rng(9)
    labels = uneven_labels(rng)  # largest class 13 -> R <= 12 in leave-one-out
    x = clustered(rng, labels)
    evaluate(x, labels, metrics=("recall@1", "precision@5", "map@r", "r_precision"))
    evaluate(x, labels, metrics=("recall@1", "recall@20", "map@3"))
    evaluate(x, labels, metrics=("knn_accuracy@7", "map", "mrr"))
    evaluate(x, labels, metrics=("nmi",))
    assert calls == [(12, False), (20, False), (7, True)]


def test_metric_names_are_documented():
    assert set(METRIC_NAMES) == {
        "recall@K", "precision@K", "r_precision", "map@r", "map", "map@K", "map_hash@K",
        "hamming_precision@R", "mrr", "knn_accuracy@K", "nmi", "ami", "f1",
    }  # fmt: skip


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
        ({"distance": "manhattan"}, "unknown distance"),
        ({"distance": "hamming"}, "binary codes"),
        ({"backend": "annoy"}, "unknown backend"),
        ({"primary_metric": "mrr"}, "primary_metric 'mrr' is not among"),
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
