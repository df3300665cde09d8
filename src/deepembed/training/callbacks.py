"""Training callbacks: evaluation, checkpoint selection, early stopping and warm-ups.

The Trainer calls every callback on each event, in list order, with itself as argument:
`on_train_start`, `on_epoch_start`, `on_step_start`, `on_step_end`, `on_epoch_end`,
`on_train_end`. Callbacks read the trainer (`model`, `epoch`, `step`, `global_step`,
`record` = the epoch's line of the history, `strategy`, `run_dir`) and may set
`trainer.should_stop`. A callback with state a resumed run needs returns it from
`state_dict()`; the trainer's checkpoints carry it. A run resumed inside an epoch calls
`on_epoch_start` again for that epoch, so its handlers must be idempotent.
Logging callbacks are in training/logs.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from deepembed.inference import Embeddings, evaluate_model
from deepembed.losses.hashing_pairwise import hashnet_scale

if TYPE_CHECKING:
    from deepembed.training.trainer import Trainer


class Callback:
    """Base callback: every hook is a no-op and there is no state."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (also when a run is resumed)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before the epoch's first step (again when a run resumes inside the epoch)."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before each optimisation step."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimisation step (`trainer.global_step` counts it)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After each epoch; `trainer.record` holds what it measured."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once, after the last epoch (or an early stop)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class EvaluateCallback(Callback):
    """Embed `dataset` and evaluate it (leave-one-out, or against `gallery`) every `every`
    epochs and at the last; the metrics land in `trainer.record[key]` (e.g. "val")."""

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

    def due(self, trainer: Trainer) -> bool:
        epoch = trainer.epoch + 1
        return epoch == trainer.epochs or (self.every > 0 and epoch % self.every == 0)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not self.due(trainer):
            return
        # DDP syncs buffers before each forward: after the last step each rank's BatchNorm
        # statistics include its own batch, so take rank 0's before embedding shards
        trainer.strategy.sync_buffers(trainer.model)
        result, query, gallery = evaluate_model(
            trainer.model,
            self.dataset,
            self.gallery,
            self.metrics,
            self.distance,
            self.batch_size,
            self.progress and trainer.strategy.is_main,
            trainer.strategy,
        )
        trainer.record[self.key] = result
        self.latest = (trainer.epoch + 1, query, gallery)
        if self.progress and trainer.strategy.is_main:
            shown = ", ".join(f"{m} {result[m]:.4f}" for m in self.metrics if m in result)
            tqdm.write(f"epoch {trainer.epoch + 1} {self.key}: {shown}")


def _monitored(trainer: Trainer, key: str, metric: str) -> float | None:
    value = trainer.record.get(key, {}).get(metric)
    return None if value is None else float(value)


class BestCheckpoint(Callback):
    """Keep the model of the epoch with the best `record[key][metric]` (higher is better).

    The model directory is rewritten atomically on each improvement (by rank 0), so an
    interrupted run still leaves the best model so far. With `key` None, the model of the
    last epoch is kept (the last one trained, also after an early stop).
    """

    def __init__(self, model_dir: Path, key: str | None = None, metric: str = "map@r") -> None:
        self.model_dir, self.key, self.metric = model_dir, key, metric
        self.best = -math.inf
        self.best_epoch = 0

    @property
    def selection(self) -> str:
        """How the kept model was chosen, in words (written to metrics.json)."""
        return f"best {self.key} {self.metric}" if self.key else "last epoch"

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.key is None:
            if trainer.epoch + 1 == trainer.epochs or trainer.should_stop:
                self._keep(trainer, math.nan)
            return
        value = _monitored(trainer, self.key, self.metric)
        if value is not None and value > self.best:
            self._keep(trainer, value)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.key is None and self.best_epoch != trainer.epoch:  # stopped by a callback
            self._keep(trainer, math.nan, trainer.epoch)

    def _keep(self, trainer: Trainer, value: float, epoch: int | None = None) -> None:
        self.best, self.best_epoch = value, trainer.epoch + 1 if epoch is None else epoch
        trainer.strategy.sync_buffers(trainer.model)  # every rank keeps rank 0's statistics
        if trainer.strategy.is_main:
            trainer.model.save(self.model_dir)
        trainer.record["checkpoint"] = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class EarlyStopping(Callback):
    """Stop when `record[key][metric]` has not improved by `min_delta` for `patience`
    evaluations in a row (train.early_stopping)."""

    def __init__(self, key: str, metric: str, patience: int, min_delta: float = 0.0) -> None:
        self.key, self.metric, self.patience, self.min_delta = key, metric, patience, min_delta
        self.best, self.bad = -math.inf, 0

    def on_epoch_end(self, trainer: Trainer) -> None:
        value = _monitored(trainer, self.key, self.metric)
        if value is None:
            return
        if value > self.best + self.min_delta:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            trainer.should_stop = True
            trainer.record["early_stop"] = True
            if trainer.strategy.is_main:
                tqdm.write(
                    f"early stop after epoch {trainer.epoch + 1}: {self.key} {self.metric} has "
                    f"not improved for {self.bad} evaluation(s) (best {self.best:.4f})"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])


class HeadWarmup(Callback):
    """The first `epochs` epochs train the head only (the backbone as loaded, BatchNorm
    statistics included); then the backbone's configured stages train too."""

    def __init__(self, epochs: int, freeze_stages: int, freeze_bn: bool) -> None:
        self.epochs, self.freeze_stages, self.freeze_bn = epochs, freeze_stages, freeze_bn

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch < self.epochs:
            trainer.set_frozen(len(trainer.model.backbone.stages()), bn=True)
        else:
            trainer.set_frozen(self.freeze_stages, self.freeze_bn)


class LRWarmup(Callback):
    """Scale every learning rate linearly from 1/steps to 1 over the first `steps` steps
    (optim.warmup_steps), on top of the schedule."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_start(self, trainer: Trainer) -> None:
        if trainer.global_step >= self.steps:
            return
        factor = (trainer.global_step + 1) / self.steps
        # the scheduler rewrites each group's lr after every step, so this never compounds
        for group in trainer.optimizer.param_groups:
            group["lr"] *= factor


class HashScale(Callback):
    """HashNet's continuation: the hash head's relaxation tanh(scale * x) sharpens towards
    sign(x) as training goes: scale = (1 + 0.005 t) ** 0.5, t the step rounded down to a
    multiple of 200 (`hashnet_scale`, Cao et al. 2017). The scale is a buffer of the head,
    so a checkpoint carries it."""

    def on_step_start(self, trainer: Trainer) -> None:
        trainer.model.head.scale.fill_(hashnet_scale(trainer.global_step))
