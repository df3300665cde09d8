"""knn_search against a brute-force numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepembed.evaluation import KnnResult, knn, knn_search


def oracle_distances(query: np.ndarray, gallery: np.ndarray, distance: str) -> np.ndarray:
    """Full (Q, G) float64 distance matrix."""
    q = query.astype(np.float64)
    g = gallery.astype(np.float64)
    if distance == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    diff = q[:, None, :] - g[None, :, :]  # (Q, G, D)
    sq = (diff**2).sum(-1)
    return np.sqrt(sq) if distance == "euclidean" else sq


def oracle_knn(full: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) distances and indices ordered by (distance, index)."""
    full = full.copy()
    if exclude_self:
        np.fill_diagonal(full, np.inf)
    order = np.argsort(full, axis=1, kind="stable")[:, :k]  # stable: ties by lower index
    return np.take_along_axis(full, order, axis=1), order


def assert_matches_oracle(res: KnnResult, full: np.ndarray, k: int, exclude_self: bool, tol):
    exp_d, exp_i = oracle_knn(full, k, exclude_self)
    assert res.distances.shape == res.indices.shape == exp_i.shape
    assert res.distances.dtype == np.float32 and res.indices.dtype == np.int64
    np.testing.assert_allclose(res.distances, exp_d, atol=tol, rtol=0)
    # the returned neighbours are a valid k-NN list under the exact distances ...
    np.testing.assert_allclose(np.take_along_axis(full, res.indices, 1), exp_d, atol=tol, rtol=0)
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    # ... and identical to the oracle wherever no near-tie makes float32 rounding matter
    masked = np.where(np.eye(*full.shape, dtype=bool) & exclude_self, np.inf, full)
    srt = np.sort(masked, axis=1)[:, : k + 1]  # (Q, k + 1), needs k < available items
    gap_after = np.diff(srt, axis=1)  # (Q, k) distance to the next rank
    gap_before = np.concatenate([np.full((len(srt), 1), np.inf), gap_after[:, :-1]], axis=1)
    clear = (gap_before > 10 * tol) & (gap_after > 10 * tol)  # (Q, k)
    assert clear.mean() > 0.9  # the exact check below is not vacuous
    np.testing.assert_array_equal(res.indices[clear], exp_i[clear])


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "squared_euclidean"])
@pytest.mark.parametrize("chunk_size", [7, 4096])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("block", [16, 4096])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_brute_force(monkeypatch, distance, chunk_size, exclude_self, block, backend):
    monkeypatch.setattr(knn, "_GALLERY_BLOCK", block)  # 16: several streamed blocks
    monkeypatch.setattr(knn, "_PAIR_BLOCK", block)  # and several symmetric block pairs
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(120, 8)).astype(np.float32)
    query = gallery if exclude_self else rng.normal(size=(50, 8)).astype(np.float32)
    full = oracle_distances(query, gallery, distance)
    res = knn_search(
        query,
        None if exclude_self else gallery,  # a set against itself: the symmetric search
        k=10,
        distance=distance,
        exclude_self=exclude_self,
        chunk_size=chunk_size,
        backend=backend,
    )
    assert_matches_oracle(res, full, 10, exclude_self, tol=1e-4)


def test_query_in_gallery_finds_itself_first():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(40, 5)).astype(np.float32)
    for distance in ("cosine", "euclidean"):
        res = knn_search(gallery, gallery, k=3, distance=distance, chunk_size=16)
        np.testing.assert_array_equal(res.indices[:, 0], np.arange(40))
        res = knn_search(gallery, gallery, k=3, distance=distance, exclude_self=True)
        assert not np.any(res.indices == np.arange(40)[:, None])


def test_ties_broken_by_lower_gallery_index_euclidean():
    # small-integer data: every distance is exact in float32, so ties are real ties
    rng = np.random.default_rng(2)
    base = rng.integers(-2, 3, size=(6, 3)).astype(np.float32)
    gallery = base[rng.integers(0, 6, size=40)]  # (40, 3) many duplicated rows
    query = rng.integers(-2, 3, size=(25, 3)).astype(np.float32)
    full = oracle_distances(query, gallery, "euclidean")
    for chunk_size in (4, 4096):
        for k in (1, 5, 17, 40):
            res = knn_search(query, gallery, k, distance="euclidean", chunk_size=chunk_size)
            exp_d, exp_i = oracle_knn(full, k, exclude_self=False)
            np.testing.assert_array_equal(res.indices, exp_i)
            np.testing.assert_allclose(res.distances, exp_d, rtol=1e-6)


