"""The Trainer: batches -> objective -> optimiser step, with events for callbacks,
checkpoints a killed run resumes from exactly, mixed precision and data parallelism.

    trainer = Trainer(model, objective, train_set, sampler, optimizer, scheduler, epochs=8,
                      callbacks=[EvaluateCallback(...), BestCheckpoint(...)], run_dir=...)
    history = trainer.fit()            # or trainer.fit(load_checkpoint(run_dir)[0])

`deepembed.train(config)` (training/pipeline.py) builds one from a config. The trainer owns
the loop, the device, the layout and precision of the forward pass (`encode`), gradient
synchronisation and checkpoints; the objective (training/objective.py) defines the loss of
a batch; callbacks (training/callbacks.py, training/logs.py) do everything else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deepembed.data.datasets import collate
from deepembed.errors import ConfigError
from deepembed.models.embedder import Embedder
from deepembed.training.batches import EpochBatches, KeyedBatches
from deepembed.training.callbacks import Callback
from deepembed.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from deepembed.training.distributed import Strategy

AMP_MODES = ("off", "bf16", "fp16")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.amp on `device` (None: full precision); fp16 needs CUDA."""
    if amp not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on a CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


class Trainer:
    """Trains `model` on `train_set` with `objective`; see the module docstring.

    `sampler` yields index batches per epoch (`set_epoch`); a batch's random augmentation is
    a function of (seed, epoch, step), so a resumed run repeats the uninterrupted one.
    `augment` (optional) runs on the device on whole batches of images; `frozen_at` > 0
    means the dataset gives the output of the first `frozen_at` backbone stages.
    Checkpoints go to `run_dir/checkpoints` every `checkpoint_every` steps (0: at epoch
    ends only) and at every epoch end, the newest `keep_checkpoints` kept.
    """

    def __init__(
        self,
        model: Embedder,
        objective: nn.Module,
        train_set: Dataset,
        sampler: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        epochs: int,
        max_steps: int = 0,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        strategy: Strategy | None = None,
        amp: str = "off",
        channels_last: bool = False,
        num_workers: int = 0,
        frozen_at: int = 0,
        augment: nn.Module | None = None,
        run_dir: Path | None = None,
        checkpoint_every: int = 0,
        keep_checkpoints: int = 3,
        progress: bool = True,
    ) -> None:
        self.strategy = strategy or Strategy(next(model.parameters()).device)
        self.device = self.strategy.device
        self.model, self.objective = model.to(self.device), objective.to(self.device)
        self.train_set, self.sampler = train_set, sampler
        self.optimizer, self.scheduler = optimizer, scheduler
        self.epochs, self.seed, self.callbacks = epochs, seed, list(callbacks)
        self.steps_per_epoch = len(sampler) if max_steps <= 0 else min(len(sampler), max_steps)
        self.amp_dtype = autocast_dtype(amp, self.device)
        # fp16 gradients underflow without loss scaling; bf16 has float32's range
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.channels_last, self.num_workers, self.frozen_at = channels_last, num_workers, frozen_at
        self.augment = augment.to(self.device) if augment is not None else None
        self.run_dir, self.checkpoint_every = run_dir, checkpoint_every
        self.keep_checkpoints, self.progress = keep_checkpoints, progress and self.strategy.is_main
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.wrapped: nn.Module = self.strategy.wrap(self.model)
        self._frozen: tuple[int, bool] | None = None
        # position: `epoch` (0-based) in progress, `step` batches of it done
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.should_stop = False
        self.history: list[dict[str, Any]] = []
        self.record: dict[str, Any] = {}
        self.train_seconds = self.train_seconds_epoch = 0.0
        self._loss_sum = torch.zeros((), device=self.device)  # epoch sum, on the device
        self._last_loss = torch.zeros((), device=self.device)
        self._seen = 0

    # -- what callbacks and objectives use ------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) batch -> (B, D) embeddings through the (wrapped) model, with the
        run's augmentation, layout and autocast."""
        if self.augment is not None:
            images = self.augment(images)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        precision = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with precision:
            return self.wrapped(images, start=self.frozen_at)

    def set_frozen(self, stages: int, bn: bool) -> None:
        """Freeze the first `stages` backbone stages (and BatchNorm statistics with `bn`);
        a distributed wrapper is rebuilt when what trains changes."""
        if self._frozen == (stages, bn):
            return
        self.model.freeze(stages, bn)
        self._frozen = (stages, bn)
        self.wrapped = self.strategy.wrap(self.model)

    def last_loss(self) -> float:
        """The loss of the last step (synchronises with the device)."""
        return float(self._last_loss)

    # -- the loop ------------------------------------------------------------------------
    def fit(self, checkpoint: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Train to the last epoch (or until a callback stops the run); return the history.
        With `checkpoint` (from `load_checkpoint`), continue exactly where it was taken."""
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
        self._emit("on_train_start")
        while self.epoch < self.epochs and not self.should_stop:
            if self.step == 0:
                self.record = {}
                self._loss_sum.zero_()
                self._seen = 0
            self._emit("on_epoch_start")
            self._run_epoch()
            self.record.update(
                epoch=self.epoch + 1,
                loss=float(self._loss_sum) / max(1, self.steps_per_epoch),
                # every rank trains on equal P x K batches: the run's images per second
                train_images_per_s=self._seen
                * self.strategy.world_size
                / max(self.train_seconds_epoch, 1e-9),
                lr=self.optimizer.param_groups[0]["lr"],
            )
            self._emit("on_epoch_end")
            self.history.append(self.record)
            self.epoch, self.step = self.epoch + 1, 0
            self.save_checkpoint()
        self.epoch = min(self.epoch, self.epochs)
        self._emit("on_train_end")
        return self.history

    def _run_epoch(self) -> None:
        self.model.train()
        batches = EpochBatches(self.sampler, self.seed, self.epoch, self.step, self.steps_per_epoch)
        loader = DataLoader(
            KeyedBatches(self.train_set),
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating the loader must not draw from torch's global one,
            # or a run resumed mid-epoch would draw differently from the uninterrupted run
            generator=torch.Generator().manual_seed(self.seed),
        )
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            unit="batch",
            disable=not self.progress,
        )
        start = time.perf_counter()
        self.train_seconds_epoch = 0.0
        for images, labels in loader:
            self._emit("on_step_start")
            batch = (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )
            self._optimize(batch)
            self._seen += len(labels)
            self.step += 1
            self.global_step += 1
            bar.update(1)
            if self.progress and (self.step % 10 == 0 or self.step == self.steps_per_epoch):
                bar.set_postfix(loss=f"{self.last_loss():.4f}")  # one sync per 10 steps
            self._emit("on_step_end")
            every = self.checkpoint_every
            # (the epoch end writes its own checkpoint)
            if every > 0 and self.global_step % every == 0 and self.step < self.steps_per_epoch:
                self.save_checkpoint()
        bar.close()
        self.train_seconds_epoch = time.perf_counter() - start
        self.train_seconds += self.train_seconds_epoch

    def _optimize(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """One step: the objective's loss, backward, gradient sync, optimiser and schedule."""
        loss = self.objective.training_loss(self, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # the model's gradients are averaged by the distributed wrapper; the objective's
        # (proxies ...) are the same on every rank already, averaged so they stay bit-equal
        self.strategy.all_reduce_mean_(
            [p.grad for p in self.objective.parameters() if p.grad is not None]
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        loss = loss.detach()
        self._last_loss = loss
        self._loss_sum += loss

    def _emit(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything `fit` needs to continue from here (see training/checkpoint.py)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "loss_sum": self._loss_sum.detach().cpu(),
            "seen": self._seen,
            "record": self.record,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "callbacks": {k: c.state_dict() for k, c in self._named_callbacks().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict` output (the model and optimizer in place)."""
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.global_step = int(state["global_step"])
        self._loss_sum = state["loss_sum"].to(self.device)
        self._seen, self.record = int(state["seen"]), dict(state["record"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        saved = state["callbacks"]
        for name, callback in self._named_callbacks().items():
            if name in saved:  # callbacks added since (a user's, stateless) start afresh
                callback.load_state_dict(saved[name])
        set_rng_state(state["rng"])

    def _named_callbacks(self) -> dict[str, Callback]:
        """Callbacks by class name (numbered from the second of a class on)."""
        named: dict[str, Callback] = {}
        for callback in self.callbacks:
            name = type(callback).__name__
            key, n = name, 1
            while key in named:
                n += 1
                key = f"{name}#{n}"
            named[key] = callback
        return named

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current position (rank 0; others wait for it)."""
        if self.run_dir is None:
            return None
        path = None
        if self.strategy.is_main:
            path = save_checkpoint(self.run_dir, self.state_dict(), self.keep_checkpoints)
        self.strategy.barrier()
        return path
