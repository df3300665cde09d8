"""batch -> embed -> mine -> loss -> step, with evaluation on the unseen classes per epoch."""

from __future__ import annotations

import dataclasses
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

from deepembed import data
from deepembed.config import RunConfig, save_config
from deepembed.data.datasets import collate
from deepembed.data.transforms import PRESETS, batch_augmentation
from deepembed.errors import ConfigError, UserError
from deepembed.evaluation import evaluate, parse_metrics
from deepembed.evaluation.knn import KNN_DISTANCES
from deepembed.inference import Embeddings, embed
from deepembed.io import atomic_dir, write_json
from deepembed.losses import MetricLoss
from deepembed.miners import Miner
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.callbacks import BestCheckpoint, Callback, EvaluateCallback, TrainState
from deepembed.training.objective import build_objective
from deepembed.training.rundir import SkipReporter, attach_skip_log, check_run_dir


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
    """The Embedder a config describes, for images of shape (C, H, W); it normalises its
    inputs with the transform preset's mean/std, so a saved model needs no data pipeline."""
    c, h, w = image_shape
    preset = PRESETS[config.data.transform]
    spec = EmbedderSpec(
        backbone=config.model.backbone,
        backbone_params=dict(config.model.backbone_params),
        embedding_dim=config.model.embedding_dim,
        normalize=config.model.normalize,
        in_channels=c,
        image_size=[h, w],
        mean=list(preset.mean) if c == 3 else [preset.mean[0]] * c,
        std=list(preset.std) if c == 3 else [preset.std[0]] * c,
    )
    return Embedder(spec)


SCHEDULES = ("cosine", "constant")


def check_schedule(schedule: str) -> str:
    """A known learning-rate schedule name, else a ConfigError naming optim.schedule."""
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"optim.schedule: unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}"
        )
    return schedule


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: "cosine" decays to 0 over the run, "constant" keeps it."""
    if check_schedule(schedule) == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps))),
    )


def cap_per_class(dataset: data.Dataset, per_class: int, seed: int) -> data.Dataset:
    """At most `per_class` images of each class (seeded choice); 0 keeps everything."""
    if per_class <= 0:
        return dataset
    rng = np.random.default_rng(seed)
    keep = [
        rng.permutation(np.flatnonzero(dataset.labels == c))[:per_class]
        for c in np.unique(dataset.labels)
    ]
    return dataset.subset(np.sort(np.concatenate(keep)))


@dataclass
class Splits:
    """The datasets of a run: train, validation (or None), and the test query/gallery sets."""

    train: data.Dataset
    val: data.Dataset | None
    query: data.Dataset
    gallery: data.Dataset | None  # None: leave-one-out on `query`


def open_split(config: RunConfig, split: str, train: bool = False) -> data.Dataset:
    """One split of the configured dataset, with the training or evaluation transform."""
    d = config.data
    return data.open(
        d.name,
        d.root,
        split,
        d.eval_per_source,
        config.train.seed,
        transform=d.transform,
        augment=train,
        on_error=d.on_error,
        scan=d.scan,
        max_image_pixels=d.max_image_pixels,
    )


def open_splits(config: RunConfig) -> Splits:
    """The run's datasets. Validation classes are carved from the training classes
    (data.val_classes > 0), so checkpoints are chosen without ever seeing the test classes."""
    d = config.data
    train_set = open_split(config, "train", train=True)
    val_set = None
    if d.val_classes > 0:
        train_set, val_set = data.validation_split(train_set, d.val_classes, config.train.seed)
        if isinstance(val_set, data.ImageFileDataset):  # evaluate without augmentation
            val_set = val_set.with_transform(data.build_transforms(d.transform, train=False))
        val_set = cap_per_class(val_set, d.val_per_class, config.train.seed)
    query_split, gallery_split = data.eval_splits(d.name)
    query = open_split(config, query_split)
    gallery = open_split(config, gallery_split) if gallery_split else None
    return Splits(
        cap_per_class(train_set, d.train_per_class, config.train.seed), val_set, query, gallery
    )


def evaluate_embeddings(
    query: Embeddings, gallery: Embeddings | None, config: RunConfig
) -> dict[str, Any]:
    """The configured metrics: query vs gallery, or leave-one-out on the query set."""
    return evaluate(
        query.vectors,
        query.labels,
        None if gallery is None else gallery.vectors,
        None if gallery is None else gallery.labels,
        metrics=tuple(config.eval.metrics),
        distance=config.eval.distance,
    )


def make_sampler(config: RunConfig, train_set: data.Dataset) -> data.PKSampler:
    """P x K batches over the training set (within super-classes when configured)."""
    s = config.sampler
    if s.super_classes_per_batch > 0:
        super_labels = getattr(train_set, "super_labels", None)
        if super_labels is None:
            raise ConfigError(
                f"sampler.super_classes_per_batch needs super-class labels; "
                f"dataset {config.data.name!r} has none"
            )
        return data.HierarchicalPKSampler(
            train_set.labels,
            super_labels,
            s.classes_per_batch,
            s.images_per_class,
            s.super_classes_per_batch,
            config.train.seed,
            s.small_classes,
        )
    return data.PKSampler(
        train_set.labels,
        s.classes_per_batch,
        s.images_per_class,
        config.train.seed,
        s.small_classes,
    )


def make_optimizer(config: RunConfig, model: torch.nn.Module, loss_fn: MetricLoss) -> Adam:
    """Adam over the model and, at their own learning rate optim.loss_lr, the loss's learned
    parameters (proxies, class weights, margin beta)."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    learned = [p for p in loss_fn.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": config.optim.loss_lr, "weight_decay": 0.0})
    return Adam(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay)


@dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written."""

    splits: Splits
    model: Embedder
    class_index: torch.Tensor  # (C,) sorted dataset labels of the training classes
    loss_fn: MetricLoss
    miner: Miner | None
    sampler: data.PKSampler
    device: torch.device


def check_names(config: RunConfig) -> None:
    """The names other modules resolve late (metrics, distance, transform, schedule), now."""
    check_schedule(config.optim.schedule)
    try:
        parse_metrics(config.eval.metrics)
    except UserError as exc:
        raise ConfigError(f"eval.metrics: {exc}") from exc
    if config.eval.distance not in KNN_DISTANCES:
        raise ConfigError(
            f"eval.distance: unknown distance {config.eval.distance!r}; "
            f"known: {', '.join(KNN_DISTANCES)}"
        )
    if config.data.transform not in PRESETS:
        raise ConfigError(
            f"data.transform: unknown preset {config.data.transform!r}; known: {', '.join(PRESETS)}"
        )
    if config.data.val_classes > 0 and config.train.select not in config.eval.metrics:
        raise ConfigError(
            f"train.select={config.train.select!r} must be one of eval.metrics "
            f"({', '.join(config.eval.metrics)})"
        )


def prepare(config: RunConfig) -> Prepared:
    """Validate the config and open, build and check every part of the run, writing nothing."""
    check_names(config)
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    splits = open_splits(config)
    try:
        model = build_model(config, splits.train.image_shape).to(device)
    except (TypeError, ValueError) as exc:  # the backbone refused its parameters
        raise ConfigError(f"model.backbone_params: {exc}") from exc
    # dataset labels -> contiguous class indices 0..C-1 (class-parameter losses index by them)
    class_index = torch.as_tensor(np.unique(splits.train.labels), device=device)
    loss_fn, miner = build_objective(config, len(class_index), config.model.embedding_dim)
    sampler = make_sampler(config, splits.train)
    return Prepared(splits, model, class_index, loss_fn.to(device), miner, sampler, device)


def train(config: RunConfig, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train, select the checkpoint, evaluate on the test classes; all lands in config.run_dir.

    Every input is checked before anything is written. The run is written to a hidden
    directory beside `config.run_dir` that replaces it only when the run has finished, so a
    failed or interrupted run leaves an existing run directory as it was.
    """
    run_dir = config.run_dir
    check_run_dir(run_dir, overwrite)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    ready = prepare(config)
    with atomic_dir(run_dir) as stage:
        save_config(config, stage / "config.yaml")
        skip_log = attach_skip_log(ready.splits, stage / "skipped.txt")
        skips = SkipReporter(skip_log, run_dir / "skipped.txt")
        result = fit(config, ready, stage, skips, progress)
    return dataclasses.replace(result, run_dir=run_dir, model_dir=run_dir / "model")


def fit(
    config: RunConfig, ready: Prepared, run_dir: Path, skips: SkipReporter, progress: bool
) -> TrainResult:
    """The training loop and the final test, writing into `run_dir`."""
    splits, model, device = ready.splits, ready.model, ready.device
    train_set, val_set = splits.train, splits.val
    loss_fn, miner, sampler, class_index = (
        ready.loss_fn,
        ready.miner,
        ready.sampler,
        ready.class_index,
    )
    optimizer = make_optimizer(config, model, loss_fn)
    loader = DataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.num_workers
    )
    augment = batch_augmentation(config.data.transform, config.data.augment).to(device)
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
            val_set if val_set is not None else splits.query,
            monitor_key,
            metric_names,
            config.eval.distance,
            config.eval.batch_size,
            config.train.eval_every,
            progress,
            gallery=None if val_set is not None else splits.gallery,
        ),
        checkpoint,
    ]

    history: list[dict[str, Any]] = []
    history_path = run_dir / "history.jsonl"
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
        skips.report()
        state = TrainState(model, epoch + 1, config.train.epochs, run_dir)
        state.record.update(
            epoch=epoch + 1,
            loss=total_loss / max(1, steps_per_epoch),
            train_images_per_s=seen / (time.perf_counter() - start),
        )
        for callback in callbacks:
            callback.on_epoch_end(state)
        skips.report()
        history.append(state.record)
        with history_path.open("a") as f:
            f.write(json.dumps(state.record) + "\n")

    # the kept checkpoint (best on validation, or the last epoch) is what gets tested
    model_dir = run_dir / "model"
    kept = Embedder.load(model_dir, device)
    query = embed(kept, splits.query, config.eval.batch_size, progress=progress)
    query.save(run_dir / "embeddings" / "test.npz")
    gallery = None
    if splits.gallery is not None:
        gallery = embed(kept, splits.gallery, config.eval.batch_size, progress=progress)
        gallery.save(run_dir / "embeddings" / "gallery.npz")
    skips.report()
    metrics = evaluate_embeddings(query, gallery, config)
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
