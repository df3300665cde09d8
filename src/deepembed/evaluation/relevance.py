"""Who is relevant to a query: the same class (one label per item), or at least one shared
label (a (N, C) 0/1 label matrix, as NUS-WIDE and MS-COCO are evaluated).

An item whose label row is all zeros shares no label with anything: it is relevant to no
query, and as a query it has nothing to find (left out of the averages and counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from deepembed.evaluation._knn_space import ArrayLike, EvaluationInputError

_SHARE_BLOCK = 1 << 22  # (query label sets x gallery label sets) entries per block


def parse_labels(labels: ArrayLike | Sequence, n_rows: int, name: str) -> np.ndarray:
    """Labels as a (N,) array of any dtype, or a (N, C) bool matrix for multi-label input."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[0] == n_rows:
        if arr.shape[1] == 0:
            raise EvaluationInputError(f"{name} is a label matrix with no label columns")
        if arr.dtype != np.bool_:
            try:
                ok = bool(np.isin(arr, (0, 1)).all())
            except TypeError:
                ok = False
            if not ok:
                raise EvaluationInputError(
                    f"{name} as a (N, C) matrix must hold 0/1 (multi-label membership), found "
                    f"values such as {np.unique(arr.astype(object))[:3].tolist()}"
                )
        return arr.astype(bool)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise EvaluationInputError(
            f"{name} must have one label per row: expected shape ({n_rows},) or a "
            f"({n_rows}, C) 0/1 matrix, got {arr.shape}"
        )
    return arr


def _words(matrix: np.ndarray) -> np.ndarray:
    """(N, C) bool rows packed into (N, ceil(C / 64)) uint64 words."""
    packed = np.packbits(matrix, axis=1)  # (N, ceil(C / 8)) uint8
    pad = -packed.shape[1] % 8
    packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _shared_counts(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q,) gallery rows sharing at least one label with each query row.

    Counted per distinct label set (few in real data), in blocks of query sets.
    """
    g_sets, g_count = np.unique(gallery, axis=0, return_counts=True)  # (U, C), (U,)
    q_sets, q_inverse = np.unique(query, axis=0, return_inverse=True)  # (V, C), (Q,)
    g_t = torch.from_numpy(g_sets.astype(np.float32)).T.contiguous()  # (C, U)
    weight = torch.from_numpy(g_count.astype(np.float64))  # (U,)
    per_set = np.empty(len(q_sets), np.int64)
    step = max(1, _SHARE_BLOCK // max(1, len(g_sets)))
    for a in range(0, len(q_sets), step):
        q_t = torch.from_numpy(q_sets[a : a + step].astype(np.float32))
        share = torch.mm(q_t, g_t) > 0.5  # (s, U) at least one common label
        per_set[a : a + step] = (share.to(torch.float64) @ weight).round().long().numpy()
    return per_set[np.asarray(q_inverse).ravel()]


class Relevance:
    """Relevance of gallery items to queries, from single labels or label matrices.

    Attributes:
        query: (Q,) int64 class codes shared with the gallery, or (Q, C) bool label matrix.
        gallery: (G,) int64 codes, or (G, C) bool (the query arrays in leave-one-out).
        loo: leave-one-out: the gallery is the query set, and a query is not its own match.
    """

    def __init__(self, query: np.ndarray, gallery: np.ndarray | None):
        """Encode parsed labels (see :func:`parse_labels`); ``gallery=None``: leave-one-out."""
        self.loo = gallery is None
        if (gallery is not None) and (query.ndim != gallery.ndim):
            raise EvaluationInputError(
                "query_labels and gallery_labels must both be single labels (N,) or both "
                f"(N, C) label matrices, got shapes {query.shape} and {gallery.shape}"
            )
        if query.ndim == 2:
            if gallery is not None and gallery.shape[1] != query.shape[1]:
                raise EvaluationInputError(
                    f"label matrices disagree on the classes: query_labels has "
                    f"{query.shape[1]} columns, gallery_labels {gallery.shape[1]}"
                )
            self.query = query
            self.gallery = query if gallery is None else gallery
            self._q_words, self._g_words = _words(self.query), _words(self.gallery)
            return
        # labels of any type -> int codes shared by query and gallery
        both = query if gallery is None else np.concatenate([query, gallery])
        codes = np.unique(both, return_inverse=True)[1].astype(np.int64).ravel()
        self.query = codes[: len(query)]
        self.gallery = codes if gallery is None else codes[len(query) :]

    @property
    def multi_label(self) -> bool:
        return self.query.ndim == 2

    @property
    def num_candidates(self) -> int:
        """Gallery items a query is ranked against (all but itself in leave-one-out)."""
        return len(self.gallery) - 1 if self.loo else len(self.gallery)

    def counts(self) -> np.ndarray:
        """(Q,) relevant gallery items of each query (itself excluded in leave-one-out)."""
        if self.multi_label:
            rel = _shared_counts(self.query, self.gallery)
            return rel - self.query.any(axis=1) if self.loo else rel
        per_class = np.bincount(self.gallery, minlength=int(self.query.max()) + 1)
        rel = per_class[self.query].astype(np.int64)
        return rel - 1 if self.loo else rel

    def hits(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """(p, k) bool: gallery item ``columns[i, j]`` is relevant to query ``rows[i]``."""
        if not self.multi_label:
            return self.gallery[columns] == self.query[rows][:, None]
        common = self._q_words[rows][:, None, :] & self._g_words[columns]  # (p, k, W)
        return (common != 0).any(axis=2)

    def require_single(self, what: str) -> None:
        """Refuse ``what`` (metrics that need one class per item) for multi-label input."""
        if self.multi_label:
            raise EvaluationInputError(
                f"{what} need one class per item; multi-label (N, C) labels support the rank "
                "metrics and hamming_precision@R only"
            )
