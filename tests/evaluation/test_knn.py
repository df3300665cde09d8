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
@pytest.mark.parametrize("chunk_size", [7, 64, 4096])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_matches_brute_force(distance, chunk_size, exclude_self):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(120, 8)).astype(np.float32)
    query = gallery if exclude_self else rng.normal(size=(50, 8)).astype(np.float32)
    full = oracle_distances(query, gallery, distance)
    res = knn_search(
        query, gallery, k=10, distance=distance, exclude_self=exclude_self, chunk_size=chunk_size
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


def test_never_builds_more_than_chunk_rows(monkeypatch):
    seen: list[tuple[int, int]] = []
    original = knn._chunk_distances

    def spy(q, g, g_sq, distance):
        out = original(q, g, g_sq, distance)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(knn, "_chunk_distances", spy)
    x = np.random.default_rng(6).normal(size=(25, 4)).astype(np.float32)
    knn_search(x, x, k=3, chunk_size=10)
    assert seen == [(10, 25), (10, 25), (5, 25)]


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
    ],
)
def test_invalid_input_raises_value_error(query, gallery, kwargs, message):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        knn_search(query, gallery, **kwargs)
    assert "\n" not in str(info.value)
