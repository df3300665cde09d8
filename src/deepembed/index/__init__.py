"""Indexes for search: `create(dim, metric, spec, uri)`, `open(path_or_uri)`, `build(embeddings)`.

`uri` says where an index lives: None (in memory until `save(path)`), a directory (a faiss
index with its catalogue there, durable from the first add). Milvus URIs (a `.db` file for
milvus-lite, `http(s)://host:port` for a server) are recognised and will open the same
protocol on Milvus; that backend is not available yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepembed.errors import DataError
from deepembed.index.base import Index, Item
from deepembed.index.faiss_index import FaissIndex
from deepembed.index.searcher import Hit, Searcher
from deepembed.index.specs import BINARY_FORMS, FLOAT_FORMS, METRICS, parse_spec
from deepembed.inference import Embeddings

_TRAIN_SAMPLE = 65_536  # training vectors at least (more for many IVF lists: 256 per list)


def is_milvus(uri: str | Path) -> bool:
    """A milvus-lite file (.db) or a Milvus server URI."""
    text = str(uri)
    return text.endswith(".db") or text.startswith(("http://", "https://", "tcp://"))


def _no_milvus(uri: str | Path) -> DataError:
    return DataError(
        f"Milvus indexes ({uri}) are not available yet in this deepembed; "
        "use a faiss index (no uri, or a directory)"
    )


def create(
    dim: int, metric: str = "cosine", spec: str = "Flat", uri: str | Path | None = None
) -> Index:
    """An empty index (see the module docstring for `uri`); `spec` is a faiss factory string."""
    if uri is not None and is_milvus(uri):
        raise _no_milvus(uri)
    path = None if uri is None else Path(uri)
    if path is not None and path.exists() and any(path.iterdir()):
        raise DataError(f"{path} is not empty: open() the index there, or choose a new directory")
    return FaissIndex.create(dim, metric, spec, path)


def open(path_or_uri: str | Path) -> Index:
    """An index directory written by `save` (or a first-format directory, converted)."""
    if is_milvus(path_or_uri):
        raise _no_milvus(path_or_uri)
    from deepembed.index.storage import load

    return load(path_or_uri)


def build(
    embeddings: Embeddings,
    metric: str | None = None,
    spec: str | None = None,
    uri: str | Path | None = None,
) -> Index:
    """An index over a gallery of embeddings, trained on it where the spec needs it.

    Embeddings with packed `codes` (a hash model's) build a binary index (BFlat, hamming)
    unless a float metric or spec is asked for. An empty gallery is an error."""
    if uri is not None and is_milvus(uri):
        raise _no_milvus(uri)
    if len(embeddings) == 0:
        raise DataError("empty gallery: no embeddings to index")
    binary = metric == "hamming" or (spec is not None and parse_spec(spec).binary)
    binary = binary or (embeddings.codes is not None and metric is None and spec is None)
    if binary and embeddings.codes is None:
        raise DataError("a binary index needs packed codes: these embeddings hold float vectors")
    data = embeddings.codes if binary else embeddings.vectors
    assert data is not None
    dim = embeddings.bits if binary else data.shape[1]
    metric = metric or ("hamming" if binary else "cosine")
    index = create(dim, metric, spec or ("BFlat" if binary else "Flat"))  # in memory until saved
    parsed = parse_spec(index.spec)
    if parsed.needs_training:
        limit = max(_TRAIN_SAMPLE, 256 * parsed.nlist)
        rows = np.random.default_rng(0).permutation(len(data))[:limit]
        index.train(data[np.sort(rows)])
    index.add(data, embeddings.ids, embeddings.labels)
    index.class_names = dict(embeddings.class_names)
    if uri is not None:
        index.save(uri)
    return index


__all__ = [
    "BINARY_FORMS",
    "FLOAT_FORMS",
    "METRICS",
    "FaissIndex",
    "Hit",
    "Index",
    "Item",
    "Searcher",
    "build",
    "create",
    "is_milvus",
    "open",
]