def test_ties_broken_by_lower_gallery_index_leave_one_out():
    rng = np.random.default_rng(3)
    data = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=30)]  # (30, 4) one-hot rows
    for distance in ("cosine", "euclidean"):
        full = oracle_distances(data, data, distance)
        for k in (1, 6, 29):
            res = knn_search(data, data, k, distance=distance, exclude_self=True, chunk_size=8)
            _, exp_i = oracle_knn(full, k, exclude_self=True)
            np.testing.assert_array_equal(res.indices, exp_i)


def test_all_equal_gallery_takes_lowest_indices():
    gallery = np.ones((10, 3), dtype=np.float32)
    res = knn_search(np.ones((2, 3), np.float32), gallery, k=4)
    np.testing.assert_array_equal(res.indices, [[0, 1, 2, 3]] * 2)
    res = knn_search(gallery, gallery, k=4, exclude_self=True)
    np.testing.assert_array_equal(res.indices[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(res.indices[2], [0, 1, 3, 4])


def test_k_is_clipped_to_gallery_size():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    assert knn_search(x[:3], x, k=100).indices.shape == (3, 6)
    assert knn_search(x, x, k=100, exclude_self=True).indices.shape == (6, 5)
    assert knn_search(x[:1], x[:1], k=5, exclude_self=True).indices.shape == (1, 0)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(5)
    q = rng.normal(size=(20, 6)).astype(np.float32)
    g = rng.normal(size=(30, 6)).astype(np.float32)
    a = knn_search(q, g, k=5, distance="euclidean")
    b = knn_search(
        torch.from_numpy(q).requires_grad_(),
        torch.from_numpy(g).double(),
        k=5,
        distance="euclidean",
    )
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-6)


def test_result_is_frozen():
    res = knn_search(np.eye(3), np.eye(3), k=1)
    with pytest.raises(AttributeError):
        res.indices = None  # type: ignore[misc]


def test_score_blocks_stay_bounded(monkeypatch):
    seen: list[tuple[int, int]] = []
    original = knn._Space.dots  # every product of the cosine and hamming searches

    def spy(self, q0, q1, g0, g1):
        out = original(self, q0, q1, g0, g1)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(knn._Space, "dots", spy)
    monkeypatch.setattr(knn, "_GALLERY_BLOCK", 8)
    x = np.random.default_rng(6).normal(size=(25, 4)).astype(np.float32)
    knn_search(x, x, k=3, chunk_size=10, backend="torch")  # streamed: 10 x 8 blocks at most
    assert max(r for r, _ in seen) == 10 and max(c for _, c in seen) == 8
    seen.clear()
    monkeypatch.setattr(knn, "_ROW_BUDGET", 50)  # full-row pass: 50 // 25 = 2 rows per block
    knn_search(x > 0, x > 0, k=3, distance="hamming", chunk_size=10)
    assert set(seen) == {(2, 25), (1, 25)}


def hamming_oracle(query_bits: np.ndarray, gallery_bits: np.ndarray) -> np.ndarray:
    """(Q, G) differing bits, by a loop."""
    return np.array([[int((q != g).sum()) for g in gallery_bits] for q in query_bits], float)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_hamming_matches_brute_force_with_lowest_index_ties(backend, exclude_self):
    rng = np.random.default_rng(7)
    gallery = rng.integers(0, 2, size=(90, 12)).astype(bool)
    query = gallery if exclude_self else rng.integers(0, 2, size=(30, 12)).astype(bool)
    full = hamming_oracle(query, gallery)
    for k in (1, 7, 40):
        res = knn_search(
            query, gallery, k, distance="hamming", exclude_self=exclude_self, backend=backend
        )
        exp_d, exp_i = oracle_knn(full, k, exclude_self)
        np.testing.assert_array_equal(res.distances, exp_d)
        np.testing.assert_array_equal(res.indices, exp_i)


def test_hamming_code_formats_agree():
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 2, size=(40, 24))
    ref = knn_search(bits, bits, 5, distance="hamming", exclude_self=True)
    for codes in (bits.astype(bool), 2 * bits - 1, np.packbits(bits.astype(bool), axis=1)):
        res = knn_search(codes, codes, 5, distance="hamming", exclude_self=True)
        np.testing.assert_array_equal(res.indices, ref.indices)
        np.testing.assert_array_equal(res.distances, ref.distances)
    with pytest.raises(ValueError, match="binary codes"):
        knn_search(bits * 3, bits, 2, distance="hamming")


