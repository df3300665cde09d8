"""Logging callbacks: the history of a run as JSON lines and CSV (always), TensorBoard
(when the `tensorboard` package is installed). Only rank 0 writes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepembed.io import atomic_write
from deepembed.training.callbacks import Callback

if TYPE_CHECKING:
    from deepembed.training.trainer import Trainer


def flat_record(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"val": {"map@r": 0.4}} -> {"val/map@r": 0.4}: one column per number."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= flat_record(value, f"{prefix}{key}/")
        elif isinstance(value, bool | int | float | str):
            out[f"{prefix}{key}"] = value
    return out


class MetricsLogger(Callback):
    """history.jsonl (one JSON object per epoch) and history.csv (one column per metric)
    in the run directory; a resumed run rewrites both from its checkpoint's history, so
    epochs logged after that checkpoint are not repeated."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl, self.csv = run_dir / "history.jsonl", run_dir / "history.csv"

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.strategy.is_main:
            self._write(trainer.history)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.strategy.is_main:
            self._write([*trainer.history, trainer.record])

    def _write(self, history: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(self.jsonl, lambda tmp: tmp.write_text(lines))
        rows = [flat_record(record) for record in history]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.csv, lambda tmp: tmp.write_text(text.getvalue()))


class TensorBoardLogger(Callback):
    """Scalars per step (loss, learning rate) and per epoch (every number of the record)
    to `log_dir` for TensorBoard."""

    def __init__(self, log_dir: Path, every: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer_class, self.log_dir, self.every = SummaryWriter, log_dir, every
        self.writer: Any = None

    @staticmethod
    def available() -> bool:
        """Whether the tensorboard package is installed."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
        return True

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.strategy.is_main:
            self.writer = self.writer_class(str(self.log_dir), purge_step=trainer.global_step)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.writer is not None and trainer.global_step % self.every == 0:
            self.writer.add_scalar("train/loss", trainer.last_loss(), trainer.global_step)
            self.writer.add_scalar(
                "train/lr", trainer.optimizer.param_groups[0]["lr"], trainer.global_step
            )

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        for key, value in flat_record(trainer.record).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, trainer.epoch + 1)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
