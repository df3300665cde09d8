"""The Index protocol every index type follows."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Index(Protocol):
    """Vectors with integer ids; search returns the k nearest ids and their distances."""

    dim: int
    metric: str

    def __len__(self) -> int: ...

    def add(
        self, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray | None = None
    ) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: str | Path) -> Path: ...
