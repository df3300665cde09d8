"""Validation of what callers hand an index: vectors or codes, ids, labels, metadata, k.

Each check raises a one-line DataError naming the problem before anything is changed.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from deepembed.errors import DataError
from deepembed.index.filters import RESERVED_KEYS
from deepembed.index.specs import check_spec, padded_bytes

if TYPE_CHECKING:
    from deepembed.index.faiss_index import FaissIndex

__all__ = [
    "Items",
    "check_spec",
    "floats",
    "ids",
    "items",
    "k",
    "labels",
    "metadata",
    "pad",
    "sources",
    "vectors",
]


def pad(codes: np.ndarray) -> np.ndarray:
    """(n, b) packed codes -> (n, padded_bytes(b)): zero bytes appended, which leaves every
    Hamming distance unchanged and lets faiss use its specialised kernel."""
    width = padded_bytes(codes.shape[1])
    if width == codes.shape[1]:
        return np.ascontiguousarray(codes)
    out = np.zeros((len(codes), width), np.uint8)
    out[:, : codes.shape[1]] = codes
    return out


def prepare_floats(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as faiss stores them: unit length for cosine (inner product of unit vectors)."""
    return floats(np.ascontiguousarray(x, np.float32), metric)


def floats(rows: np.ndarray, metric: str, what: str = "vectors") -> np.ndarray:
    """(n, d) float32 C-contiguous rows, checked finite (and non-zero for cosine), as faiss
    stores them: unit length for cosine. Adds, queries and rebuilds all normalise here.

    A search of one query runs this on every call (faiss answers in 40-100 us), so the
    checks ride on squared norms from faiss's C kernels: a NaN or infinity makes its row's
    sum non-finite, a zero row makes it 0. Only rows where one is off get the exact checks
    (and, when their float32 square overflows or underflows, a float64 normalisation)."""
    n, d = rows.shape
    cosine, ptr = metric == "cosine", faiss.swig_ptr(rows)
    if n == 1:  # a numpy reduction costs ~1 us on one row; faiss's scalar kernel 0.2 us
        first = faiss.fvec_norm_L2sqr(ptr, d)
        fine = math.isfinite(first) and (first > 0 or not cosine)
        off = None if fine else np.ones(1, bool)
    else:
        sq = np.empty(n, np.float32)
        if n:
            faiss.fvec_norms_L2sqr(faiss.swig_ptr(sq), ptr, d, n)
        off = ~np.isfinite(sq) | ((sq == 0) if cosine else False)
        off = off if off.any() else None
    if off is not None and not np.isfinite(rows[off]).all():
        raise DataError(f"{what} contain NaN or infinite values (as float32)")
    if not cosine:
        return rows
    unit = rows.copy()
    faiss.fvec_renorm_L2(d, n, faiss.swig_ptr(unit))  # in C, from the same float32 norms
    if off is not None:
        norms = np.linalg.norm(rows[off].astype(np.float64), axis=1, keepdims=True)
        if not norms.all():
            raise DataError(f"{what} contain a zero vector, which has no cosine distance")
        unit[off] = rows[off] / norms
    return unit


def vectors(index: FaissIndex, given: Any, what: str = "vectors") -> tuple[np.ndarray, np.ndarray]:
    """(rows prepared for faiss, rows as given) of float vectors or packed codes."""
    arr = given if type(given) is np.ndarray else np.asarray(given)
    if index.binary:
        if arr.dtype != np.uint8:
            hint = (
                " (a hash model's embeddings carry them as .codes)" if arr.dtype.kind == "f" else ""
            )
            raise DataError(
                f"binary index {index.spec} takes packed uint8 codes (n, {index.code_bytes}), "
                f"got {arr.dtype} {what}{hint}"
            )
        if arr.ndim != 2 or arr.shape[1] != index.code_bytes:
            raise DataError(
                f"{what} must be (n, {index.code_bytes}) codes of {index.dim} bits packed, "
                f"got shape {arr.shape}"
            )
        return pad(arr), np.ascontiguousarray(arr)
    if arr.dtype.kind != "f":
        hint = "; packed codes need a binary spec such as BFlat" if arr.dtype == np.uint8 else ""
        raise DataError(f"index {index.spec} takes float {what}, got {arr.dtype}{hint}")
    if arr.ndim != 2 or arr.shape[1] != index.dim:
        raise DataError(f"{what} must be (n, {index.dim}), got shape {arr.shape}")
    if arr.dtype == np.float32:
        rows = np.ascontiguousarray(arr)
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
            rows = np.ascontiguousarray(arr, np.float32)
    return floats(rows, index.metric, what), rows


