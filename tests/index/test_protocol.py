"""The Index protocol for every spec family against brute force: exact ones equal, approximate
ones above a recall bar with generous parameters; save/open; parameters; edge cases."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError
from deepembed.index.faiss_parts import blas_rule
from deepembed.inference import Embeddings
from tests.index.conftest import (
    assert_padded_past_the_end,
    brute_force,
    clustered,
    exact_top,
    recall,
)

N, DIM, Q, K = 1000, 16, 30, 10
# spec, generous search parameters, recall@10 bar (1.0: results equal brute force)
FLOAT_SPECS = [
    ("Flat", {}, 1.0),
    ("IVF16,Flat", {"nprobe": 16}, 1.0),
    ("IVF16,PQ8", {"nprobe": 16}, 0.5),
    ("IVF16,PQ8,RFlat", {"nprobe": 16, "k_factor": 8}, 0.95),
    ("OPQ8,IVF16,PQ8,RFlat", {"nprobe": 16, "k_factor": 8}, 0.95),
    ("HNSW16", {"efSearch": 128}, 0.95),
    ("IVF16_HNSW8,Flat", {"nprobe": 16, "efSearch": 64}, 0.99),
]
BINARY_SPECS = [
    ("BFlat", {}, 1.0),
    ("BIVF16", {"nprobe": 16}, 1.0),
    ("BIVF16_HNSW8", {"nprobe": 16}, 1.0),
    ("BHNSW16", {"efSearch": 256}, 0.9),
    ("BHash8", {}, 0.0),  # bucket lookup: only exact-distance results are checked
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gallery = clustered(N, DIM)
    queries = clustered(Q, DIM, seed=1)
    ids = np.random.default_rng(0).permutation(100_000)[:N]  # arbitrary, non-contiguous
    return gallery, queries, ids


@pytest.mark.parametrize(("spec", "params", "bar"), FLOAT_SPECS, ids=[s[0] for s in FLOAT_SPECS])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_float_specs_against_brute_force(
    spec: str, params: dict, bar: float, metric: str, data: tuple, tmp_path: Path
) -> None:
    gallery, queries, ids = data
    idx = index.create(DIM, metric, spec)
    idx.train(gallery)
    idx.add(gallery, ids, labels=ids % 7)
    true_d, true_i = exact_top(gallery, ids, queries, K, metric)
    d, found = idx.search(queries, K, params=params)
    assert d.shape == found.shape == (Q, K) and d.dtype == np.float32
    if bar == 1.0:
        assert np.array_equal(found, true_i)
        assert np.allclose(d, true_d, atol=1e-3)
    else:
        assert recall(found, true_i) >= bar
    idx.save(tmp_path / "i")
    reopened = index.open(tmp_path / "i")
    d2, found2 = reopened.search(queries, K, params=params)
    assert np.array_equal(found2, found) and np.allclose(d2, d)


def test_inner_product_is_minus_the_dot_product(data: tuple) -> None:
    gallery, queries, ids = data
    idx = index.create(DIM, "inner_product", "Flat")
    idx.add(gallery, ids)
    d, found = idx.search(queries, K)
    true_d, true_i = exact_top(gallery, ids, queries, K, "inner_product")
    assert np.array_equal(found, true_i) and np.allclose(d, true_d, rtol=1e-5)


@pytest.mark.parametrize(("spec", "params", "bar"), BINARY_SPECS, ids=[s[0] for s in BINARY_SPECS])
def test_binary_specs_against_brute_force(
    spec: str, params: dict, bar: float, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(N, 6), dtype=np.uint8)  # 48 bits: padded to 8 bytes
    ids = rng.permutation(100_000)[:N]
    queries = codes[:Q] ^ rng.integers(0, 2, size=(Q, 6), dtype=np.uint8)
    idx = index.create(48, "hamming", spec)
    idx.train(codes)
    idx.add(codes, ids)
    d, found = idx.search(queries, K, params=params)
    dist = brute_force(codes, queries, "hamming")
    kth = np.sort(dist, axis=1)[:, K - 1]
    valid = found >= 0
    position = {int(i): p for p, i in enumerate(ids)}
    true_of_found = np.array([[dist[q, position[int(i)]] if i >= 0 else np.inf for i in row]
                              for q, row in enumerate(found)])  # fmt: skip
    assert np.array_equal(d[valid], true_of_found[valid])  # every distance is the true one
    if bar == 1.0:
        assert np.array_equal(d, np.sort(dist, axis=1)[:, :K])  # ties may order ids differently
    else:
        assert np.mean(d <= kth[:, None]) >= bar
    idx.save(tmp_path / "b")
    assert np.array_equal(index.open(tmp_path / "b").search(queries, K, params=params)[0], d)


def test_missing_results_are_minus_one_and_inf(data: tuple) -> None:
    gallery, queries, ids = data
    idx = index.create(DIM, "euclidean", "Flat")
    assert_padded_past_the_end(idx, gallery, queries, ids)


def test_params_per_index_are_persisted_and_per_query_override(data: tuple, tmp_path: Path) -> None:
    gallery, queries, ids = data
    idx = index.create(DIM, "euclidean", "IVF16,Flat", uri=tmp_path / "i")
    idx.train(gallery)
    idx.add(gallery, ids)
    assert idx.params == {"nprobe": 16}  # the default, capped at nlist
    idx.set_params(nprobe=1)
    narrow = idx.search(queries, K)[1]
    wide = idx.search(queries, K, params={"nprobe": 16})[1]
    true_i = exact_top(gallery, ids, queries, K, "euclidean")[1]
    assert recall(narrow, true_i) < recall(wide, true_i) == 1.0
    idx.close()
    reopened = index.open(tmp_path / "i")
    assert reopened.params == {"nprobe": 1}
    assert np.array_equal(reopened.search(queries, K)[1], narrow)
    with pytest.raises(DataError, match="'efSearch' does not apply"):
        reopened.search(queries, K, params={"efSearch": 3})


def test_training_needs_enough_points_and_comes_first(data: tuple) -> None:
    gallery, _, ids = data
    ivf = index.create(DIM, "cosine", "IVF64,Flat")
    with pytest.raises(DataError, match="not trained: call train"):
        ivf.add(gallery[:5], ids[:5])
    with pytest.raises(DataError, match=r"needs at least 64 vectors \(64 lists\), got 10"):
        ivf.train(gallery[:10])
    pq = index.create(DIM, "cosine", "IVF4,PQ4")
    with pytest.raises(
        DataError, match=r"at least 256 vectors \(4 lists and 256 per PQ codebook\)"
    ):
        pq.train(gallery[:100])
    assert not ivf.is_trained and len(ivf) == 0
    flat = index.create(DIM, "cosine", "Flat")
    flat.train(gallery)  # nothing to train: a no-op
    assert flat.is_trained


def test_build_from_embeddings_float_and_codes(data: tuple, tmp_path: Path) -> None:
    gallery, _, ids = data
    floats = Embeddings(gallery, ids % 5, ids, {0: "zero"})
    built = index.build(floats, spec="IVF16,Flat", uri=tmp_path / "f")
    assert built.spec == "IVF16,Flat" and built.metric == "cosine" and len(built) == N
    assert index.open(tmp_path / "f").class_names == {0: "zero"}
    signs = np.where(gallery[:, :16] > 0, 1.0, -1.0).astype(np.float32)
    hashed = Embeddings.from_codes(signs, ids % 5, ids)
    binary = index.build(hashed)
    assert (binary.spec, binary.metric, binary.dim) == ("BFlat", "hamming", 16)
    d, _ = binary.search(hashed.codes[:3], 1)  # type: ignore[index]
    assert (d[:, 0] == 0).all()
    with pytest.raises(DataError, match="needs packed codes"):
        index.build(floats, metric="hamming")
    with pytest.raises(DataError, match="empty gallery"):
        index.build(Embeddings(gallery[:0], ids[:0], ids[:0]))


def test_milvus_uris_are_recognised(tmp_path: Path) -> None:
    """Milvus URIs go to the Milvus backend (tests/index/test_milvus.py); directories to faiss."""
    for uri in (tmp_path / "x.db", "x.db#gallery", "http://127.0.0.1:19530", "https://h:1#c"):
        assert index.is_milvus(uri)
    assert not index.is_milvus(tmp_path / "index")


def test_exhaustive_search_uses_blas_from_8_queries_then_restores_faiss(data: tuple) -> None:
    # faiss's default (128,000 = n_queries * dim) keeps a 64-d batch under 2,000 queries on
    # its per-pair loop, 4x slower than BLAS at 256 queries (100k x 64, measured)
    before = faiss.cvar.distance_compute_blas_threshold
    with blas_rule(64):
        assert faiss.cvar.distance_compute_blas_threshold == 8 * 64
    assert faiss.cvar.distance_compute_blas_threshold == before
    gallery, queries, ids = data
    idx = index.create(DIM, "euclidean", "Flat")
    idx.add(gallery, ids)
    idx.search(queries, K)
    assert faiss.cvar.distance_compute_blas_threshold == before
