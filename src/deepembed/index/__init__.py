"""Indexes for search: `create(dim, metric)`, `open(path)`, `build(embeddings)`."""

from __future__ import annotations

from pathlib import Path

from deepembed.errors import DataError
from deepembed.index.base import Index
from deepembed.index.faiss_index import METRICS, FlatIndex
from deepembed.inference import Embeddings


def create(dim: int, metric: str = "cosine") -> FlatIndex:
    """An empty exact index."""
    return FlatIndex(dim, metric)


def open(path: str | Path) -> FlatIndex:
    """An index directory written by `save`."""
    return FlatIndex.load(path)


def build(embeddings: Embeddings, metric: str = "cosine") -> FlatIndex:
    """An exact index over a gallery of embeddings; an empty gallery is an error."""
    if len(embeddings) == 0:
        raise DataError("empty gallery: no embeddings to index")
    index = create(embeddings.vectors.shape[1], metric)
    index.add(embeddings.vectors, embeddings.ids, embeddings.labels)
    index.class_names = dict(embeddings.class_names)
    return index


__all__ = ["METRICS", "FlatIndex", "Index", "build", "create", "open"]
