"""Types faiss cannot remove from (HNSW, refine, BHNSW, BHash) keep tombstones: removed items
never come back, survive save/open, and are compacted away on rebuild."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepembed import index
from tests.index.conftest import clustered

N = 400
TOMBSTONE_SPECS = [
    ("HNSW8", {"efSearch": 256}),
    ("IVF8,PQ4,RFlat", {"nprobe": 8, "k_factor": 8}),
    ("BHNSW8", {"efSearch": 256}),
    ("BHash8", {}),
]


def _gallery(spec: str) -> tuple[index.Index, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if spec.startswith("B"):
        data = rng.integers(0, 256, size=(N, 4), dtype=np.uint8)
        idx = index.create(32, "hamming", spec)
    else:
        data = clustered(N, 8)
        idx = index.create(8, "euclidean", spec)
    idx.train(data)
    return idx, data, np.arange(N) * 10


@pytest.mark.parametrize(("spec", "params"), TOMBSTONE_SPECS, ids=[s[0] for s in TOMBSTONE_SPECS])
def test_removed_items_never_come_back(spec: str, params: dict, tmp_path: Path) -> None:
    idx, data, ids = _gallery(spec)
    idx.add(data, ids)
    gone = ids[:40]  # 10%: below the share at which save() compacts
    idx.remove(gone)
    assert len(idx) == N - 40 and idx.info()["tombstones"] == 40
    for searched in (idx, None):
        if searched is None:
            idx.save(tmp_path / "i")
            searched = index.open(tmp_path / "i")
            assert searched.info()["tombstones"] == 40  # derived again from the catalogue
        # the removed items' own vectors as queries: each was its own nearest neighbour
        found = searched.search(data[:40], 5, params=params)[1]
        assert not np.isin(found, gone).any()
        assert (found >= 0).any()
    searched.compact()
    assert searched.info()["tombstones"] == 0 and searched.info()["stored_vectors"] == N - 40
    assert not np.isin(searched.search(data[:40], 5, params=params)[1], gone).any()


def test_a_removed_id_added_again_is_its_new_vector() -> None:
    idx, data, ids = _gallery("HNSW8")
    idx.add(data, ids)
    idx.remove(ids[:1])
    idx.add(data[-1:] + 100.0, ids[:1])  # same id, a far-away vector
    d, found = idx.search(data[:1], 3, params={"efSearch": 256})
    assert ids[0] not in found  # the old vector is dead
    d, found = idx.search(data[-1:] + 100.0, 1)
    assert found[0, 0] == ids[0] and d[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert len(idx) == N and idx.info()["tombstones"] == 1


def test_save_compacts_when_tombstones_pile_up(tmp_path: Path) -> None:
    idx, data, ids = _gallery("HNSW8")
    idx.add(data, ids)
    idx.remove(ids[: N // 3])
    idx.save(tmp_path / "i")
    reopened = index.open(tmp_path / "i")
    assert reopened.info()["tombstones"] == 0 and reopened.info()["stored_vectors"] == N - N // 3
    assert not np.isin(reopened.search(data[:20], 5)[1], ids[: N // 3]).any()
