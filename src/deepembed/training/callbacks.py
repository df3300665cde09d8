"""Training callbacks: periodic evaluation and best-checkpoint selection.

The trainer calls `on_epoch_end(state)` after every epoch and `on_train_end(state)` once;
callbacks read the model from the state and add what they measured to `state.record`, the
epoch's line of history.jsonl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.models.embedder import Embedder


@dataclass
class TrainState:
    """What callbacks see: the model, the epoch just finished (1-based) and its record."""

    model: Embedder
    epoch: int
    epochs: int
    run_dir: Path
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> bool:
        return self.epoch == self.epochs


class Callback:
    """Base callback: every hook is a no-op."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after each epoch."""

    def on_train_end(self, state: TrainState) -> None:
        """Called once, after the last epoch."""


class EvaluateCallback(Callback):
    """Embed `dataset` and evaluate it (leave-one-out, or against `gallery`) every `every`
    epochs and at the end.

    The metrics land in `state.record[key]` (e.g. "val"), so the history shows the curve.
    """

    def __init__(
        self,
        dataset: Dataset,
        key: str,
        metrics: tuple[str, ...],
        distance: str = "cosine",
        batch_size: int = 0,
        every: int = 1,
        progress: bool = True,
        gallery: Dataset | None = None,
    ) -> None:
        self.dataset, self.gallery, self.key, self.metrics = dataset, gallery, key, metrics
        self.distance, self.batch_size, self.every = distance, batch_size, every
        self.progress = progress
        self.latest: tuple[int, Embeddings, Embeddings | None] | None = None  # epoch, q, g

    def due(self, state: TrainState) -> bool:
        return state.last or (self.every > 0 and state.epoch % self.every == 0)

    def on_epoch_end(self, state: TrainState) -> None:
        if not self.due(state):
            return
        query = embed(state.model, self.dataset, self.batch_size, progress=self.progress)
        gallery = None
        if self.gallery is not None:
            gallery = embed(state.model, self.gallery, self.batch_size, progress=self.progress)
        result = evaluate(
            query.vectors,
            query.labels,
            None if gallery is None else gallery.vectors,
            None if gallery is None else gallery.labels,
            metrics=self.metrics,
            distance=self.distance,
        )
        state.record[self.key] = result
        self.latest = (state.epoch, query, gallery)
        if self.progress:
            shown = ", ".join(f"{m} {result[m]:.4f}" for m in self.metrics if m in result)
            tqdm.write(f"epoch {state.epoch} {self.key}: {shown}")


class BestCheckpoint(Callback):
    """Keep the model of the epoch with the best `state.record[key][metric]` (higher is better).

    The model directory is rewritten atomically on each improvement, so an interrupted run
    still leaves the best model so far. With `key` None, the last epoch's model is kept.
    """

    def __init__(self, model_dir: Path, key: str | None = None, metric: str = "map@r") -> None:
        self.model_dir, self.key, self.metric = model_dir, key, metric
        self.best = -math.inf
        self.best_epoch = 0

    @property
    def selection(self) -> str:
        """How the kept model was chosen, in words (written to metrics.json)."""
        return f"best {self.key} {self.metric}" if self.key else "last epoch"

    def on_epoch_end(self, state: TrainState) -> None:
        if self.key is None:
            if state.last:
                self._keep(state, math.nan)
            return
        value = state.record.get(self.key, {}).get(self.metric)
        if value is not None and value > self.best:
            self._keep(state, float(value))

    def _keep(self, state: TrainState, value: float) -> None:
        self.best, self.best_epoch = value, state.epoch
        state.model.save(self.model_dir)
        state.record["checkpoint"] = True