def test_tied_items_beyond_the_cut_are_counted():
    rng = np.random.default_rng(9)
    gallery = rng.integers(0, 2, size=(60, 5)).astype(bool)
    query = rng.integers(0, 2, size=(15, 5)).astype(bool)
    g_labels, q_labels = rng.integers(0, 3, size=60), rng.integers(0, 3, size=15)
    full = hamming_oracle(query, gallery)
    for backend in ("torch", "faiss"):
        chunks = list(
            knn.iter_knn(
                query,
                gallery,
                6,
                "hamming",
                backend=backend,
                query_labels=q_labels,
                gallery_labels=g_labels,
                chunk_size=4,
            )
        )
        tied = np.concatenate([c.tied_beyond for c in chunks])
        rel_tied = np.concatenate([c.relevant_tied_beyond for c in chunks])
        idx = np.concatenate([c.indices for c in chunks])
        for i in range(15):
            last = full[i, idx[i, -1]]
            beyond = np.setdiff1d(np.nonzero(full[i] == last)[0], idx[i])
            assert tied[i] == len(beyond)
            assert rel_tied[i] == int((g_labels[beyond] == q_labels[i]).sum())
        assert tied.sum() > 0  # the test exercises real straddling ties


@pytest.mark.parametrize("distance", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_faiss_and_torch_give_identical_neighbours(monkeypatch, distance, exclude_self):
    monkeypatch.setattr(knn, "_GALLERY_BLOCK", 64)  # several streamed blocks per query chunk
    rng = np.random.default_rng(10)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    query = gallery if exclude_self else rng.normal(size=(70, 16)).astype(np.float32)
    kw = {"distance": distance, "exclude_self": exclude_self}
    a = knn_search(query, gallery, 25, backend="torch", chunk_size=32, **kw)
    b = knn_search(query, gallery, 25, backend="faiss", **kw)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-4, atol=1e-4)
    q = query.astype(np.float64)
    full = -q @ gallery.T.astype(np.float64) if distance == "inner_product" else None
    if full is not None:
        assert_matches_oracle(a, full, 25, exclude_self, tol=1e-4)


@pytest.mark.parametrize(
    ("query", "gallery", "kwargs", "message"),
    [
        (np.zeros((0, 3)), np.ones((4, 3)), {}, "empty query"),
        (np.ones((2, 3)), np.zeros((0, 3)), {}, "empty gallery"),
        (np.ones((2, 3)), np.ones((4, 5)), {}, "dimension mismatch"),
        (np.ones(3), np.ones((4, 3)), {}, "must be 2-D"),
        (np.ones((2, 3)), np.ones((4, 3, 1)), {}, "must be 2-D"),
        (np.array([[1.0, np.nan, 0.0]]), np.ones((4, 3)), {}, "NaN or infinite"),
        (np.ones((2, 3)), np.array([[np.inf, 0.0, 0.0]]), {}, "NaN or infinite"),
        (np.ones((2, 3)), np.ones((4, 3)), {"distance": "manhattan"}, "unknown distance"),
        (np.ones((2, 3)), np.ones((4, 3)), {"k": 0}, "k must be a positive integer"),
        (np.ones((2, 3)), np.ones((4, 3)), {"exclude_self": True}, "same set"),
        (np.ones((2, 3)), np.ones((4, 3)), {"backend": "annoy"}, "unknown backend"),
        (np.ones((2, 8), bool), np.ones((4, 16), bool), {"distance": "hamming"}, "code length"),
    ],
)
def test_invalid_input_raises_value_error(query, gallery, kwargs, message):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        knn_search(query, gallery, **kwargs)
    assert "\n" not in str(info.value)
