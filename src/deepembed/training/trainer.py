"""batch -> embed -> mine -> loss -> step, with evaluation on the unseen classes per epoch."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from deepembed.models.embedder import Embedder, EmbedderSpec


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


def open_splits(config: RunConfig) -> tuple[TensorImageDataset, TensorImageDataset]:
    """(train, test) datasets of a run config."""
    d = config.data
    train_set = data.open(d.name, d.root, "train", d.eval_per_source, config.train.seed)
    test_set = data.open(d.name, d.root, "test", d.eval_per_source, config.train.seed)
    return cap_per_class(train_set, d.train_per_class, config.train.seed), test_set


def evaluate_embeddings(embeddings: Embeddings, config: RunConfig) -> dict[str, Any]:
    """The configured metrics, leave-one-out on the embedded test set."""
    return evaluate(
        embeddings.vectors,
        embeddings.labels,
        metrics=tuple(config.eval.metrics),
        distance=config.eval.distance,
    )


def train(config: RunConfig, progress: bool = True) -> TrainResult:
    """Train, evaluate and save; everything lands in config.run_dir."""
    if config.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {config.train.epochs}")
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    seed_everything(config.train.seed)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)

    train_set, test_set = open_splits(config)
    model = build_model(config, train_set.image_shape).to(device)
    loss_fn = losses.create(config.loss.name, **config.loss.params).to(device)
    miner = miners.create(config.miner.name, **config.miner.params) if config.miner.name else None
    params = list(model.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.Adam(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
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

    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    history_path = run_dir / "history.jsonl"
    history_path.unlink(missing_ok=True)
    steps_per_epoch = (
        len(sampler) if config.train.max_steps <= 0 else min(len(sampler), config.train.max_steps)
    )
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
            images, labels = images.to(device, non_blocking=True), labels.to(device)
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
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total_loss / max(1, steps_per_epoch),
            "train_images_per_s": seen / (time.perf_counter() - start),
        }
        last = epoch + 1 == config.train.epochs
        every = config.train.eval_every
        if last or (every > 0 and (epoch + 1) % every == 0):
            test_embeddings = embed(model, test_set, config.eval.batch_size, progress=progress)
            metrics = evaluate_embeddings(test_embeddings, config)
            record["eval"] = metrics
            if progress:
                shown = ", ".join(
                    f"{k} {v:.4f}"
                    for k, v in metrics.items()
                    if isinstance(v, float) and k in config.eval.metrics
                )
                tqdm.write(f"epoch {epoch + 1}: {shown}")
        history.append(record)
        with history_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    model_dir = model.save(run_dir / "model")
    test_embeddings.save(run_dir / "embeddings" / "test.npz")
    write_json(
        run_dir / "metrics.json",
        {**metrics, "dataset": config.data.name, "split": "test", "protocol": "leave-one-out"},
    )
    return TrainResult(run_dir, model_dir, metrics, history)
