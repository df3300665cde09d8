"""faiss pieces: structures from a Spec, search parameters, selectors, the BLAS rule, distances.

Ids: IVF indexes (float IVF*, OPQ, IVF_HNSW; binary BIVF*) store our int64 ids themselves.
Every other type sits in an IDMap, which keeps position -> id (`id_view`); searches that need
a selector on those run on the inner index with a selector over positions, and the result
positions are mapped back to ids here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from deepembed.index.specs import Spec, padded_bytes

Structure = Any  # faiss.Index | faiss.IndexBinary: SWIG classes without useful type stubs
METRIC_TYPES = {
    "cosine": faiss.METRIC_INNER_PRODUCT,  # on unit vectors
    "inner_product": faiss.METRIC_INNER_PRODUCT,
    "euclidean": faiss.METRIC_L2,
}
# faiss's exhaustive float search uses BLAS only when n_queries * dim >= its threshold
# (128,000: 2,000 queries at d=64), else a per-pair loop. Measured on 100k x 64 with one
# thread: the loop wins for 1-4 queries (775 vs 167 q/s for one), BLAS from ~8 on (3,124
# vs 766 q/s for 256 queries). So searches run with the threshold at 8 queries.
BLAS_MIN_QUERIES = 8


@contextmanager
def blas_rule(dim: int) -> Iterator[None]:
    """Exhaustive float searches of 8 queries or more use BLAS, for the duration of a call.

    The threshold is a faiss global; concurrent calls can only see each other's (equal or
    similar) values, which changes speed, never results."""
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES * dim
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def new_structure(spec: Spec, dim: int, metric: str) -> Structure:
    """An empty faiss index for `spec` (binary ones over padded codes), IDMap-wrapped unless
    the type stores ids itself."""
    if spec.binary:
        inner = faiss.index_binary_factory(padded_bytes(dim // 8) * 8, spec.text)
        return inner if spec.native_ids else faiss.IndexBinaryIDMap(inner)
    inner = faiss.index_factory(dim, spec.text, METRIC_TYPES[metric])
    if spec.pq_m:
        # the factory turns on polysemous training (~20x the training time: 27 s instead of
        # 1.4 s for IVF16,PQ8 on 3,000 x 32), useful only with polysemous_ht, never set here
        faiss.downcast_index(faiss.extract_index_ivf(inner)).do_polysemous_training = False
    return inner if spec.native_ids else faiss.IndexIDMap(inner)


def serialize(structure: Structure, binary: bool) -> bytes:
    arr = faiss.serialize_index_binary(structure) if binary else faiss.serialize_index(structure)
    return arr.tobytes()


def deserialize(data: bytes, binary: bool) -> Structure:
    arr = np.frombuffer(data, np.uint8)
    return faiss.deserialize_index_binary(arr) if binary else faiss.deserialize_index(arr)


def id_view(structure: Structure) -> np.ndarray:
    """(ntotal,) int64 ids of an IDMap's positions: a view, valid until the next add/remove."""
    size = structure.id_map.size()
    if size == 0:
        return np.empty(0, np.int64)
    return faiss.rev_swig_ptr(structure.id_map.data(), size)


def last_occurrences(ids: np.ndarray) -> np.ndarray:
    """(n,) bool: True at the last position of each distinct id (a re-added id's live copy)."""
    mask = np.zeros(len(ids), bool)
    _, first_reversed = np.unique(ids[::-1], return_index=True)
    mask[len(ids) - 1 - first_reversed] = True
    return mask


def search_params(spec: Spec, params: dict[str, Any], sel: Any = None) -> Any:
    """The faiss SearchParameters object for a search (None when there is nothing to set).

    A refine index applies neither its own selector nor nprobe: both go in the parameters of
    its base index. Nested objects are kept alive on the returned one."""
    if spec.family == "hash":
        return None  # IndexBinaryHash takes no search parameters
    if spec.nlist:
        kwargs: dict[str, Any] = {"nprobe": int(params["nprobe"])}
        quantizer = None
        if spec.hnsw_m:
            quantizer = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
            kwargs["quantizer_params"] = quantizer
        if sel is not None:
            kwargs["sel"] = sel
        ivf = faiss.SearchParametersIVF(**kwargs)
        ivf.keep_alive = (quantizer, sel)
        if not spec.refine:
            return ivf
        refine = faiss.IndexRefineSearchParameters(
            k_factor=float(params["k_factor"]), base_index_params=ivf
        )
        refine.keep_alive = ivf
        return refine
    if spec.hnsw_m:
        hnsw = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
        if sel is not None:
            hnsw.sel = sel
        hnsw.keep_alive = sel
        return hnsw
    if sel is None:
        return None
    flat = faiss.SearchParameters(sel=sel)
    flat.keep_alive = sel
    return flat


# Filtered searches on approximate indexes: a subset up to this size is searched exactly
# (its vectors from the catalogue: ~10 MB at 128-d); a larger one widens the search by the
# share of items it keeps, as vector databases do with their "full scan" thresholds.
EXACT_SUBSET = 20_000
MAX_EF_SEARCH = 4096


