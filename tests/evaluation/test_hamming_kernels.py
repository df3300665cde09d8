"""The popcount kernels of Hamming evaluation (``_hamming``) against the plain torch path
they replace on CPU, and against the brute-force loops: small random codes with heavy ties,
single- and multi-label, leave-one-out and query/gallery, codes of one and of two words."""

from __future__ import annotations

import numpy as np
import pytest

from deepembed.evaluation import (
    EvaluationInputError,
    _hamming,
    evaluate,
    hashing_curves,
    knn,
    knn_search,
)
from deepembed.evaluation import _knn_hamming as knn_hamming
from deepembed.evaluation import _knn_rows as knn_rows
from tests.evaluation.hashing_oracle import hamming, oracle_metrics, relevant
from tests.evaluation.test_hashing_metrics import assert_nested_close, hash_names
from tests.evaluation.test_metrics import ALL_RANK

RANK = (*ALL_RANK, "map_hash@3", "map_hash@40", "hamming_precision@0", "hamming_precision@2")
MULTI_RANK = tuple(n for n in RANK if not n.startswith("knn_accuracy"))


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Force the kernels at every size; counts the searches they serve."""
    monkeypatch.setattr(knn_hamming, "_HAMMING_MIN_PAIRS", 0)
    calls: list[int] = []
    real = _hamming.iter_chunks

    def spy(*args, **kwargs):
        calls.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(_hamming, "iter_chunks", spy)
    return calls


def plain(monkeypatch: pytest.MonkeyPatch, fn, *args, **kwargs):
    """fn(*args, **kwargs) on the plain torch path (kernels off)."""
    with monkeypatch.context() as m:
        m.setattr(knn_hamming, "_HAMMING_KERNELS", False)
        return fn(*args, **kwargs)


def codes(rng, n: int, bits: int, distinct: int = 9) -> np.ndarray:
    """(n, bits) bool rows drawn from a few distinct codes plus flips: heavy ties."""
    base = rng.integers(0, 2, size=(distinct, bits)).astype(bool)
    return base[rng.integers(0, distinct, n)] ^ (rng.random((n, bits)) < 0.08)


def labels(rng, n: int, multi: bool) -> np.ndarray:
    if multi:
        out = rng.random((n, 4)) < 0.3
        out[0] = False  # unlabelled: relevant to nothing
        return out
    out = rng.integers(0, 6, size=n)
    out[1] = 17  # a class of its own: excluded as a query
    return out


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("bits", [5, 48, 70])  # one word; one padded word; two words
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_metrics_equal_the_plain_path(monkeypatch, kernels, multi, bits, leave_one_out):
    rng = np.random.default_rng(bits + 2 * multi + leave_one_out)
    db, db_labels = codes(rng, 90, bits), labels(rng, 90, multi)
    names = MULTI_RANK if multi else RANK
    if leave_one_out:
        args: tuple = (np.packbits(db, axis=1) if bits == 48 else db, db_labels)
    else:
        query, q_labels = codes(rng, 31, bits), labels(rng, 31, multi)
        if not multi:
            q_labels[1] = 99  # no database item of this class
        args = (2 * query.astype(np.int8) - 1, q_labels, db, db_labels)  # {-1, +1} and bool
    want = plain(monkeypatch, evaluate, *args, metrics=names, distance="hamming", chunk_size=7)
    got = evaluate(*args, metrics=names, distance="hamming", chunk_size=7)
    assert kernels  # the kernels ran
    assert got == pytest.approx(want, abs=1e-12)
    assert got["num_queries_excluded"] > 0


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("multi", [False, True])
def test_metrics_equal_the_loops(kernels, leave_one_out, multi):
    rng = np.random.default_rng(11 + leave_one_out + 2 * multi)
    db = rng.integers(0, 2, size=(16, 4)).astype(bool)
    db_labels = labels(rng, 16, multi)
    ks = (1, 2, 5, 8)
    if leave_one_out:
        query, q_labels, args = db, db_labels, (db, db_labels)
    else:
        query, q_labels = rng.integers(0, 2, size=(6, 4)).astype(bool), labels(rng, 6, multi)
        args = (query, q_labels, db, db_labels)
    got = evaluate(*args, metrics=hash_names(ks=ks), distance="hamming", chunk_size=5)
    assert kernels
    rel = relevant(q_labels, db_labels)
    want = oracle_metrics(hamming(query, db), rel, leave_one_out, (0, 1, 2, 3, 4), ks)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def search(query, gallery, k, **kw) -> list:
    return list(knn.iter_knn(query, gallery, k, "hamming", **kw))


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_search_equals_the_plain_path(monkeypatch, kernels, with_labels, leave_one_out):
    # lists by (distance, index), tied items beyond the cut and their relevant share, and
    # the per-distance counts, chunk by chunk
    rng = np.random.default_rng(21 + with_labels + 2 * leave_one_out)
    db = codes(rng, 70, 6, distinct=5)
    query = db if leave_one_out else codes(rng, 23, 6, distinct=5)
    db_labels = rng.integers(0, 4, size=70)
    q_labels = db_labels if leave_one_out else rng.integers(0, 4, size=23)
    lab = {"query_labels": q_labels, "gallery_labels": db_labels} if with_labels else {}
    for k in (1, 4, 33, 70):
        kw = {
            "exclude_self": leave_one_out,
            "chunk_size": 6,
            "histograms": with_labels,
            "full_ranking": with_labels,
            **lab,
        }
        gallery = None if leave_one_out else db
        want = plain(monkeypatch, search, query, gallery, k, **kw)
        got = search(query, gallery, k, **kw)
        assert [c.start for c in got] == [c.start for c in want]
        for a, b in zip(got, want, strict=True):
            for field in ("distances", "indices", "tied_beyond", "relevant_tied_beyond"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), field)
            if with_labels:
                np.testing.assert_array_equal(a.distance_counts, b.distance_counts)
                np.testing.assert_array_equal(
                    a.relevant_distance_counts, b.relevant_distance_counts
                )
                assert a.relevant_groups is not None
    assert kernels
    res = knn_search(query, db, 5, distance="hamming", exclude_self=leave_one_out)
    ref = plain(monkeypatch, knn_search, query, db, 5, "hamming", exclude_self=leave_one_out)
    np.testing.assert_array_equal(res.indices, ref.indices)
    np.testing.assert_array_equal(res.distances, ref.distances)
    assert res.distances.dtype == np.float32 and res.indices.dtype == np.int64


def set_bits(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (any shape), by unpacking."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1, dtype=np.int64)


def test_candidate_buffers_compact_and_grow():
    # buffers of one slot: every admission compacts, and growth is needed; same lists
    rng = np.random.default_rng(31)
    g = _hamming.code_words(codes(rng, 300, 12, distinct=40), 12)
    order = np.argsort(-set_bits(g ^ g[0]), kind="stable")  # farthest first: for
    g = np.ascontiguousarray(g[order])  # query 0 each item is nearer than the last ones
    q = g[:9]
    for k in (1, 5, 40):
        outs = [
            (np.zeros((9, k), np.int64), np.zeros((9, k), np.int64), np.zeros(9, np.int64))
            for _ in range(2)
        ]
        _hamming.k_nearest(q, g, k, 12, -1, 1, *outs[0])
        _hamming.k_nearest(q, g, k, 12, -1, 2 * k + 256, *outs[1])
        for a, b in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, b)
        dist = set_bits(q[:, None] ^ g[None, :])
        want = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties by lower index
        np.testing.assert_array_equal(outs[0][1], want)
        last = np.take_along_axis(dist, want[:, -1:], 1)
        np.testing.assert_array_equal(
            outs[0][2], (dist == last).sum(1) - (outs[0][0] == last).sum(1)
        )


def test_curves_equal_the_plain_path(monkeypatch, kernels):
    rng = np.random.default_rng(41)
    db, db_labels = codes(rng, 60, 8), labels(rng, 60, True)
    ns = (1, 5, 59, 80)
    want = plain(monkeypatch, hashing_curves, db, db_labels, ns=ns, chunk_size=7)
    assert_nested_close(hashing_curves(db, db_labels, ns=ns, chunk_size=7), want)
    query, q_labels = codes(rng, 9, 8), labels(rng, 9, True)
    args = (query, q_labels, db, db_labels)
    want = plain(monkeypatch, hashing_curves, *args, ns=ns)
    assert_nested_close(hashing_curves(*args, ns=ns), want)
    assert kernels


def test_kernels_build_no_distance_rows(monkeypatch, kernels):
    def fail(*args, **kwargs):
        raise AssertionError("the full-row pass ran")

    monkeypatch.setattr(knn_rows, "_full_rows", fail)
    monkeypatch.setattr(knn._Space, "dots", fail)
    rng = np.random.default_rng(51)
    x, y = codes(rng, 50, 64), rng.integers(0, 3, size=50)
    evaluate(x, y, metrics=RANK, distance="hamming")
    knn_search(x, x, 7, distance="hamming", exclude_self=True)
    assert kernels


def test_routing(monkeypatch):
    x = np.zeros((8, 16), bool)
    apply = knn_hamming._hamming_kernels_apply
    monkeypatch.setattr(knn_hamming, "_HAMMING_MIN_PAIRS", 64)
    assert apply(x, None, "auto") and apply(x, x, "torch")
    assert not apply(x[:7], None, "auto")  # 49 pairs: the plain path
    assert not apply(x, None, "faiss")  # faiss keeps its own search
    assert not apply(x, None, "annoy")  # the plain path names the bad backend
    monkeypatch.setattr(knn_hamming, "_HAMMING_KERNELS", False)
    assert not apply(x, None, "auto")


@pytest.mark.parametrize(
    ("query", "gallery", "kwargs", "message"),
    [
        (np.ones((2, 8), bool), np.ones((4, 16), bool), {}, "code length mismatch"),
        (np.ones((2, 8), bool), np.ones((4, 8), bool), {"exclude_self": True}, "same set"),
        (np.full((2, 4), 3), np.ones((4, 4), bool), {}, "binary codes"),
        (np.ones((2, 4), np.uint8), np.zeros((0, 4), np.uint8), {}, "empty gallery"),
        (np.ones((2, 4), bool), np.ones((4, 4), bool), {"chunk_size": 0}, "chunk_size must"),
    ],
)
def test_kernel_errors_match(monkeypatch, kernels, query, gallery, kwargs, message):
    for use in (True, False):
        monkeypatch.setattr(knn_hamming, "_HAMMING_KERNELS", use)
        with pytest.raises(EvaluationInputError, match=message):
            knn_search(query, gallery, 2, distance="hamming", **kwargs)


def test_exclude_self_on_two_sets_of_one_size(monkeypatch, kernels):
    # exclude_self drops gallery item i from query row i even where the rows differ
    rng = np.random.default_rng(61)
    query, gallery = codes(rng, 40, 7), codes(rng, 40, 7)
    lab = rng.random((40, 3)) < 0.4
    kw = {"exclude_self": True, "chunk_size": 9, "histograms": True}
    kw |= {"query_labels": lab, "gallery_labels": lab[::-1].copy()}
    want = plain(monkeypatch, search, query, gallery, 6, **kw)
    got = search(query, gallery, 6, **kw)
    for field in ("indices", "tied_beyond", "relevant_tied_beyond", "distance_counts"):
        a = np.concatenate([getattr(c, field) for c in got])
        np.testing.assert_array_equal(a, np.concatenate([getattr(c, field) for c in want]))
    assert kernels
