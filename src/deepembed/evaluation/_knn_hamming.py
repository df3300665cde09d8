"""Hamming search routed to the popcount kernels of ``_hamming``: when they apply, the
validated codes, and KnnChunks in the form ``iter_knn`` gives (split from knn.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch

from deepembed.evaluation._knn_space import (
    ArrayLike,
    EvaluationInputError,
    KnnChunk,
    _check_positive,
    binary_codes,
)

_HAMMING_KERNELS = True  # Hamming on CPU with the popcount kernels (tests turn it off)
# below this many (query, gallery) pairs a Hamming search keeps the torch pass: measured
# on 2 cores at 256 x 256 codes, the torch pass takes 0.07-0.4 s, the kernels' first call
# in a process ~0.3 s (numba loading) and later ones ~0.01 s
_HAMMING_MIN_PAIRS = 1 << 16


def _hamming_kernels_apply(query: ArrayLike, gallery: ArrayLike | None, backend: str) -> bool:
    """Whether a Hamming search of these inputs runs the popcount kernels of ``_hamming``:
    backend "auto" or "torch", inputs on the CPU, at least ``_HAMMING_MIN_PAIRS`` pairs."""
    if not _HAMMING_KERNELS or backend not in ("auto", "torch"):
        return False
    both = (query, query if gallery is None else gallery)
    if any(isinstance(x, torch.Tensor) and x.device.type != "cpu" for x in both):
        return False
    shapes = [np.shape(x) for x in both]
    if any(len(shape) != 2 for shape in shapes):
        return False  # the torch pass names the bad shape
    return shapes[0][0] * shapes[1][0] >= _HAMMING_MIN_PAIRS


def _hamming_codes(
    query: ArrayLike, gallery: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray | None, int, int, int]:
    """Validated codes (query, gallery or None for the query set itself), their length in
    bits and the row counts; the errors of the torch pass's ``_prepare``."""
    q_codes, bits = binary_codes(query, "query")
    if gallery is None:
        return q_codes, None, bits, len(q_codes), len(q_codes)
    g_codes, g_bits = binary_codes(gallery, "gallery")
    if bits != g_bits:
        raise EvaluationInputError(
            f"code length mismatch: query has {bits} bits, gallery has {g_bits}"
        )
    return q_codes, g_codes, bits, len(q_codes), len(g_codes)


def _iter_hamming(
    query: ArrayLike,
    gallery: ArrayLike | None,
    k: int,
    exclude_self: bool,
    chunk_size: int,
    query_labels: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    counts: bool,
) -> Iterator[KnnChunk]:
    """KnnChunks of the popcount kernels: k nearest per query row (k >= 0, clipped to the
    candidates; 0: no lists) and with ``counts`` the per-distance counts (needs labels)."""
    from deepembed.evaluation import _hamming  # imported late: numba loads in ~0.5 s

    chunk_size = _check_positive(chunk_size, "chunk_size")
    q_codes, g_codes, bits, n_query, n_gallery = _hamming_codes(query, gallery)
    if exclude_self and n_query != n_gallery:
        raise EvaluationInputError(
            f"exclude_self needs query and gallery to be the same set, got {n_query} query "
            f"rows and {n_gallery} gallery rows"
        )
    if counts and query_labels is None:
        raise EvaluationInputError("full_ranking needs query_labels and gallery_labels")
    k = min(k, n_gallery - 1 if exclude_self else n_gallery)
    yield from _hamming.iter_chunks(
        q_codes,
        g_codes,
        bits,
        k,
        exclude_self,
        chunk_size,
        query_labels,
        gallery_labels,
        counts=counts,
    )


def _hamming_knn(
    query: ArrayLike,
    gallery: ArrayLike | None,
    k: int,
    exclude_self: bool,
    chunk_size: int,
    query_labels: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    full_ranking: bool,
    histograms: bool,
) -> Iterator[KnnChunk]:
    """:func:`iter_knn`'s chunks from the popcount kernels (k >= 1): the whole-ranking tie
    groups of ``full_ranking`` are the per-distance counts, one group per distance."""
    from deepembed.evaluation.hashing import groups_from_histograms

    counts = full_ranking or histograms
    chunks = _iter_hamming(
        query, gallery, k, exclude_self, chunk_size, query_labels, gallery_labels, counts
    )
    for chunk in chunks:
        if chunk.indices.shape[1] == 0:  # leave-one-out on a single row: no candidates
            zeros = np.zeros(len(chunk.indices), np.int64)
            yield KnnChunk(0, chunk.distances, chunk.indices, zeros, zeros)
            return
        if counts:
            groups = None
            if full_ranking:
                groups = groups_from_histograms(
                    chunk.distance_counts, chunk.relevant_distance_counts
                )
            chunk = replace(
                chunk,
                relevant_groups=groups,
                distance_counts=chunk.distance_counts if histograms else None,
                relevant_distance_counts=chunk.relevant_distance_counts if histograms else None,
            )
        yield chunk
