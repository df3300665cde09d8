"""Shared pieces of the index tests: one faiss thread, seeded clustered data, brute force."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from deepembed.data.preprocess import Preprocess
from deepembed.models.backbones import BACKBONES, Backbone
from deepembed.models.embedder import Embedder, EmbedderSpec


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


class PixelBackbone(Backbone):
    """A fake backbone for search tests: its feature map is the image itself, so an embedding
    is a fixed random projection of pixel-grid means (distinct images, distinct embeddings;
    sign codes of random hyperplanes for a hash head). A random small_cnn maps these tiny test
    images to nearly one point."""

    def __init__(self, pretrained: bool = False, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.num_features = channels
        self.default_pool = ("gridmax", {"grid": 4})
        half = (0.5,) * channels
        self.preprocess = Preprocess((image_size, image_size), channels, 0, "bilinear", half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(float model dir with 8-d embeddings, hash model dir with 24-bit codes) on the fake
    backbone, registered for this module only (the backbone tests walk the registry)."""
    BACKBONES["test_pixels"] = PixelBackbone
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    floats = Embedder(EmbedderSpec(backbone="test_pixels", embedding_dim=8)).save(root / "float")
    codes = Embedder(EmbedderSpec(backbone="test_pixels", head="hash", bits=24)).save(root / "hash")
    yield floats, codes
    BACKBONES.pop("test_pixels", None)


def write_images(root: Path, per_class: int = 4) -> list[Path]:
    """Small PNGs in class folders red/, green/, blue/: random blocks tinted with the colour."""
    rng = np.random.default_rng(0)
    paths = []
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            blocks = rng.integers(0, 160, size=(5, 5, 3)).repeat(8, axis=0).repeat(8, axis=1)
            blocks[..., c] += 95
            path = root / name / f"{i}.png"
            Image.fromarray(blocks.astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def assert_padded_past_the_end(
    idx: Any, gallery: np.ndarray, queries: np.ndarray, ids: np.ndarray
) -> None:
    """An empty index, then 4 items searched with k = 6: ids -1 and distances inf past the end."""
    d, found = idx.search(queries[:2], 3)
    assert (found == -1).all() and np.isinf(d).all()
    idx.add(gallery[:4], ids[:4])
    d, found = idx.search(queries[:2], 6)
    assert (found[:, :4] >= 0).all() and (found[:, 4:] == -1).all()
    assert np.isfinite(d[:, :4]).all() and np.isinf(d[:, 4:]).all()
