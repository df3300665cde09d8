"""Types faiss cannot remove from (HNSW, refine, BHNSW, BHash) keep tombstones: removed items
never come back, survive save/open, and are compacted away on rebuild."""

from __future__ import annotations

import logging
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


def test_a_removed_id_added_again_is_its_new_vector(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    idx, data, ids = _gallery("HNSW8")
    idx.add(data, ids)
    idx.remove(ids[:1])
    idx.add(data[-1:] + 100.0, ids[:1])  # same id, a far-away vector
    idx.save(tmp_path / "i")
    with caplog.at_level(logging.WARNING):
        reopened = index.open(tmp_path / "i")
    assert caplog.text == ""  # the dead copy is told from the live one, no rebuild
    for searched in (idx, reopened):
        assert ids[0] not in searched.search(data[:1], 3, params={"efSearch": 256})[1]
        d, found = searched.search(data[-1:] + 100.0, 1)
        assert found[0, 0] == ids[0] and d[0, 0] == pytest.approx(0.0, abs=1e-4)
        assert len(searched) == N and searched.info()["tombstones"] == 1


@pytest.mark.parametrize(("spec", "params"), TOMBSTONE_SPECS, ids=[s[0] for s in TOMBSTONE_SPECS])
def test_k_live_results_past_the_dead_ones(spec: str, params: dict) -> None:
    idx, data, _ = _gallery(spec)
    idx.add(data, np.arange(N))
    # 30 near copies of item 0 (HNSW graphs connect exact duplicates poorly): codes with one
    # bit flipped past the first byte (BHash8's bucket), vectors with a little noise
    rng = np.random.default_rng(1)
    twins = np.repeat(data[:1], 30, axis=0)
    if spec.startswith("B"):
        twins[np.arange(30), rng.integers(1, 4, 30)] ^= (1 << rng.integers(0, 8, 30)).astype(
            np.uint8
        )
    else:
        twins += 0.01 * rng.normal(size=twins.shape).astype(np.float32)
    idx.add(twins, np.arange(N, N + 30))
    idx.remove(np.arange(N, N + 20))
    found = idx.search(data[:1], 8, params=params)[1]
    assert np.isin(found[0], [0, *range(N + 20, N + 30)]).sum() == 8  # the live twins only


def test_save_compacts_when_tombstones_pile_up(tmp_path: Path) -> None:
    idx, data, ids = _gallery("HNSW8")
    idx.add(data, ids)
    idx.remove(ids[: N // 3])
    idx.save(tmp_path / "i")
    reopened = index.open(tmp_path / "i")
    assert reopened.info()["tombstones"] == 0 and reopened.info()["stored_vectors"] == N - N // 3
    assert not np.isin(reopened.search(data[:20], 5)[1], ids[: N // 3]).any()
