"""The faiss side of the k-NN search: flat indexes over the prepared space, and their
results turned into the space's distances (see :mod:`deepembed.evaluation.knn`)."""

from __future__ import annotations

import faiss
import numpy as np
import torch

from deepembed.evaluation._knn_space import _Space

_FAISS_BINARY_BYTES = (4, 8, 16, 20, 32, 64)  # code sizes with specialised Hamming kernels


def _faiss_candidates(
    space: _Space, q0: int, q1: int, k1: int, exclude_self: bool, index: faiss.Index
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k1 distances (c, k1) and columns of query rows q0:q1 from a faiss index."""
    want = k1 + 1 if exclude_self else k1
    q = space.query[q0:q1].cpu().numpy()
    if space.distance == "hamming":
        q = _pack_for_faiss(q)
    dist, cols = index.search(np.ascontiguousarray(q), want)  # (c, want) each
    dist_t = torch.from_numpy(np.asarray(dist, dtype=np.float32))
    cols_t = torch.from_numpy(cols.astype(np.int64))
    if exclude_self:  # drop the query itself, or the last column where it was not returned
        own = torch.arange(q0, q1)[:, None]
        is_own = cols_t == own
        drop = torch.where(is_own.any(1), is_own.int().argmax(1), torch.full_like(own[:, 0], k1))
        keep = torch.ones_like(is_own)
        keep[torch.arange(q1 - q0), drop] = False
        dist_t = dist_t[keep].view(q1 - q0, k1)
        cols_t = cols_t[keep].view(q1 - q0, k1)
    if space.distance == "cosine":
        dist_t = dist_t.neg_().add_(1.0)
    elif space.distance == "inner_product":
        dist_t = dist_t.neg_()
    elif space.distance == "euclidean":
        dist_t = dist_t.clamp_min_(0.0).sqrt_()
    elif space.distance == "squared_euclidean":
        dist_t = dist_t.clamp_min_(0.0)
    return dist_t.to(space.query.device), cols_t.to(space.query.device)


def _pack_for_faiss(signs: np.ndarray) -> np.ndarray:
    """-1/+1 rows (N, bits) as packed uint8 codes, zero-padded to a specialised code size."""
    packed = np.packbits(signs > 0, axis=1)  # (N, ceil(bits / 8))
    size = next((s for s in _FAISS_BINARY_BYTES if s >= packed.shape[1]), None)
    size = size or -(-packed.shape[1] // 8) * 8
    return np.pad(packed, ((0, 0), (0, size - packed.shape[1])))


def _faiss_index(space: _Space) -> faiss.Index:
    """A flat faiss index over the gallery in the space's distance."""
    g = space.gallery.cpu().numpy()
    if space.distance == "hamming":
        codes = _pack_for_faiss(g)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return index
    if space.distance in ("cosine", "inner_product"):
        index = faiss.IndexFlatIP(g.shape[1])
    else:
        index = faiss.IndexFlatL2(g.shape[1])
    index.add(np.ascontiguousarray(g))
    return index
