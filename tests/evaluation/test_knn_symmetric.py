"""The CPU merge kernels (symmetric search with gallery=None, streamed search with a gallery)
against the plain streamed search with torch merges."""

from __future__ import annotations

import numpy as np
import pytest

from deepembed.evaluation import evaluate, knn


def search(x, gallery, k, distance, exclude_self, labels, chunk_size=13):
    """All chunks of one torch search, concatenated: (indices, distances, tied, rel_tied)."""
    chunks = list(
        knn.iter_knn(
            x,
            gallery,
            k,
            distance,
            exclude_self=exclude_self,
            chunk_size=chunk_size,
            backend="torch",
            query_labels=labels,
            gallery_labels=labels,
        )
    )
    return tuple(
        np.concatenate([getattr(c, f) for c in chunks])
        for f in ("indices", "distances", "tied_beyond", "relevant_tied_beyond")
    )


@pytest.mark.parametrize("distance", ["cosine", "inner_product", "euclidean", "squared_euclidean"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize(
    ("data", "n", "block"),
    [("exact", 203, 64), ("exact", 150, 40), ("exact", 97, 4096), ("float", 192, 64)],
)
def test_kernel_searches_equal_torch_merges(monkeypatch, distance, exclude_self, data, n, block):
    monkeypatch.setattr(knn, "_PAIR_BLOCK", block)  # several block pairs, uneven last block
    monkeypatch.setattr(knn, "_GALLERY_BLOCK", 64)  # several streamed blocks too
    rng = np.random.default_rng(n)
    if data == "exact":  # +-1 rows of 16 bits, duplicated: exact dot products, many real ties
        x = np.sign(rng.normal(size=(20, 16))).astype(np.float32)[rng.integers(0, 20, size=n)]
        chunk = 13
    else:  # generic floats; every BLAS block >= 16 wide, where its rounding is shape-free
        x = rng.normal(size=(n, 8)).astype(np.float32)
        chunk = 32
    labels = rng.integers(0, 5, size=n)
    seen = []
    original = knn._symmetric_candidates

    def spy(*args):
        seen.append(True)
        yield from original(*args)

    monkeypatch.setattr(knn, "_symmetric_candidates", spy)
    for k in (1, 30) if data == "float" else (9, 30):
        monkeypatch.setattr(knn, "_CPU_KERNELS", False)
        plain = search(x, x, k, distance, exclude_self, labels, chunk)  # torch merges
        monkeypatch.setattr(knn, "_CPU_KERNELS", True)
        streamed = search(x, x, k, distance, exclude_self, labels, chunk)  # merge_rows
        assert not seen
        sym = search(x, None, k, distance, exclude_self, labels, chunk)  # merge_rows + _cols
        assert seen  # the symmetric path really ran
        seen.clear()
        for a, b, c in zip(plain, streamed, sym, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        if data == "exact":
            assert plain[2].sum() > 0  # straddling ties occur and are resolved alike


def test_symmetric_search_matches_brute_force_ties():
    data = np.eye(4, dtype=np.float32)[np.random.default_rng(3).integers(0, 4, size=70)]
    full = ((data[:, None] - data[None]) ** 2).sum(-1)  # (70, 70) exact, mostly tied
    np.fill_diagonal(full, np.inf)
    res = knn.knn_search(data, None, 25, "squared_euclidean", exclude_self=True, backend="torch")
    expected = np.argsort(full, axis=1, kind="stable")[:, :25]  # ties by lower index
    np.testing.assert_array_equal(res.indices, expected)


def test_evaluate_leave_one_out_torch_equals_faiss():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 30, size=400)
    x = rng.normal(size=(30, 16))[labels] + rng.normal(size=(400, 16))
    names = ("recall@1", "recall@10", "r_precision", "map@r")
    a = evaluate(x, labels, metrics=names, backend="torch")
    b = evaluate(x, labels, metrics=names, backend="faiss")
    for name in names:
        assert a[name] == pytest.approx(b[name], abs=1e-12)


def test_symmetric_search_over_heap_budget_streams_instead(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=90)
    sym = search(x, None, 12, "cosine", True, labels)
    calls = []
    monkeypatch.setattr(knn, "_SYMMETRIC_HEAP_BUDGET", 8 * 90 * 13 - 1)  # one byte short
    monkeypatch.setattr(knn, "_symmetric_candidates", lambda *a: calls.append(a) or iter(()))
    streamed = search(x, None, 12, "cosine", True, labels)
    assert not calls
    for a, b in zip(sym, streamed, strict=True):
        np.testing.assert_array_equal(a, b)
