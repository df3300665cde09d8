"""batch -> embed -> mine -> loss -> step, with evaluation on the unseen classes per epoch."""

from __future__ import annotations

import inspect
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim import Adam
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepembed import data, losses, miners
from deepembed.config import RunConfig, save_config
from deepembed.data.datasets import TensorImageDataset, collate
from deepembed.data.transforms import train_augmentation
from deepembed.errors import ConfigError
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.io import write_json
from deepembed.losses import MetricLoss
from deepembed.miners import Miner
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.callbacks import BestCheckpoint, Callback, EvaluateCallback, TrainState


@dataclass
class TrainResult:
    """What a run produced: its directory, the saved model and the last evaluation."""

    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, image_shape: tuple[int, int, int]) -> Embedder:
    """The Embedder a config describes, for images of shape (C, H, W)."""
    c, h, w = image_shape
    spec = EmbedderSpec(
        backbone=config.model.backbone,
        backbone_params=dict(config.model.backbone_params),
        embedding_dim=config.model.embedding_dim,
        normalize=config.model.normalize,
        in_channels=c,
        image_size=[h, w],
        mean=[0.5] * c,
        std=[0.5] * c,
    )
    return Embedder(spec)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: "cosine" decays to 0 over the run, "constant" keeps it."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
            ),
        )
    raise ConfigError(f"optim.schedule: unknown schedule {schedule!r}; known: cosine, constant")


def cap_per_class(dataset: TensorImageDataset, per_class: int, seed: int) -> TensorImageDataset:
    """At most `per_class` images of each class (seeded choice); 0 keeps everything."""
    if per_class <= 0:
        return dataset
    rng = np.random.default_rng(seed)
    keep = [
        rng.permutation(np.flatnonzero(dataset.labels == c))[:per_class]
        for c in np.unique(dataset.labels)
    ]
    return dataset.subset(np.sort(np.concatenate(keep)))


def open_splits(
    config: RunConfig,
) -> tuple[TensorImageDataset, TensorImageDataset | None, TensorImageDataset]:
    """(train, validation or None, test) datasets of a run config.

    The validation classes are carved from the training classes (data.val_classes > 0), so
    checkpoints and hyper-parameters are chosen without ever looking at the test classes.
    """
    d = config.data
    train_set = data.open(d.name, d.root, "train", d.eval_per_source, config.train.seed)
    test_set = data.open(d.name, d.root, "test", d.eval_per_source, config.train.seed)
    val_set = None
    if d.val_classes > 0:
        train_set, val_set = data.validation_split(train_set, d.val_classes, config.train.seed)
    return cap_per_class(train_set, d.train_per_class, config.train.seed), val_set, test_set


def evaluate_embeddings(embeddings: Embeddings, config: RunConfig) -> dict[str, Any]:
    """The configured metrics, leave-one-out on the embedded test set."""
    return evaluate(
        embeddings.vectors,
        embeddings.labels,
        metrics=tuple(config.eval.metrics),
        distance=config.eval.distance,
    )


def build_objective(
    config: RunConfig, num_classes: int, embedding_size: int
) -> tuple[MetricLoss, Miner | None]:
    """The configured loss and miner. Class-parameter losses get `num_classes` (training
    classes) and `embedding_size` unless the config sets them; loss.memory_size > 0 wraps the
    loss in a cross-batch memory, which then does the mining itself."""
    params = dict(config.loss.params)
    signature = inspect.signature(losses.LOSSES.get(config.loss.name)).parameters
    for key, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
        if (
            key in signature
            and key not in params
            and signature[key].default is signature[key].empty
        ):
            params[key] = value
    loss_fn = losses.create(config.loss.name, **params)
    miner = miners.create(config.miner.name, **config.miner.params) if config.miner.name else None
    if config.loss.memory_size > 0:
        from deepembed.losses.xbm import CrossBatchMemory  # TODO(lead): top-level once xbm lands

        loss_fn = CrossBatchMemory(loss_fn, embedding_size, config.loss.memory_size, miner)
        miner = None
    return loss_fn, miner


