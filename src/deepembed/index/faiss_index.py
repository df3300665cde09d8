"""Exact faiss index (inner product on normalised vectors for cosine, L2 for euclidean).

Saved as a directory: index.faiss, items.npz (ids, labels) and meta.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from deepembed.errors import DataError, ModelFormatError
from deepembed.io import atomic_dir, load_npz, reading

FORMAT_VERSION = 1
METRICS = ("cosine", "euclidean")


class FlatIndex:
    """Exact search over float vectors; `labels` of items are kept for display."""

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        if metric not in METRICS:
            raise DataError(f"unknown index metric {metric!r}; known: {', '.join(METRICS)}")
        if dim < 1:
            raise DataError(f"index dimension must be positive, got {dim}")
        self.dim, self.metric = dim, metric
        flat = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        self.faiss = faiss.IndexIDMap2(flat)
        self.labels: dict[int, int] = {}
        self.class_names: dict[int, str] = {}

    def __len__(self) -> int:
        return int(self.faiss.ntotal)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise DataError("vectors contain NaN or infinite values")
        if self.metric == "cosine":
            vectors = vectors.copy()
            faiss.normalize_L2(vectors)
        return vectors

    def add(self, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add vectors (n, dim) under int64 ids (n,); ids already present are an error."""
        vectors = self._prepare(vectors)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(vectors),):
            raise DataError(f"{len(vectors)} vectors but ids of shape {ids.shape}")
        dup = set(ids.tolist()) & set(self.labels) if self.labels else set()
        if dup or len(np.unique(ids)) != len(ids):
            raise DataError(f"duplicate ids, e.g. {sorted(dup)[:3] or 'within the batch'}")
        self.faiss.add_with_ids(vectors, ids)
        labels = np.full(len(ids), -1) if labels is None else np.asarray(labels)
        self.labels.update(zip(ids.tolist(), labels.tolist(), strict=True))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (q, k'), nearest first, k' = min(k, len(self))."""
        if len(self) == 0:
            raise DataError("the index is empty: nothing to search")
        k = min(k, len(self))
        scores, ids = self.faiss.search(self._prepare(queries), k)
        if self.metric == "cosine":
            return 1.0 - scores, ids
        return np.sqrt(np.maximum(scores, 0.0)), ids

    def vector(self, item_id: int) -> np.ndarray:
        """The stored (normalised, for cosine) vector of an item."""
        if item_id not in self.labels:
            raise DataError(f"no item with id {item_id} in the index")
        return self.faiss.reconstruct(int(item_id))

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically (temp dir, then rename)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            faiss.write_index(self.faiss, str(tmp / "index.faiss"))
            ids = np.fromiter(self.labels.keys(), np.int64, len(self.labels))
            labels = np.fromiter(self.labels.values(), np.int64, len(self.labels))
            np.savez(tmp / "items.npz", ids=ids, labels=labels)
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "flat",
                "metric": self.metric,
                "dim": self.dim,
                "count": len(self),
                "class_names": {str(k): v for k, v in self.class_names.items()},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FlatIndex:
        """Open an index directory written by `save`; damage is one line naming the file."""
        path = Path(path)
        if not path.is_dir():
            raise ModelFormatError(f"{path}: index directory not found")
        files = meta_file, faiss_file, items_file = [
            path / n for n in ("meta.json", "index.faiss", "items.npz")
        ]
        for f in files:
            if not f.is_file():
                raise ModelFormatError(f"index directory {path} is incomplete: no {f.name}")
        with reading(
            meta_file, "an index meta.json", ModelFormatError, (AttributeError, TypeError)
        ):
            meta = json.loads(meta_file.read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise ModelFormatError(
                    f"index {path} has format_version {meta.get('format_version')}; "
                    f"this deepembed reads {FORMAT_VERSION}"
                )
            index = cls(int(meta["dim"]), meta["metric"])
            index.class_names = {int(k): v for k, v in meta.get("class_names", {}).items()}
        with reading(faiss_file, "a faiss index file", ModelFormatError, (RuntimeError,)):
            index.faiss = faiss.read_index(str(faiss_file))
        with (
            reading(items_file, "an index items .npz file", ModelFormatError),
            load_npz(items_file) as items,
        ):
            index.labels = dict(zip(items["ids"].tolist(), items["labels"].tolist(), strict=True))
        if index.faiss.ntotal != len(index.labels) or index.faiss.d != index.dim:
            raise ModelFormatError(f"index {path} is inconsistent (count or dimension)")
        return index
