"""hamming_precision@R, map_hash@K, hashing_curves and multi-label relevance against plain
loops over queries (tests/evaluation/hashing_oracle.py), with ties at the radius and at K."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepembed.evaluation import (
    EvaluationInputError,
    evaluate,
    groups_from_list,
    hashing,
    hashing_curves,
    map_hash_at_k,
    relevance,
)
from deepembed.evaluation import _knn_rows as knn_rows
from deepembed.evaluation import knn as knn_module
from deepembed.viz.hashing import plot_hashing_curves
from tests.evaluation.hashing_oracle import (
    all_orders_mean,
    ap_hash,
    hamming,
    oracle_metrics,
    oracle_pr_curve,
    per_query,
    precision_at,
    relevant,
)
from tests.evaluation.test_metrics import ALL_RANK, expected_metrics

KS_RANK = (1, 2, 3, 5)  # the Ks of test_metrics' ALL_RANK

RADII = (0, 1, 2, 3, 4)  # 4 bits: radius 4 takes the whole database
KS = (1, 2, 3, 5, 8)


def hash_names(radii=RADII, ks=KS) -> tuple[str, ...]:
    return (
        *(f"hamming_precision@{r}" for r in radii),
        *(f"map_hash@{k}" for k in ks),
        *(f"precision@{k}" for k in ks),
    )


def assert_close(got: dict, want: dict, tol: float = 1e-9) -> None:
    assert want, "empty oracle"
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tol), name


def assert_nested_close(got, want, tol: float = 1e-12) -> None:
    """Equal JSON-like structures, floats within tol."""
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_nested_close(got[key], want[key], tol)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_nested_close(a, b, tol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=tol)
    else:
        assert got == want


def codes_and_labels(seed: int, n: int = 16, bits: int = 4, classes: int = 3, multi=False):
    """Few bits for many items: distances 0..bits tie heavily at every radius and K."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, size=(n, bits)).astype(bool)
    if multi:
        labels = rng.random((n, classes + 1)) < 0.35
        labels[0] = False  # an unlabelled item: relevant to nothing
    else:
        labels = rng.integers(0, classes, size=n)
    return codes, labels


# ---------- evaluate() against the loops ----------


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_loops(seed, multi):
    codes, labels = codes_and_labels(seed, multi=multi)
    got = evaluate(codes, labels, metrics=hash_names(), distance="hamming", chunk_size=5)
    rel = relevant(labels, labels)
    want = oracle_metrics(hamming(codes, codes), rel, True, RADII, KS)
    assert_close(got, want)
    excluded = sum(not np.delete(rel[i], i).any() for i in range(len(codes)))
    assert got["num_queries_excluded"] == excluded
    assert got["protocol"] == "leave-one-out" and got["ties"] == "expected"


@pytest.mark.parametrize("multi", [False, True])
def test_query_gallery_matches_loops(multi):
    db, db_labels = codes_and_labels(2, n=18, multi=multi)
    query, q_labels = codes_and_labels(3, n=7, multi=multi)
    if not multi:
        q_labels[0] = 9  # no database item of this class: excluded and counted
    names = (*hash_names(ks=(1, 3, 18, 30)), "map", "map@4", "recall@2", "mrr", "r_precision")
    got = evaluate(
        query.astype(np.int64),  # {0, 1}, and -1/+1 below: the same codes
        q_labels,
        2 * db.astype(np.int8) - 1,
        db_labels,
        metrics=names,
        distance="hamming",
        chunk_size=3,
    )
    rel = relevant(q_labels, db_labels)
    want = oracle_metrics(hamming(query, db), rel, False, RADII, (1, 3, 18, 30))
    assert_close(got, want)
    assert got["num_queries_excluded"] == int((~rel.any(1)).sum()) > 0


