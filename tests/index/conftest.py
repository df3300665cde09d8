"""Shared pieces of the index tests: one faiss thread, seeded clustered data, brute force."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """faiss with one thread: on a shared 2-core machine its OpenMP threads spin against
    other processes (IVF-PQ training measured 9 s with 2 threads, 1.4 s with one)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """(n, dim) float32 points around `clusters` centres: data approximate indexes suit."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 4
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(gallery: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """(Q, G) distances the obvious way, in the index's conventions."""
    if metric == "hamming":
        bits = np.unpackbits(queries[:, None, :] ^ gallery[None, :, :], axis=2)
        return bits.sum(axis=2).astype(np.float32)
    if metric == "cosine":
        g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    if metric == "inner_product":
        return -(queries @ gallery.T)
    return np.linalg.norm(queries[:, None, :] - gallery[None, :, :], axis=2)


def exact_top(
    gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of the k nearest, -1 / inf past the end of a small gallery."""
    dist = brute_force(gallery, queries, metric)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    d, i = np.take_along_axis(dist, order, 1), ids[order]
    pad = k - d.shape[1]
    return (
        np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf),
        np.pad(i, ((0, 0), (0, pad)), constant_values=-1),
    )


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true neighbours found, per query."""
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def write_legacy_index(
    path: Path, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray, metric: str = "cosine"
) -> Path:
    """A directory in the first index format: IDMap2 over a flat index, items.npz, meta.json."""
    path.mkdir(parents=True)
    stored = (
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    )
    flat = (
        faiss.IndexFlatIP(vectors.shape[1])
        if metric == "cosine"
        else faiss.IndexFlatL2(vectors.shape[1])
    )
    legacy = faiss.IndexIDMap2(flat)
    legacy.add_with_ids(np.ascontiguousarray(stored, np.float32), ids.astype(np.int64))
    faiss.write_index(legacy, str(path / "index.faiss"))
    np.savez(path / "items.npz", ids=ids.astype(np.int64), labels=labels.astype(np.int64))
    meta = {"format_version": 1, "kind": "flat", "metric": metric, "dim": vectors.shape[1]}
    meta |= {"count": len(ids), "class_names": {"0": "zero"}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path
