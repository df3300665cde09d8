"""The exact faiss index against brute force; save/load; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError, ModelFormatError
from deepembed.inference import Embeddings


def brute_force(gallery: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """(Q, G) distances computed the obvious way."""
    if metric == "cosine":
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    return np.linalg.norm(queries[:, None, :] - gallery[None, :, :], axis=2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_search_matches_brute_force(metric: str, tmp_path: Path, rng: np.random.Generator) -> None:
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:300]  # arbitrary, non-contiguous ids
    idx = index.create(16, metric)
    idx.add(gallery, ids, labels=np.arange(300) % 7)
    idx.save(tmp_path / "index")
    reopened = index.open(tmp_path / "index")
    dist = brute_force(gallery, queries, metric)
    order = np.argsort(dist, axis=1, kind="stable")[:, :10]
    for searcher in (idx, reopened):
        d, found = searcher.search(queries, 10)
        assert np.array_equal(found, ids[order])
        assert np.allclose(d, np.take_along_axis(dist, order, 1), atol=1e-4)
    assert reopened.labels == idx.labels


def test_build_rejects_empty_gallery_and_keeps_existing_index(tmp_path: Path) -> None:
    good = Embeddings(np.eye(4, dtype=np.float32), np.arange(4), np.arange(4))
    index.build(good).save(tmp_path / "index")
    empty = Embeddings(np.empty((0, 4), np.float32), np.empty(0, np.int64), np.empty(0, np.int64))
    with pytest.raises(DataError, match="empty gallery"):
        index.build(empty)
    assert len(index.open(tmp_path / "index")) == 4


def test_bad_input(tmp_path: Path) -> None:
    idx = index.create(3)
    with pytest.raises(DataError, match="the index is empty"):
        idx.search(np.ones((1, 3), np.float32), 1)
    with pytest.raises(DataError, match=r"vectors must be \(n, 3\)"):
        idx.add(np.ones((2, 4), np.float32), np.arange(2))
    idx.add(np.ones((2, 3), np.float32), np.arange(2))
    with pytest.raises(DataError, match="duplicate ids"):
        idx.add(np.ones((1, 3), np.float32), np.array([1]))
    with pytest.raises(DataError, match="no item with id 5"):
        idx.vector(5)
    with pytest.raises(ModelFormatError, match="incomplete"):
        index.open(tmp_path)