def test_multi_label_one_hot_equals_single_label():
    # one label per item written as a one-hot matrix: every rank metric must agree exactly
    codes, labels = codes_and_labels(4, n=20, classes=4)
    one_hot = np.eye(5, dtype=np.uint8)[labels]
    names = (
        *hash_names(),
        *("recall@1", "recall@4", "map@3", "map@r", "r_precision", "map", "mrr"),
    )
    for gallery in (False, True):
        args = (codes[:8], labels[:8], codes[8:], labels[8:]) if gallery else (codes, labels)
        hot = (codes[:8], one_hot[:8], codes[8:], one_hot[8:]) if gallery else (codes, one_hot)
        a = evaluate(*args, metrics=names, distance="hamming")
        b = evaluate(*hot, metrics=names, distance="hamming")
        assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("distance", ["hamming", "squared_euclidean"])
def test_multi_label_every_rank_metric_matches_loops(distance, backend):
    # all rank metrics of test_metrics' oracle (every order of tied items) with multi-label
    # relevance, on the float paths too: symmetric / faiss lists, straddling rows, full rows
    rng = np.random.default_rng(5)
    labels = rng.random((14, 4)) < 0.3
    if distance == "hamming":
        x = rng.integers(0, 2, size=(14, 3)).astype(bool)
        dist = hamming(x, x)
    else:
        x = rng.integers(-1, 2, size=(14, 2)).astype(np.float32)  # duplicates: ties
        dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).astype(float)
    names = [n for n in ALL_RANK if not n.startswith("knn_accuracy")]
    if backend == "faiss":  # whole-ranking metrics always take torch's full rows
        names = [n for n in names if n not in ("map", "mrr")]
    got = evaluate(x, labels, metrics=names, distance=distance, backend=backend, chunk_size=4)
    rel = relevant(labels, labels)
    sums: dict[str, list[float]] = {}
    for _, d, r in per_query(dist, rel, True):
        for name, value in expected_metrics(d, r, KS_RANK).items():
            sums.setdefault(name, []).append(value)
    assert_close(got, {n: float(np.mean(sums[n])) for n in names})


def test_ties_straddle_radius_and_k():
    # one query, distances 1,1,2,2,2,2,3: radius 1 holds 2 items, K = 4 cuts the group at 2
    q = np.zeros((1, 3), bool)
    db = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]])
    db_labels = np.array([1, 0, 1, 0, 0, 1, 1])  # relevant: label 1
    got = evaluate(
        q, [1], db.astype(bool), db_labels, metrics=hash_names((0, 1, 2), (3, 4)),
        distance="hamming",
    )  # fmt: skip
    assert got["hamming_precision@0"] == 0.0  # nothing within radius 0 counts 0
    assert got["hamming_precision@1"] == pytest.approx(1 / 2)
    assert got["hamming_precision@2"] == pytest.approx(3 / 6)
    want = oracle_metrics(hamming(q, db.astype(bool)), db_labels[None, :] == 1, False, (), (3, 4))
    assert_close(got, want)


# ---------- expected values over orders ----------


@pytest.mark.parametrize("rel", [[1, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0]])
def test_all_tied_equals_mean_over_permutations(rel):
    # every database item at the same distance: each metric is its mean over all 6! orders
    rel = [bool(v) for v in rel]
    whole = groups_from_list(np.zeros((1, 6)), np.array([rel]))  # one group of 6
    for k in range(1, 7):
        want = all_orders_mean(rel, k, ap_hash)
        assert map_hash_at_k(whole, k)[0] == pytest.approx(want, abs=1e-12), k
    # a list of 1 with the 5 other tied items beyond it (as the k-NN search reports them)
    cut = groups_from_list(np.zeros((1, 1)), np.array([[rel[0]]]), [5], [sum(rel[1:])])
    assert map_hash_at_k(cut, 1)[0] == pytest.approx(all_orders_mean(rel, 1, ap_hash))
    # and through evaluate(): six copies of one code
    db = np.zeros((6, 8), bool)
    names = [f"map_hash@{k}" for k in range(1, 7)] + [f"precision@{k}" for k in (1, 4)]
    got = evaluate(np.zeros((1, 8), bool), [1], db, np.array(rel, int), names, "hamming")
    for k in range(1, 7):
        assert got[f"map_hash@{k}"] == pytest.approx(all_orders_mean(rel, k, ap_hash))
    assert got["precision@4"] == pytest.approx(all_orders_mean(rel, 4, precision_at))