@dataclass(frozen=True)
class Items:
    """A validated add: rows prepared for search, rows as given, and per row an id, a
    label, a metadata dict and a source."""

    rows: np.ndarray
    originals: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    metadata: list[dict[str, Any]]
    sources: list[str | None]


def items(index: FaissIndex, rows: Any, ids_: Any, labels_: Any, meta: Any, srcs: Any) -> Items:
    """Everything an `add` is given, checked in one place for every backend."""
    prepared, originals = vectors(index, rows)
    n = len(prepared)
    return Items(
        prepared, originals, ids(ids_, n), labels(labels_, n), metadata(meta, n), sources(srcs, n)
    )


def ids(given: Any, n: int | None) -> np.ndarray:
    """(n,) int64 ids: integers, non-negative, unique."""
    arr = np.asarray(given)
    if arr.ndim != 1:
        raise DataError(f"ids must be a list of integers, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise DataError(f"{n} vectors but ids of shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise DataError(f"ids must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise DataError(f"ids must be non-negative int64, got {arr[arr < 0][0]}")
    unique, counts = np.unique(arr, return_counts=True)
    if n is not None and len(unique) != len(arr):
        raise DataError(f"duplicate ids within the batch, e.g. {unique[counts > 1][:3].tolist()}")
    return arr


def labels(given: Any, n: int) -> np.ndarray:
    """(n,) int64 labels; -1 (none) when not given."""
    if given is None:
        return np.full(n, -1, np.int64)
    arr = np.asarray(given)
    if arr.shape != (n,) or (arr.size and arr.dtype.kind not in "iu"):
        raise DataError(f"labels must be {n} integers, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


def metadata(given: Any, n: int) -> list[dict[str, Any]]:
    """One JSON-serialisable dict per item ({} when not given); "label" is reserved."""
    if given is None:
        return [{} for _ in range(n)]
    rows = list(given)
    if len(rows) != n:
        raise DataError(f"{n} vectors but {len(rows)} metadata entries")
    out = []
    for row in rows:
        row = {} if row is None else row
        if not isinstance(row, dict) or not all(isinstance(key, str) for key in row):
            raise DataError(f"metadata entries must be dicts with string keys, got {row!r}")
        reserved = [key for key in row if key in RESERVED_KEYS]
        if reserved:
            raise DataError(f"metadata key {reserved[0]!r} is reserved (labels go in labels=)")
        try:
            json.dumps(row, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DataError(f"metadata must be JSON-serialisable: {exc}") from None
        out.append(row)
    return out


def sources(given: Any, n: int) -> list[str | None]:
    """One source path or URI (or None) per item."""
    if given is None:
        return [None] * n
    rows = list(given)
    if len(rows) != n or not all(s is None or isinstance(s, str | Path) for s in rows):
        raise DataError(f"sources must be {n} paths or URIs (or None)")
    return [None if s is None else str(s) for s in rows]


def k(given: Any) -> int:
    """The number of results: a positive integer."""
    if type(given) is int and given > 0:  # the common case, without the ABC check (~1 us)
        return given
    if isinstance(given, bool) or not isinstance(given, numbers.Integral) or given < 1:
        raise DataError(f"k must be a positive integer, got {given!r}")
    return int(given)
