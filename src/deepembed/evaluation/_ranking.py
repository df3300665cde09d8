"""The rank-metric pass of `evaluate`: one exact search, per-query values block by block.

`evaluate` averages the blocks; `per_query_scores` keeps every query's value (what a report
needs to find the worst queries and the classes a model confuses).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from deepembed.evaluation import metrics as m
from deepembed.evaluation._knn_hamming import _hamming_kernels_apply, _iter_hamming
from deepembed.evaluation._knn_space import ArrayLike, EvaluationInputError, KnnChunk
from deepembed.evaluation.hashing import groups_from_histograms, hamming_precision, map_hash_at_k
from deepembed.evaluation.knn import iter_knn
from deepembed.evaluation.relevance import Relevance
from deepembed.evaluation.ties import TieGroups, groups_from_list

AT_K = re.compile(r"^(recall|precision|map|map_hash|knn_accuracy)@([1-9][0-9]*)$")
RADIUS = re.compile(r"^hamming_precision@(0|[1-9][0-9]*)$")
_FULL_RANKING = ("map", "mrr")
_METRIC_BLOCK = 1 << 20  # (rows x k) entries per block of per-query metric arrays


@dataclass(frozen=True)
class _Part:
    """What the per-query metric functions see of a block of query rows."""

    groups: TieGroups  # tie groups of the top-k lists
    full: TieGroups  # tie groups of every relevant item (whole ranking) or ``groups``
    relevant: np.ndarray  # (p,) R
    neighbours: np.ndarray | None  # (p, k) neighbour class codes (single labels only)
    query: np.ndarray | None  # (p,) query class codes (single labels only)
    counts: np.ndarray | None  # (p, bits + 1) items at each Hamming distance
    relevant_counts: np.ndarray | None  # (p, bits + 1) relevant items at each distance


def _rank_metric(name: str, num_candidates: int) -> Callable[[_Part], np.ndarray]:
    """Per-query function of a block of query rows -> (p,) values."""
    radius = RADIUS.match(name)
    if radius:
        r = int(radius.group(1))
        return lambda p: hamming_precision(p.counts, p.relevant_counts, r)
    match = AT_K.match(name)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if kind == "recall":
            return lambda p: m.recall_at_k(p.groups, k)
        if kind == "precision":
            return lambda p: m.precision_at_k(p.groups, k, num_candidates)
        if kind == "map":
            return lambda p: m.map_at_k(p.groups, k, p.relevant)
        if kind == "map_hash":
            return lambda p: map_hash_at_k(p.groups, k)
        return lambda p: m.knn_accuracy(p.neighbours, p.query, k)
    return {
        "r_precision": lambda p: m.r_precision(p.groups, p.relevant),
        "map@r": lambda p: m.map_at_r(p.groups, p.relevant),
        "map": lambda p: m.average_precision(p.full, p.relevant),
        "mrr": lambda p: m.reciprocal_rank(p.full),
    }[name]


@dataclass(frozen=True)
class Ranking:
    """One planned search for rank metrics: which queries count, how many neighbours."""

    query: ArrayLike
    gallery: ArrayLike | None
    relevance: Relevance
    names: Sequence[str]  # rank metric names
    k: int  # neighbours searched per query
    distance: str
    backend: str
    relevant: np.ndarray  # (Q,) R of every query
    usable: np.ndarray  # (Q,) bool: queries with something to find

    @classmethod
    def plan(
        cls,
        query: ArrayLike,
        gallery: ArrayLike | None,
        relevance: Relevance,
        names: Sequence[str],
        max_k: int,
        distance: str,
        backend: str,
    ) -> Ranking:
        """k: the largest K asked (at least R where R-based metrics are asked), at most the
        candidate count. Refuses a set where no query has a relevant item."""
        relevant = relevance.counts()
        usable = relevant > 0
        if not usable.any():
            raise EvaluationInputError(
                "no query has a same-class item in the gallery: rank metrics are undefined"
            )
        k = max(1, max_k)
        if any(n in ("r_precision", "map@r") for n in names):
            k = max(k, int(relevant.max()))
        k = min(k, relevance.num_candidates)
        return cls(query, gallery, relevance, tuple(names), k, distance, backend, relevant, usable)

    def _chunks(self, chunk_size: int, kernels: bool) -> Iterator[KnnChunk]:
        rel = self.relevance
        q_codes, g_codes = rel.query, rel.gallery
        if kernels:
            # popcount kernels: per-distance counts are every query's whole ranking, one tie
            # group per distance; lists only for the votes of knn_accuracy@K
            votes = [int(n.split("@")[1]) for n in self.names if n.startswith("knn_accuracy@")]
            return _iter_hamming(
                self.query,
                self.gallery,
                max(votes, default=0),
                rel.loo,
                chunk_size,
                q_codes,
                g_codes,
                True,
            )
        return iter_knn(
            self.query,
            self.gallery,
            self.k,
            self.distance,
            exclude_self=rel.loo,
            chunk_size=chunk_size,
            backend=self.backend,
            query_labels=q_codes,
            gallery_labels=g_codes,
            full_ranking=any(n in _FULL_RANKING for n in self.names),
            histograms=any(RADIUS.match(n) for n in self.names),
        )

    def blocks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(rows, {metric: (p,) values}) for every block of usable query rows, in order."""
        rel = self.relevance
        per_query = {n: _rank_metric(n, rel.num_candidates) for n in self.names}
        kernels = self.distance == "hamming" and _hamming_kernels_apply(
            self.query, self.gallery, self.backend
        )
        single = not rel.multi_label
        for chunk in self._chunks(chunk_size, kernels):
            # metric arrays are (rows, k): sub-chunks of ~1M entries keep them small
            step = max(1, _METRIC_BLOCK // max(self.k, 1))
            for r0 in range(0, len(chunk.indices), step):
                part = np.arange(r0, min(r0 + step, len(chunk.indices)))
                part = part[self.usable[chunk.start + part]]  # rows with a relevant item
                if part.size == 0:
                    continue
                rows, cols = chunk.start + part, chunk.indices[part]  # (p,), (p, k)
                counts, rel_counts = chunk.distance_counts, chunk.relevant_distance_counts
                if kernels:  # the whole ranking, one group per distance
                    groups = full = groups_from_histograms(counts[part], rel_counts[part])
                else:
                    groups = groups_from_list(
                        chunk.distances[part],
                        rel.hits(rows, cols),
                        chunk.tied_beyond[part],
                        chunk.relevant_tied_beyond[part],
                    )
                    full = chunk.relevant_groups.select(part) if chunk.relevant_groups else groups
                block = _Part(
                    groups,
                    full,
                    self.relevant[rows],
                    rel.gallery[cols] if single else None,
                    rel.query[rows] if single else None,
                    None if counts is None else counts[part],
                    None if rel_counts is None else rel_counts[part],
                )
                yield rows, {name: fn(block) for name, fn in per_query.items()}