def test_expected_ratio_is_not_the_ratio_of_expectations():
    # 1 relevant among 3 tied items, K = 1: AP@1 is 1 with probability 1/3, else 0 -> 1/3;
    # "expected numerator / expected relevant count" would give (1/3) / (1/3) = 1
    groups = groups_from_list(np.zeros((1, 1)), np.array([[False]]), [2], [1])
    assert map_hash_at_k(groups, 1)[0] == pytest.approx(1 / 3)


# ---------- bounded memory: chunks and blocks change nothing ----------


def test_chunked_equals_unchunked(monkeypatch):
    codes, labels = codes_and_labels(6, n=40, bits=5, multi=True)
    names = (*hash_names(ks=(1, 7, 20)), "map", "mrr")
    whole = evaluate(codes, labels, metrics=names, distance="hamming", chunk_size=4096)
    curves = hashing_curves(codes, labels, ns=(1, 5, 39, 50), chunk_size=4096)
    seen: list[tuple[int, int]] = []
    real = knn_rows._distance_histograms

    def spy(dist, rel, bits):
        seen.append(tuple(dist.shape))
        return real(dist, rel, bits)

    monkeypatch.setattr(knn_rows, "_distance_histograms", spy)
    monkeypatch.setattr(knn_module, "_ROW_BUDGET", 40 * 3)  # full-row blocks of 3 rows
    monkeypatch.setattr(knn_rows, "_HISTOGRAM_BLOCK", 40)  # histogram sub-blocks of 1 row
    monkeypatch.setattr(relevance, "_SHARE_BLOCK", 7)  # label-set blocks
    monkeypatch.setattr(hashing, "_H_BLOCK", 1)  # one hypergeometric outcome at a time
    small = evaluate(codes, labels, metrics=names, distance="hamming", chunk_size=2)
    assert seen and max(r * g for r, g in seen) <= 40 * 3
    assert small == pytest.approx(whole, abs=1e-12)
    assert_nested_close(hashing_curves(codes, labels, ns=(1, 5, 39, 50), chunk_size=1), curves)


# ---------- hashing_curves ----------


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("multi", [False, True])
def test_curves_match_loops(leave_one_out, multi):
    db, db_labels = codes_and_labels(7, n=15, bits=4, multi=multi)
    if leave_one_out:
        query, q_labels, args = db, db_labels, ()
    else:
        query, q_labels = codes_and_labels(8, n=6, bits=4, multi=multi)
        args = (db, db_labels)
    ns = (1, 2, 5, 14, 40)
    out = hashing_curves(query, q_labels, *args, ns=ns, chunk_size=4)
    json.dumps(out, allow_nan=False)  # JSON-ready
    rel = relevant(q_labels, db_labels)
    dist = hamming(query, db)
    want = oracle_metrics(dist, rel, leave_one_out, (), ns)
    assert out["precision_at_n"]["n"] == list(ns)
    for n, value in zip(ns, out["precision_at_n"]["precision"], strict=True):
        assert value == pytest.approx(want[f"precision@{n}"], abs=1e-9), n
    precision, recall, zero, kept = oracle_pr_curve(dist, rel, leave_one_out, 4)
    pr = out["pr_curve"]
    assert pr["radius"] == [0, 1, 2, 3, 4] and pr["num_queries_retrieving"] == kept
    for got, ref in zip(pr["precision"], precision, strict=True):
        assert (got is None and ref is None) or got == pytest.approx(ref, abs=1e-9)
    assert pr["recall"] == pytest.approx(recall, abs=1e-9)
    assert pr["precision_empty_as_zero"] == pytest.approx(zero, abs=1e-9)
    assert pr["recall"][-1] == pytest.approx(1.0)  # radius = bits retrieves everything
    evaluated = evaluate(
        query, q_labels, *args, metrics=[f"hamming_precision@{r}" for r in range(5)],
        distance="hamming",
    )  # fmt: skip
    for r in range(5):
        assert evaluated[f"hamming_precision@{r}"] == pytest.approx(zero[r], abs=1e-9)
    assert out["num_queries"] == evaluated["num_queries"]
    # pair histogram by loops: kept queries only, never the query itself
    want_rel, want_irr = np.zeros(5, int), np.zeros(5, int)
    for i in range(len(dist)):
        keep = [j for j in range(dist.shape[1]) if not (leave_one_out and i == j)]
        if not rel[i, keep].any():
            continue
        for j in keep:
            (want_rel if rel[i, j] else want_irr)[int(dist[i, j])] += 1
    hist = out["distance_histogram"]
    assert hist["distance"] == [0, 1, 2, 3, 4]
    assert hist["relevant"] == want_rel.tolist() and hist["irrelevant"] == want_irr.tolist()


