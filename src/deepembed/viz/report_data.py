"""What a report reads from a run directory, and what it works out from the embeddings.

A run directory holds config.yaml, metrics.json, history.jsonl and embeddings/test.npz
(+ gallery.npz for query/gallery protocols). The retrieval analysis runs the same exact
search as the evaluation (`per_query_scores`, `knn_search`), so the report's per-query
figures average to the run's metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deepembed.errors import DataError
from deepembed.evaluation import hashing_curves, knn_search, per_query_scores
from deepembed.inference import Embeddings

RECALL_KS = (1, 2, 4, 8, 16, 32)
# Numbers in metrics.json that describe the evaluation rather than measure the model.
BOOKKEEPING = frozenset(
    {"k", "num_queries", "num_queries_excluded", "selected_epoch", "epochs_trained", "world_size"}
)


def is_metric(name: str, value: object) -> bool:
    """Whether a metrics.json entry is a metric of the model (a number, not bookkeeping)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and name not in BOOKKEEPING


@dataclass
class RunRecord:
    """The files of one run directory, read and checked."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    query: Embeddings | None  # embeddings/test.npz (None: not written or unreadable)
    gallery: Embeddings | None  # embeddings/gallery.npz for query/gallery protocols
    model: dict[str, Any] = field(default_factory=dict)  # model/config.json: all resolved
    problems: list[str] = field(default_factory=list)  # what could not be read, for notes

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        """Read a run directory; DataError if it is not one (no readable metrics.json)."""
        path = Path(run_dir)
        if not path.is_dir():
            raise DataError(f"run directory not found: {path}")
        metrics = _json_object(path / "metrics.json", "run's metrics")
        problems: list[str] = []
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            config = {}
            problems.append(f"config.yaml unreadable ({exc})")
        history = _history(path / "history.jsonl", problems)
        query = _embeddings(path / "embeddings" / "test.npz", problems, required=True)
        gallery = _embeddings(path / "embeddings" / "gallery.npz", problems, required=False)
        try:
            model = _json_object(path / "model" / "config.json", "model's config")
        except DataError:
            model = {}  # the run's config still says what the model was
        return cls(path, config, metrics, history, query, gallery, model, problems)

    @property
    def name(self) -> str:
        """The run's name (its config's; the folder is `.<name>.partial` while training)."""
        return str(self.config.get("name") or self.path.name)

    @property
    def distance(self) -> str:
        return str(self.metrics.get("distance") or self.section("eval").get("distance", "cosine"))

    @property
    def is_hashing(self) -> bool:
        return self.distance == "hamming" or (self.query is not None and self.query.bits > 0)

    def section(self, name: str) -> dict[str, Any]:
        """One section of the resolved config ({} when absent)."""
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}


def _json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path.parent} is not a run directory: it has no {path.name}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable as the {what} ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not readable as the {what} (not a JSON object)")
    return value


def _history(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Epoch records of history.jsonl; a damaged line is skipped and noted."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = None
            problems.append(f"history.jsonl line {n + 1} unreadable")
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _embeddings(path: Path, problems: list[str], required: bool) -> Embeddings | None:
    if not path.is_file():
        if required:
            problems.append(f"no {path.parent.name}/{path.name}")
        return None
    try:
        return Embeddings.load(path)
    except DataError as exc:
        problems.append(str(exc))
        return None


@dataclass
class Retrieval:
    """Each query's neighbours and scores, from one exact search of the run's protocol."""

    neighbours: np.ndarray  # (Q, k) gallery rows, nearest first
    distances: np.ndarray  # (Q, k)
    hits: np.ndarray  # (Q, k) bool: the neighbour is relevant
    ap: np.ndarray  # (Q,) MAP@R of each query; NaN where nothing is relevant
    recall: dict[int, float]  # Recall@K over the queries with a relevant item
    leave_one_out: bool


def _relevant(q_labels: np.ndarray, g_labels: np.ndarray) -> np.ndarray:
    """(Q, k) bool from query labels (Q,) or (Q, C) and neighbour labels (Q, k) or (Q, k, C)."""
    if q_labels.ndim == 1:
        return g_labels == q_labels[:, None]
    return ((g_labels > 0) & (q_labels[:, None, :] > 0)).any(-1)


def analyse(query: Embeddings, gallery: Embeddings | None, distance: str, k: int = 8) -> Retrieval:
    """Top-k lists, per-query MAP@R and the Recall@K curve of `query` against `gallery`
    (leave-one-out on `query` when gallery is None)."""
    ref = query if gallery is None else gallery
    loo = gallery is None
    vectors = query.vectors
    g_vectors = None if loo else ref.vectors
    g_labels = None if loo else ref.labels
    names = ("map@r", *(f"recall@{k_}" for k_ in RECALL_KS))
    scores = per_query_scores(vectors, query.labels, g_vectors, g_labels, names, distance)
    k = min(k, len(ref) - 1 if loo else len(ref))
    found = knn_search(vectors, ref.vectors, k, distance, exclude_self=loo)
    hits = _relevant(query.labels, ref.labels[found.indices])
    recall = {
        k_: float(np.nanmean(scores[f"recall@{k_}"]))
        for k_ in RECALL_KS
        if k_ <= (len(ref) - 1 if loo else len(ref))
    }
    return Retrieval(found.indices, found.distances, hits, scores["map@r"], recall, loo)


def per_class_ap(retrieval: Retrieval, labels: np.ndarray) -> list[tuple[int, int, float]]:
    """(class, queries, mean MAP@R) of every class with a scored query, worst first;
    single labels only (a multi-label query belongs to several classes)."""
    if labels.ndim != 1:
        return []
    rows = []
    for c in np.unique(labels):
        values = retrieval.ap[labels == c]
        values = values[np.isfinite(values)]
        if len(values):
            rows.append((int(c), len(values), float(values.mean())))
    return sorted(rows, key=lambda r: (r[2], r[0]))


def worst_queries(retrieval: Retrieval, n: int) -> np.ndarray:
    """Rows of the `n` queries of lowest MAP@R (ties: lower row first)."""
    scored = np.flatnonzero(np.isfinite(retrieval.ap))
    order = np.lexsort((scored, retrieval.ap[scored]))
    return scored[order[:n]]


def sample_queries(retrieval: Retrieval, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of `n` scored query rows, in row order."""
    scored = np.flatnonzero(np.isfinite(retrieval.ap))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(scored)[:n])


def hamming_curves(record: RunRecord) -> dict[str, Any] | None:
    """The run's hashing curves with their distance histogram: from metrics.json, or
    computed from the embeddings for runs written before the histogram existed."""
    stored = record.metrics.get("hashing_curves")
    if isinstance(stored, dict) and "distance_histogram" in stored:
        return stored
    if record.query is None or record.query.codes is None:
        return stored if isinstance(stored, dict) else None
    g = record.gallery
    return hashing_curves(
        record.query.codes,
        record.query.labels,
        None if g is None else g.codes,
        None if g is None else g.labels,
    )
