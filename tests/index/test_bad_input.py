"""Every bad input is one line naming the problem and leaves the index and its catalogue
exactly as they were (rows, files, results)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError, ModelFormatError
from tests.index.conftest import clustered

TABLES = ("settings", "changes", "items", "fields", "field_keys", "removed")


def _state(path: Path, idx: index.Index, queries: np.ndarray) -> tuple[Any, ...]:
    """Everything a refused call must not change: catalogue rows, files, results."""
    with sqlite3.connect(path / "catalogue.sqlite") as conn:
        rows = tuple(sorted(conn.execute(f"SELECT * FROM {t}")) for t in TABLES)
    files = tuple((path / n).read_bytes() for n in ("index.faiss", "meta.json"))
    d, found = idx.search(queries, 5)
    return rows, files, len(idx), d.tobytes(), found.tobytes()


@pytest.fixture
def float_index(tmp_path: Path) -> tuple[Path, index.Index, np.ndarray]:
    vectors = clustered(200, 8)
    idx = index.create(8, "cosine", "HNSW8", uri=tmp_path / "i")
    idx.add(vectors, np.arange(200), np.arange(200) % 4, [{"color": "red"}] * 200)
    idx.remove([5, 6])  # a tombstone or two
    idx.save()
    return tmp_path / "i", idx, vectors[:4]


nan = np.full((1, 8), np.nan, np.float32)
ok = np.ones((1, 8), np.float32)
FLOAT_CASES: list[tuple[str, Callable[[index.Index], object], str]] = [
    (
        "wrong dimension",
        lambda i: i.add(np.ones((2, 7), np.float32), [300, 301]),
        r"must be \(n, 8\)",
    ),
    ("NaN", lambda i: i.add(nan, [300]), "NaN or infinite"),
    ("infinite", lambda i: i.add(np.full((1, 8), np.inf, np.float32), [300]), "NaN or infinite"),
    ("float64 overflow", lambda i: i.add(np.full((1, 8), 1e300), [300]), "NaN or infinite"),
    ("zero vector (cosine)", lambda i: i.add(np.zeros((1, 8), np.float32), [300]), "zero vector"),
    (
        "duplicate id",
        lambda i: i.add(np.ones((2, 8), np.float32), [300, 3]),
        "duplicate ids: 1 already",
    ),
    (
        "duplicate in batch",
        lambda i: i.add(np.ones((2, 8), np.float32), [300, 300]),
        "within the batch",
    ),
    ("negative id", lambda i: i.add(ok, [-2]), "non-negative"),
    ("float ids", lambda i: i.add(ok, [1.5]), "ids must be integers"),
    ("id count", lambda i: i.add(np.ones((2, 8), np.float32), [300]), "2 vectors but ids of shape"),
    ("labels", lambda i: i.add(ok, [300], labels=[1, 2]), "labels must be 1 integers"),
    ("metadata", lambda i: i.add(ok, [300], metadata=[{"x": object()}]), "JSON-serialisable"),
    ("reserved key", lambda i: i.add(ok, [300], metadata=[{"label": 1}]), "'label' is reserved"),
    ("codes to a float index", lambda i: i.add(np.ones((1, 8), np.uint8), [300]), "binary spec"),
    ("remove unknown", lambda i: i.remove([1, 2, 999]), "no item with id 999"),
    ("remove a removed id", lambda i: i.remove([5]), "no item with id 5"),
    ("unknown filter key", lambda i: i.search(ok, 3, filters={"size": 1}), "unknown filter key"),
    ("k", lambda i: i.search(ok, 0), "k must be a positive integer"),
    ("query dimension", lambda i: i.search(np.ones((1, 9), np.float32), 3), r"\(n, 8\)"),
    ("parameter", lambda i: i.search(ok, 3, params={"nprobe": 4}), "does not apply to HNSW8"),
    ("set parameter", lambda i: i.set_params(efSearch=0), "positive integer"),
    ("get unknown", lambda i: i.get([999]), "no item with id 999"),
]


@pytest.mark.parametrize(("name", "call", "needle"), FLOAT_CASES, ids=[c[0] for c in FLOAT_CASES])
def test_float_index_refusals_change_nothing(
    float_index: tuple, name: str, call: Callable, needle: str
) -> None:
    path, idx, queries = float_index
    before = _state(path, idx, queries)
    with pytest.raises(DataError, match=needle) as info:
        call(idx)
    assert "\n" not in str(info.value)
    assert _state(path, idx, queries) == before
    idx.close()
    assert _state(path, index.open(path), queries) == before  # and on disk


def test_binary_index_refusals_change_nothing(tmp_path: Path) -> None:
    codes = np.random.default_rng(0).integers(0, 256, size=(100, 6), dtype=np.uint8)
    idx = index.create(48, "hamming", "BIVF4", uri=tmp_path / "b")
    with pytest.raises(DataError, match=r"needs at least 4 vectors \(4 lists\), got 3"):
        idx.train(codes[:3])
    idx.train(codes)
    idx.add(codes, np.arange(100))
    idx.save()
    before = _state(tmp_path / "b", idx, codes[:4])
    cases = [
        (lambda: idx.add(codes[:2].astype(np.float32), [200, 201]), "takes packed uint8 codes"),
        (lambda: idx.add(np.ones((1, 8), np.uint8), [200]), r"must be \(n, 6\) codes of 48 bits"),
        (lambda: idx.search(codes[:1].astype(np.float32), 3), "a hash model's embeddings"),
        (lambda: idx.train(codes), "already holds 100 items"),
    ]
    for call, needle in cases:
        with pytest.raises(DataError, match=needle):
            call()
        assert _state(tmp_path / "b", idx, codes[:4]) == before


def test_refused_creations_leave_no_directory(tmp_path: Path) -> None:
    cases = [
        (lambda p: index.create(8, "cosine", "IVF4,Florp", uri=p), "unknown index spec"),
        (lambda p: index.create(64, "hamming", "BIVF1024_BHNSW32", uri=p), "BIVF1024_HNSW32"),
        (lambda p: index.create(8, "hamming", "Flat", uri=p), "needs a binary spec"),
        (lambda p: index.create(64, "cosine", "BFlat", uri=p), "takes metric 'hamming'"),
        (lambda p: index.create(64, "hamming", "BIN_FLAT", uri=f"{p}.db"), "no binary vectors"),
    ]
    for call, needle in cases:
        with pytest.raises(DataError, match=needle):
            call(tmp_path / "new")
        assert not (tmp_path / "new").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="is not empty"):
        index.create(8, uri=tmp_path / "full")
    with pytest.raises(ModelFormatError, match="is not an index directory"):
        index.open(tmp_path / "full")
    with pytest.raises(ModelFormatError, match="index directory not found"):
        index.open(tmp_path / "nothing")