def test_curves_report_undefined_precision_as_none():
    # codes far apart: at radius 0 no query retrieves anything (precision undefined)
    codes = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    out = hashing_curves(codes, [0, 0, 0], ns=(1,))
    pr = out["pr_curve"]
    assert pr["precision"][0] is None and pr["num_queries_retrieving"][0] == 0
    assert pr["precision_empty_as_zero"][0] == 0.0 and pr["recall"][0] == 0.0
    assert out["bits"] == 4 and out["database_size"] == 3


def test_plot_hashing_curves(tmp_path):
    codes, labels = codes_and_labels(9, n=30, bits=6)
    curves = json.loads(json.dumps(hashing_curves(codes, labels, ns=(1, 5, 10))))
    one = plot_hashing_curves(curves, tmp_path / "one" / "hashing_curves.png")
    two = plot_hashing_curves({"a": curves, "b": curves}, tmp_path / "two.png")
    for path in (one, two):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two.png"]  # no temp files
    with pytest.raises(ValueError, match="no hashing curves"):
        plot_hashing_curves({"map": 0.3}, tmp_path / "none.png")


# ---------- errors ----------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distance": "cosine"}, "hamming_precision@2 counts items within a Hamming radius"),
        ({"metrics": ("nmi",), "multi": True}, "nmi need one class per item"),
        ({"metrics": ("knn_accuracy@3",), "multi": True}, "knn_accuracy@3 need one class"),
        ({"query_labels": np.full((6, 2), 2)}, "must hold 0/1"),
        ({"query_labels": np.zeros((6, 0))}, "no label columns"),
        (
            {"gallery": np.ones((4, 4)), "gallery_labels": np.zeros((4, 3)), "multi": True},
            "label matrices disagree on the classes",
        ),
        (
            {"gallery": np.ones((4, 4)), "gallery_labels": np.zeros(4), "multi": True},
            "both be single labels",
        ),
        ({"metrics": ("hamming_precision@-1",)}, "unknown metric"),
        ({"metrics": ("map_hash@0",)}, "unknown metric"),
    ],
)
def test_errors(kwargs, message):
    single = [0, 0, 1, 1, 0, 1]
    args = {
        "query": np.random.default_rng(0).integers(0, 2, size=(6, 4)),
        "query_labels": np.eye(2, dtype=int)[single] if kwargs.pop("multi", False) else single,
        "metrics": ("hamming_precision@2",),
        "distance": "hamming",
    }
    args.update(kwargs)
    with pytest.raises(EvaluationInputError, match=message) as info:
        evaluate(**args)
    assert "\n" not in str(info.value)


def test_curves_errors():
    codes = np.zeros((3, 8), bool)
    with pytest.raises(EvaluationInputError, match="ns must hold positive integers"):
        hashing_curves(codes, [0, 0, 1], ns=(0, 5))
    with pytest.raises(EvaluationInputError, match="no query has a relevant item"):
        hashing_curves(codes, [0, 1, 2])
    with pytest.raises(EvaluationInputError, match="binary codes"):
        hashing_curves(np.full((3, 4), 0.5), [0, 0, 1])
