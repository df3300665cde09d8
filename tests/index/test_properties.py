"""Property tests: random add / remove / search / save / reopen sequences on Flat and BFlat
give the results of brute force over a plain dict model of the current items."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepembed import index
from deepembed.errors import DataError
from tests.index.conftest import brute_force

DIM, BITS = 6, 24  # 24-bit codes: 3 bytes, stored padded to 4
POOL = 40  # ids come from 0..39, so removed ids get added again

operation = st.tuples(
    st.sampled_from(["add", "add", "remove", "search", "search", "save", "reopen", "bad"]),
    st.integers(1, 6),
    st.integers(0, 2**32 - 1),
)


def _draw(binary: bool, n: int, rng: np.random.Generator) -> np.ndarray:
    if binary:
        return rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)
    return rng.normal(size=(n, DIM)).astype(np.float32)


def _check_search(
    idx: index.Index, model: dict[int, np.ndarray], queries: np.ndarray, k: int, metric: str
) -> None:
    d, found = idx.search(queries, k)
    if not model:
        assert (found == -1).all() and np.isinf(d).all()
        return
    ids = np.array(sorted(model))
    gallery = np.stack([model[i] for i in ids])
    dist = brute_force(gallery, queries, metric)
    kk = min(k, len(ids))
    assert (found[:, kk:] == -1).all() and np.isinf(d[:, kk:]).all()
    true_sorted = np.sort(dist, axis=1)[:, :kk]
    assert np.allclose(d[:, :kk], true_sorted, atol=1e-4)  # the k best distances, in order
    column = {int(i): c for c, i in enumerate(ids)}
    for q, row in enumerate(found[:, :kk]):
        assert len(set(row.tolist())) == kk and all(int(i) in model for i in row)
        assert np.allclose([dist[q, column[int(i)]] for i in row], d[q, :kk], atol=1e-4)


def _run(ops: list[tuple[str, int, int]], spec: str, metric: str) -> None:
    binary = spec.startswith("B")
    dim = BITS if binary else DIM
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index"
        idx = index.create(dim, metric, spec, uri=path)
        model: dict[int, np.ndarray] = {}
        for name, count, seed in ops:
            rng = np.random.default_rng(seed)
            if name == "add":
                free = sorted(set(range(POOL)) - set(model))
                ids = rng.permutation(free)[:count]
                vectors = _draw(binary, len(ids), rng)
                idx.add(vectors, ids, labels=ids % 3)
                model.update(zip(ids.tolist(), vectors, strict=True))
            elif name == "remove" and model:
                ids = rng.permutation(sorted(model))[:count]
                idx.remove(ids)
                for i in ids.tolist():
                    del model[i]
            elif name == "search":
                _check_search(idx, model, _draw(binary, 3, rng), count * 2, metric)
            elif name == "save":
                idx.save()
            elif name == "reopen":  # replays every change after the last snapshot
                idx.close()
                idx = index.open(path)
            elif name == "bad":  # refused: an id already present or unknown; nothing changes
                if model:
                    with pytest.raises(DataError, match="duplicate ids"):
                        idx.add(_draw(binary, 1, rng), [min(model)])
                with pytest.raises(DataError, match="no item with id"):
                    idx.remove([POOL + count])
            assert len(idx) == len(model)
        _check_search(idx, model, _draw(binary, 3, np.random.default_rng(1)), 5, metric)
        idx.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=14), metric=st.sampled_from(["cosine", "euclidean"]))
def test_flat_equals_brute_force_over_the_current_items(
    ops: list[tuple[str, int, int]], metric: str
) -> None:
    _run(ops, "Flat", metric)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=14))
def test_bflat_equals_brute_force_hamming_over_the_current_items(
    ops: list[tuple[str, int, int]],
) -> None:
    _run(ops, "BFlat", "hamming")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=14))
def test_hnsw_with_tombstones_equals_brute_force_on_small_sets(
    ops: list[tuple[str, int, int]],
) -> None:
    # at most 40 items: HNSW's search with its default efSearch (64) visits them all
    _run(ops, "HNSW8", "euclidean")