def make_optimizer(config: RunConfig, model: torch.nn.Module, loss_fn: MetricLoss) -> Adam:
    """Adam over the model and, at their own learning rate optim.loss_lr, the loss's learned
    parameters (proxies, class weights, margin beta)."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    learned = [p for p in loss_fn.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": config.optim.loss_lr, "weight_decay": 0.0})
    return Adam(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay)


def train(config: RunConfig, progress: bool = True) -> TrainResult:
    """Train, select the checkpoint, evaluate on the test classes; all lands in config.run_dir."""
    if config.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {config.train.epochs}")
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    seed_everything(config.train.seed)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)

    train_set, val_set, test_set = open_splits(config)
    model = build_model(config, train_set.image_shape).to(device)
    # dataset labels -> contiguous class indices 0..C-1 (class-parameter losses index by them)
    class_index = torch.as_tensor(np.unique(train_set.labels), device=device)
    loss_fn, miner = build_objective(config, len(class_index), config.model.embedding_dim)
    loss_fn = loss_fn.to(device)
    optimizer = make_optimizer(config, model, loss_fn)
    sampler = data.PKSampler(
        train_set.labels,
        config.sampler.classes_per_batch,
        config.sampler.images_per_class,
        config.train.seed,
    )
    loader = DataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers
    )
    augment = train_augmentation(config.data.augment).to(device)
    use_amp = config.train.amp and device.type == "cuda"
    steps_per_epoch = (
        len(sampler) if config.train.max_steps <= 0 else min(len(sampler), config.train.max_steps)
    )
    scheduler = make_scheduler(
        optimizer, config.optim.schedule, steps_per_epoch * config.train.epochs
    )
    metric_names = tuple(config.eval.metrics)
    monitor_key = "val" if val_set is not None else "test"
    checkpoint = BestCheckpoint(
        run_dir / "model", "val" if val_set is not None else None, config.train.select
    )
    callbacks: list[Callback] = [
        EvaluateCallback(
            val_set if val_set is not None else test_set,
            monitor_key,
            metric_names,
            config.eval.distance,
            config.eval.batch_size,
            config.train.eval_every,
            progress,
        ),
        checkpoint,
    ]

    history: list[dict[str, Any]] = []
    history_path = run_dir / "history.jsonl"
    history_path.unlink(missing_ok=True)
    for epoch in range(config.train.epochs):
        sampler.set_epoch(epoch)
        model.train()
        start, seen, total_loss = time.perf_counter(), 0, 0.0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            unit="batch",
            disable=not progress,
        )
        for step, (images, labels) in enumerate(loader):
            if step >= steps_per_epoch:
                break
            images = images.to(device, non_blocking=True)
            labels = torch.searchsorted(class_index, labels.to(device))  # (B,) in 0..C-1
            with torch.autocast(device.type, enabled=use_amp):
                embeddings = model(augment(images))  # (B, D)
            mined = miner(embeddings, labels) if miner is not None else None
            loss = loss_fn(embeddings.float(), labels, mined)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            seen += len(labels)
            total_loss += value
            bar.update(1)
            bar.set_postfix(
                loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}"
            )
        bar.close()
        state = TrainState(model, epoch + 1, config.train.epochs, run_dir)
        state.record.update(
            epoch=epoch + 1,
            loss=total_loss / max(1, steps_per_epoch),
            train_images_per_s=seen / (time.perf_counter() - start),
        )
        for callback in callbacks:
            callback.on_epoch_end(state)
        history.append(state.record)
        with history_path.open("a") as f:
            f.write(json.dumps(state.record) + "\n")

    # the kept checkpoint (best on validation, or the last epoch) is what gets tested
    model_dir = run_dir / "model"
    kept = Embedder.load(model_dir, device)
    test_embeddings = embed(kept, test_set, config.eval.batch_size, progress=progress)
    test_embeddings.save(run_dir / "embeddings" / "test.npz")
    metrics = evaluate_embeddings(test_embeddings, config)
    summary = {
        **metrics,
        "dataset": config.data.name,
        "split": "test",
        "selected_epoch": checkpoint.best_epoch,
        "selection": checkpoint.selection,
    }
    if val_set is not None:
        summary["validation"] = history[checkpoint.best_epoch - 1]["val"]
    write_json(run_dir / "metrics.json", summary)
    return TrainResult(run_dir, model_dir, summary, history)
