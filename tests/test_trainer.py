"""The Trainer's parts on a tiny in-memory problem: events, mixed precision, LR warm-up,
early stopping, logging, keyed batches and checkpoint config checks."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepembed import data
from deepembed.cli.main import app
from deepembed.config import load_config, to_dict
from deepembed.errors import ConfigError
from deepembed.losses import LOSSES
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.batches import EpochBatches, KeyedBatches, batch_key
from deepembed.training.build import make_scheduler
from deepembed.training.callbacks import Callback, EarlyStopping, LRWarmup
from deepembed.training.checkpoint import config_differences
from deepembed.training.logs import MetricsLogger, TensorBoardLogger
from deepembed.training.objective import MetricObjective
from deepembed.training.trainer import Trainer, autocast_dtype
from tests.conftest import TINY_RUN

EVENTS = ("on_train_start", "on_epoch_start", "on_step_start", "on_step_end", "on_epoch_end")


def tiny_trainer(callbacks: list[Callback], epochs: int = 2, **kwargs: Any) -> Trainer:
    """small_cnn on 48 random 16-px grey images of 6 classes, batches of 3 x 4."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 8)
    dataset = data.TensorImageDataset(rng.integers(0, 256, (48, 1, 16, 16), np.uint8), labels)
    torch.manual_seed(0)
    spec = EmbedderSpec(
        backbone="small_cnn",
        backbone_params={"widths": [4, 4, 4, 8, 8]},
        embedding_dim=8,
        in_channels=1,
        image_size=16,
    )
    model = Embedder(spec)
    objective = MetricObjective(
        LOSSES.create("proxy_anchor", num_classes=6, embedding_size=8), None, torch.arange(6)
    )
    optimizer = torch.optim.Adam(
        [{"params": model.parameters()}, *objective.optimizer_groups(0.01)], lr=1e-3
    )
    sampler = data.PKSampler(labels, 3, 4, seed=0)
    scheduler = make_scheduler(optimizer, "constant", 100)
    return Trainer(
        model,
        objective,
        dataset,
        sampler,
        optimizer,
        scheduler,
        epochs=epochs,
        callbacks=callbacks,
        progress=False,
        **kwargs,
    )


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.lrs: list[float] = []
        self.dtypes: list[torch.dtype] = []

    def __getattribute__(self, name: str) -> Any:
        if name in EVENTS or name == "on_train_end":
            return lambda trainer: self._log(name, trainer)
        return super().__getattribute__(name)

    def _log(self, name: str, trainer: Trainer) -> None:
        self.events.append((name, trainer.epoch, trainer.step))
        if name == "on_step_start":
            self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def test_every_event_reaches_the_callbacks_in_order() -> None:
    recorder = Recorder()
    trainer = tiny_trainer([recorder], max_steps=2)
    history = trainer.fit()
    names = [name for name, _, _ in recorder.events]
    epoch = ["on_epoch_start", *["on_step_start", "on_step_end"] * 2, "on_epoch_end"]
    assert names == ["on_train_start", *epoch, *epoch, "on_train_end"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert trainer.global_step == 4 and all(np.isfinite(h["loss"]) for h in history)


def test_lr_warmup_ramps_linearly_then_follows_the_schedule() -> None:
    recorder = Recorder()
    trainer = tiny_trainer([LRWarmup(4), recorder], epochs=2, max_steps=3)
    trainer.fit()
    np.testing.assert_allclose(recorder.lrs, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_bf16_autocast_on_the_cpu_and_fp32_loss() -> None:
    seen: list[torch.dtype] = []

    class Dtypes(Callback):
        def on_step_end(self, trainer: Trainer) -> None:
            seen.append(trainer.encode(torch.rand(2, 1, 16, 16)).dtype)

    trainer = tiny_trainer([Dtypes()], epochs=1, max_steps=2, amp="bf16")
    history = trainer.fit()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert np.isfinite(history[0]["loss"])
    plain = tiny_trainer([Dtypes()], epochs=1, max_steps=1)
    plain.fit()
    assert seen[-1] == torch.float32


def test_amp_modes_are_checked() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("off", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match=r"train\.amp must be off, bf16 or fp16"):
        load_config(None, ["train.amp=fp8"])
    assert load_config(None, ["train.amp=false"]).train.amp == "off"  # older configs


def test_early_stopping_stops_after_patience_without_improvement() -> None:
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])

    class FakeEval(Callback):
        def on_epoch_end(self, trainer: Trainer) -> None:
            trainer.record["val"] = {"map@r": next(scores)}

    trainer = tiny_trainer([FakeEval(), EarlyStopping("val", "map@r", 2)], epochs=6, max_steps=1)
    history = trainer.fit()
    assert len(history) == 4 and history[-1]["early_stop"] is True


def test_early_stopping_needs_validation_classes(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "configs/mnist30.yaml", f"output_dir={tmp_path}", "train.early_stopping=2"]
    )
    assert result.exit_code == 2 and "data.val_classes" in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_history_is_written_as_jsonl_and_csv_and_rewritten_on_resume(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path)
    trainer = tiny_trainer([logger], epochs=2, max_steps=1)
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [r["epoch"] for r in lines] == [1, 2] and [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["loss"]) == pytest.approx(lines[1]["loss"])
    trainer.history = trainer.history[:1]  # as restored from an epoch-1 checkpoint
    logger.on_train_start(trainer)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


def test_tensorboard_logger_writes_scalars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the tensorboard package here, a stand-in SummaryWriter records the calls."""
    written: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir: str, purge_step: int = 0) -> None:
            assert log_dir == str(tmp_path)

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def flush(self) -> None: ...

        def close(self) -> None: ...

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    trainer = tiny_trainer([TensorBoardLogger(tmp_path, every=1)], epochs=1, max_steps=2)
    trainer.fit()
    tags = [tag for tag, _, _ in written]
    assert tags.count("train/loss") == 2 and "epoch/loss" in tags


def test_keyed_batches_do_not_depend_on_workers_or_the_global_generator() -> None:
    """A batch's random crops are a function of its key: the same with or without workers,
    whatever the global generator's state, and different for another key."""

    class Noisy(torch.utils.data.Dataset):
        """Each item draws its 'augmentation' from torch's generator, as transforms do."""

        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.rand(5) + i, int(labels[i])

    labels = np.repeat(np.arange(3), 4)
    dataset = Noisy()
    sampler = data.PKSampler(labels, 2, 2, seed=0)

    def load(workers: int) -> list[torch.Tensor]:
        batches = EpochBatches(sampler, seed=1, epoch=0, start=0, stop=len(sampler))
        loader = torch.utils.data.DataLoader(
            KeyedBatches(dataset),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=lambda b: b,
        )
        return [x for x, _ in loader]

    torch.manual_seed(5)
    alone = load(0)
    torch.manual_seed(6)
    assert all(torch.equal(a, b) for a, b in zip(alone, load(2), strict=True))
    assert batch_key(1, 0, 0) != batch_key(1, 0, 1) != batch_key(1, 1, 0)
    assert len({tuple(x.flatten().tolist()) for x in alone}) == len(alone)


def test_config_differences_name_what_changed_and_allow_where_it_runs() -> None:
    saved = to_dict(load_config("configs/mnist30.yaml", TINY_RUN))
    same = to_dict(load_config("configs/mnist30.yaml", [*TINY_RUN, "train.threads=1"]))
    changed = to_dict(load_config("configs/mnist30.yaml", [*TINY_RUN, "model.embedding_dim=8"]))
    assert config_differences(saved, same) == []
    assert config_differences(saved, changed) == ["model.embedding_dim: 16 -> 8"]