def widened(spec: Spec, params: dict[str, Any], share: float) -> dict[str, Any]:
    """Search parameters for a filtered search that keeps `share` (0, 1] of the items: an
    IVF probes nprobe / share lists and an HNSW graph explores efSearch / share candidates
    (capped), so that about as many matching candidates are seen as without a filter."""
    out = dict(params)
    if "nprobe" in out:
        out["nprobe"] = min(spec.nlist, int(np.ceil(out["nprobe"] / share)))
    if spec.family == "hnsw":  # not an IVF's HNSW quantizer: its lists are what is widened
        out["efSearch"] = min(MAX_EF_SEARCH, int(np.ceil(out["efSearch"] / share)))
    return out


def batch_selector(ids: np.ndarray) -> Any:
    """Selects the given ids (or positions); a hash set, O(1) per test."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64))


def array_selector(positions: np.ndarray) -> Any:
    """Selects sorted positions as an array: an exhaustive float search then computes only
    their distances (faiss's by-index path) instead of testing every stored vector."""
    positions = np.ascontiguousarray(np.sort(positions), np.int64)
    sel = faiss.IDSelectorArray(len(positions), faiss.swig_ptr(positions))
    sel.keep_alive = positions  # faiss keeps the pointer, not a copy
    return sel


def bitmap_selector(mask: np.ndarray) -> Any:
    """Selects the positions where `mask` (n,) is True; faiss reads bits LSB first."""
    bits = np.packbits(mask, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    sel.keep_alive = bits
    return sel


def exact_search(
    base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (raw faiss distances, ids), each (q, k), of prepared queries over prepared
    `base` rows (unit vectors for cosine, padded codes for hamming); -1 past the end."""
    if metric == "hamming":
        flat = faiss.IndexBinaryFlat(base.shape[1] * 8)
    elif METRIC_TYPES[metric] == faiss.METRIC_L2:
        flat = faiss.IndexFlatL2(base.shape[1])
    else:
        flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    if metric == "hamming":
        raw, pos = faiss_search(flat, queries, k)
    else:
        with blas_rule(base.shape[1]):
            raw, pos = faiss_search(flat, queries, k)
    return raw, np.where(pos >= 0, base_ids[np.maximum(pos, 0)], -1)


def to_distances(raw: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Our distances (q, k) float32 from faiss's raw scores: cosine 1 - cos, inner_product
    minus the dot product, euclidean the L2 norm, hamming differing bits; inf where no id."""
    d = raw.astype(np.float32, copy=False)
    if metric == "cosine":
        d = 1.0 - d
    elif metric == "inner_product":
        d = -d
    elif metric == "euclidean":
        d = np.sqrt(np.maximum(d, 0.0))
    elif d is raw:
        d = d.copy()  # never write into the caller's array
    if not complete(ids):
        d[ids < 0] = np.inf
    return d


def complete(ids: np.ndarray) -> bool:
    """True when no row of (q, k) results came back short. faiss, and every path here,
    pads a short row at its end with -1, so the last column says it: a scalar test on one
    row, where a reduction over the whole array costs ~1 us of a 40-100 us search."""
    if len(ids) == 1:
        return bool(ids[0, -1] >= 0)
    return ids.size == 0 or bool(ids[:, -1].min() >= 0)


def mapped(view: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """IDMap positions (q, k) -> ids through `id_view`, -1 (nothing found) kept."""
    if complete(positions):
        return view[positions]
    return np.where(positions >= 0, view[np.maximum(positions, 0)], -1)


def memory_bytes(structure: Structure, binary: bool) -> int:
    """Bytes the faiss structure takes (its serialised size)."""
    return len(serialize(structure, binary))


def faiss_search(
    index: Any, x: np.ndarray, k: int, params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(raw distances, ids), each (n, k), of prepared C-contiguous rows x (float32, or
    uint8 codes for a binary index), through faiss's C++ `search` itself (`search_c`).

    Two reasons to skip faiss's Python wrapper: it costs ~4 us a call, against 40-100 us
    for a one-query IVF search; and another library may have imported
    faiss.contrib.torch_utils (pytorch-metric-learning does), which replaces the wrapper
    with one that drops `params` (the selector, nprobe ...)."""
    n = len(x)
    binary = isinstance(index, faiss.IndexBinary)
    x = np.ascontiguousarray(x, np.uint8 if binary else np.float32)
    if x.ndim != 2 or x.shape[1] * (8 if binary else 1) != index.d:  # else C reads past x
        raise ValueError(f"faiss_search: rows of shape {x.shape} for an index of d={index.d}")
    distances = np.empty((n, k), np.int32 if binary else np.float32)
    ids = np.empty((n, k), np.int64)
    sp = faiss.swig_ptr
    index.search_c(n, sp(x), k, sp(distances), sp(ids), params)
    return distances, ids


def overfetch(
    inner: Any, live: np.ndarray, view: np.ndarray, x: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(raw, ids) of an IDMap's `inner` index that takes no selector (BHash): search k +
    the tombstones' count positions, keep the first k `live` ones, ids through `view`."""
    fetch = min(k + int(len(live) - live.sum()), len(live))
    raw, pos = faiss_search(inner, x, fetch)
    keep = (pos >= 0) & live[np.maximum(pos, 0)]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # live first, in rank order
    raw, pos, keep = (np.take_along_axis(a, order, 1) for a in (raw, pos, keep))
    ids = np.where(keep, view[np.maximum(pos, 0)], -1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        raw = np.pad(raw, ((0, 0), (0, pad)))
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return raw, ids
