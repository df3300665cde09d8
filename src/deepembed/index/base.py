"""The Index protocol every backend follows (faiss today; Milvus can plug in the same way).

Conventions shared by every backend:
- vectors: float (n, dim) for cosine / inner_product / euclidean; packed uint8 codes
  (n, dim / 8), most significant bit first (numpy's packbits), for hamming;
- ids: non-negative int64, unique; adding a present id or removing an unknown one is an error
  and changes nothing;
- `search` returns (distances, ids), each (q, k), nearest first. Distances: cosine 1 - cos,
  inner_product minus the dot product, euclidean the L2 norm, hamming differing bits (as
  float32). Where fewer than k results exist the row is padded with id -1 and distance inf;
- filters: {"label": [3, 7], "color": "red"} (see `deepembed.index.filters`); a filtered
  search returns min(k, number of matching items) results. On approximate indexes a
  matching subset of up to 20,000 items is searched exactly, a larger one with nprobe /
  efSearch divided by the share of items it keeps (`faiss_parts.widened`);
- params: search parameters (nprobe, efSearch, k_factor, as the spec takes), per index with
  `set_params` (persisted) or per query with `params=`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Item:
    """One stored item: its vector as added (float32, or the unpadded packed code)."""

    id: int
    label: int
    source: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None


@runtime_checkable
class Index(Protocol):
    """Vectors with int64 ids, labels and metadata; k-nearest search with filters."""

    dim: int  # floats per vector, or bits per code
    metric: str
    binary: bool
    class_names: dict[int, str]

    def __len__(self) -> int: ...

    @property
    def spec(self) -> str: ...

    @property
    def params(self) -> dict[str, int | float]: ...

    @property
    def is_trained(self) -> bool: ...

    def train(self, vectors: np.ndarray) -> None: ...

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
        sources: list[str | None] | None = None,
    ) -> None: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def get(self, ids: np.ndarray | list[int]) -> list[Item]: ...

    def set_params(self, **params: Any) -> None: ...

    def next_id(self) -> int: ...

    def sources(self) -> set[str]: ...

    def info(self) -> dict[str, Any]: ...

    def save(self, path: str | Path | None = None) -> Path: ...

    def close(self) -> None: ...
