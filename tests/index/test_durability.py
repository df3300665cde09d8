"""The catalogue is the record: acknowledged adds survive kill -9; a missing, truncated or
mismatched snapshot is rebuilt with a warning; later changes are replayed; old directories
are converted."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deepembed import index
from tests.index.conftest import clustered, write_legacy_index

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from deepembed import index

    idx = index.create(8, "euclidean", "HNSW8", uri=sys.argv[1])
    rng = np.random.default_rng(0)
    for i in range(100_000):
        idx.add(rng.normal(size=(1, 8)).astype(np.float32), [i], metadata=[{"n": i}])
        if i == 50:
            idx.save()  # a snapshot part-way: the rest is replayed at open
        print(i, flush=True)  # acknowledged: add() returned
    """
)


def test_acknowledged_adds_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "index"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged = []
    for line in child.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == 300:
            break
    os.kill(child.pid, signal.SIGKILL)  # mid-way through the next adds
    child.wait()
    reopened = index.open(path)
    assert len(reopened) >= 300
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)  # the child's first 300 draws
    for i in acknowledged:
        assert reopened.get([i])[0].metadata == {"n": i}
    d, found = reopened.search(vectors, 1, params={"efSearch": 128})
    assert np.array_equal(found[:, 0], acknowledged) and np.allclose(d[:, 0], 0.0, atol=1e-5)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """An IVF index directory with a snapshot, and its results for some queries."""
    vectors = clustered(300, 8)
    idx = index.create(8, "euclidean", "IVF4,Flat", uri=tmp_path / "i")
    idx.train(vectors)
    idx.add(vectors, np.arange(300), np.arange(300) % 3)
    idx.save()
    queries = vectors[:10] + 0.1
    return tmp_path / "i", queries, idx.search(queries, 5, params={"nprobe": 4})


def _garbage(f: Path) -> None:
    f.write_bytes(np.random.default_rng(1).integers(0, 256, f.stat().st_size, np.uint8).tobytes())


DAMAGES = {
    "missing": lambda d: (d / "index.faiss").unlink(),
    "truncated": lambda d: os.truncate(d / "index.faiss", (d / "index.faiss").stat().st_size // 2),
    "garbage": lambda d: _garbage(d / "index.faiss"),
    "no meta": lambda d: (d / "meta.json").unlink(),
    "bad meta": lambda d: (d / "meta.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_snapshot_is_rebuilt_with_a_warning(
    saved: tuple, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, queries, (d, found) = saved
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING):
        reopened = index.open(path)
    assert "rebuilding it from the catalogue (300 items)" in caplog.text
    assert len(reopened) == 300
    d2, found2 = reopened.search(queries, 5, params={"nprobe": 4})
    assert np.array_equal(found2, found) and np.allclose(d2, d)
    reopened.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        index.open(path).close()  # the rebuilt snapshot was written
    assert caplog.text == ""


def test_a_snapshot_from_another_save_is_not_trusted(
    saved: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    path, queries, _ = saved
    old_meta = (path / "meta.json").read_bytes()
    idx = index.open(path)
    idx.remove(np.arange(100))
    idx.add(queries.repeat(10, axis=0), np.arange(500, 600))  # as many items: as many bytes
    idx.save()  # then a crash after writing index.faiss, before meta.json: the old one stays
    (path / "meta.json").write_bytes(old_meta)
    idx.close()
    with caplog.at_level(logging.WARNING):
        reopened = index.open(path)
    assert "index.faiss does not match the checksum in meta.json" in caplog.text
    assert len(reopened) == 300
    found = reopened.search(queries, 5, params={"nprobe": 4})[1]
    assert not np.isin(found, np.arange(100)).any() and np.isin(found, np.arange(500, 600)).all()


def test_changes_after_the_snapshot_are_replayed(
    saved: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    path, queries, _ = saved
    idx = index.open(path)
    idx.remove(np.arange(0, 300, 2))
    idx.add(queries, np.arange(1000, 1010), metadata=[{"late": True}] * 10)
    idx.remove([1003])
    idx.close()  # no save: index.faiss is the old snapshot
    with caplog.at_level(logging.WARNING):
        reopened = index.open(path)
    assert caplog.text == ""  # replayed, not rebuilt
    info = reopened.info()
    assert info["snapshot_seq"] == 1 and info["catalogue"]["last_seq"] == 4
    assert info["catalogue"]["journal_mode"] == "wal" and len(reopened) == 150 + 9
    found = reopened.search(queries, 1, filters={"late": True}, params={"nprobe": 4})[1][:, 0]
    others = [r for r in range(10) if r != 3]  # item 1003 was removed after it was added
    assert (found[others] == 1000 + np.array(others)).all()
    assert found[3] != 1003 and 1000 <= found[3] < 1010
    found = reopened.search(queries, 5, params={"nprobe": 4})[1]
    assert not np.isin(found, np.arange(0, 300, 2)).any()


def test_first_format_directories_are_converted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = clustered(50, 8)
    ids, labels = np.arange(50) * 3, np.arange(50) % 4
    path = write_legacy_index(tmp_path / "old", vectors, ids, labels)
    with caplog.at_level(logging.WARNING):
        converted = index.open(path)
    assert "converted index directory" in caplog.text
    names = {p.name for p in path.iterdir()}
    assert {"catalogue.sqlite", "index.faiss", "meta.json"} <= names and "items.npz" not in names
    assert converted.class_names == {0: "zero"} and converted.get([6])[0].label == 2
    d, found = converted.search(vectors[:5], 1)
    assert np.array_equal(found[:, 0], ids[:5]) and np.allclose(d[:, 0], 0.0, atol=1e-5)
    converted.add(vectors[:1], [999])  # it continues in the converted directory
    converted.close()
    assert len(index.open(path)) == 51
    shutil.rmtree(path)
