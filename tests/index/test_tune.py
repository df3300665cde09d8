"""`index tune`: every trial's recall against brute force, held-out queries or a gallery
sample, the stored setting, refusals that change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError
from deepembed.index.tune import tune
from tests.index.conftest import brute_force, clustered

N, DIM, K = 2000, 16, 10


@pytest.fixture
def ivf() -> tuple[index.FaissIndex, np.ndarray]:
    gallery = clustered(N, DIM, clusters=60)
    idx = index.create(DIM, "euclidean", "IVF32,Flat")
    idx.train(gallery)
    idx.add(gallery, np.arange(N) * 3)  # ids not positions
    return idx, gallery


def true_recall(
    idx: index.FaissIndex, gallery: np.ndarray, queries: np.ndarray, own: np.ndarray, params: dict
) -> float:
    """recall@K of idx's search with `params`, each query's own id (or -1) left out."""
    ids = np.arange(N) * 3
    dist = brute_force(gallery, queries, "euclidean")
    dist[ids[None, :] == own[:, None]] = np.inf
    truth = ids[np.argsort(dist, axis=1, kind="stable")[:, :K]]
    found = idx.search(queries, K + 1, params=params)[1]
    kept = [row[row != q][:K] for row, q in zip(found, own, strict=True)]
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(kept, truth, strict=True)]))


def test_held_out_queries_every_trial_measured_right(ivf: tuple) -> None:
    idx, gallery = ivf
    queries = clustered(150, DIM, seed=5, clusters=60)
    result = tune(idx, recall=0.9, k=K, queries=queries)
    assert [t.params["nprobe"] for t in result.trials][:2] == [1, 2]  # cheapest first
    for trial in result.trials:
        expected = true_recall(idx, gallery, queries, np.full(150, -1), trial.params)
        assert trial.recall == pytest.approx(expected)
    assert result.best is not None and result.best.recall >= 0.9
    assert result.best in result.trials and idx.params == result.best.params
    reaching = [t for t in result.trials if t.recall >= 0.9]
    assert result.best.queries_per_second == max(t.queries_per_second for t in reaching)


def test_gallery_sample_leaves_each_query_out_of_its_own_results(ivf: tuple) -> None:
    idx, gallery = ivf
    result = tune(idx, recall=0.99, k=K, sample=100, seed=3)
    rng = np.random.default_rng(3)
    own = np.sort(rng.choice(np.arange(N) * 3, 100, replace=False))
    for trial in result.trials:
        expected = true_recall(idx, gallery, gallery[own // 3], own, trial.params)
        assert trial.recall == pytest.approx(expected)


def test_refusals_leave_the_parameters(ivf: tuple) -> None:
    idx, _ = ivf
    before = idx.params
    with pytest.raises(DataError, match=r"queries must be \(n, 16\)"):
        tune(idx, queries=np.zeros((5, 8), np.float32))
    with pytest.raises(DataError, match="no queries to tune on"):
        tune(idx, queries=np.zeros((0, DIM), np.float32))
    with pytest.raises(DataError, match="recall target"):
        tune(idx, recall=1.5)
    assert idx.params == before
