"""Indexes for search: `create(dim, metric, spec, uri)`, `open(path_or_uri)`, `build(embeddings)`.

`uri` says where an index lives: None (in memory until `save(path)`), a directory (a faiss
index with its catalogue there, durable from the first add), or Milvus: a `.db` file for
milvus-lite (embedded; float vectors only in milvus-lite 3.x) or `http(s)://host:port` for a
server, either optionally followed by `#collection` (default "deepembed"). A Milvus index
keeps every change in Milvus as it returns; its `spec` is a Milvus index type with build
parameters ("HNSW:M=32,efConstruction=200", see `deepembed.index.milvus_parts`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepembed.errors import DataError
from deepembed.index.base import Index, Item
from deepembed.index.faiss_index import FaissIndex
from deepembed.index.milvus import MilvusIndex
from deepembed.index.milvus_parts import parse_milvus_spec
from deepembed.index.searcher import Hit, Searcher
from deepembed.index.specs import BINARY_FORMS, FLOAT_FORMS, METRICS, parse_spec
from deepembed.inference import Embeddings

_TRAIN_SAMPLE = 65_536  # training vectors at least (more for many IVF lists: 256 per list)
_MILVUS_CHUNK = 50_000  # items per add when building on Milvus


def is_milvus(uri: str | Path) -> bool:
    """A milvus-lite file (.db) or a Milvus server URI."""
    text = str(uri).partition("#")[0]
    return text.endswith(".db") or text.startswith(("http://", "https://", "tcp://"))


def create(
    dim: int, metric: str = "cosine", spec: str = "Flat", uri: str | Path | None = None
) -> Index:
    """An empty index (see the module docstring for `uri`); `spec` is a faiss factory string,
    or on Milvus an index type (faiss strings with a Milvus counterpart are translated)."""
    if uri is not None and is_milvus(uri):
        return MilvusIndex.create(dim, metric, spec, uri)
    path = None if uri is None else Path(uri)
    if path is not None and path.exists() and any(path.iterdir()):
        raise DataError(f"{path} is not empty: open() the index there, or choose a new directory")
    return FaissIndex.create(dim, metric, spec, path)


def open(path_or_uri: str | Path) -> Index:
    """An index directory written by `save` (or a first-format directory, converted), or the
    Milvus index at a URI."""
    if is_milvus(path_or_uri):
        return MilvusIndex.open(path_or_uri)
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
    unless a float metric or spec is asked for. An empty gallery is an error. On a Milvus
    `uri` the items go straight into a new collection there (Milvus trains its own index)."""
    if len(embeddings) == 0:
        raise DataError("empty gallery: no embeddings to index")
    milvus = uri is not None and is_milvus(uri)
    parse = parse_milvus_spec if milvus else parse_spec
    binary = metric == "hamming" or (spec is not None and parse(spec).binary)
    binary = binary or (embeddings.codes is not None and metric is None and spec is None)
    if binary and embeddings.codes is None:
        raise DataError("a binary index needs packed codes: these embeddings hold float vectors")
    data = embeddings.codes if binary else embeddings.vectors
    assert data is not None
    dim = embeddings.bits if binary else data.shape[1]
    metric = metric or ("hamming" if binary else "cosine")
    if milvus:
        assert uri is not None
        return _build_milvus(embeddings, data, dim, metric, spec, uri, binary)
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


def _build_milvus(
    embeddings: Embeddings,
    data: np.ndarray,
    dim: int,
    metric: str,
    spec: str | None,
    uri: str | Path,
    binary: bool,
) -> Index:
    index = MilvusIndex.create(dim, metric, spec or ("BIN_FLAT" if binary else "FLAT"), uri)
    for lo in range(0, len(data), _MILVUS_CHUNK):
        rows = slice(lo, lo + _MILVUS_CHUNK)
        index.add(data[rows], embeddings.ids[rows], embeddings.labels[rows])
    index.class_names = dict(embeddings.class_names)
    index.save()  # a flush: Milvus indexes the sealed segments
    return index


__all__ = [
    "BINARY_FORMS",
    "FLOAT_FORMS",
    "METRICS",
    "FaissIndex",
    "Hit",
    "Index",
    "Item",
    "MilvusIndex",
    "Searcher",
    "build",
    "create",
    "is_milvus",
    "open",
]
