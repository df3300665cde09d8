"""batch -> embed -> mine -> loss -> step, with evaluation on the unseen classes per epoch."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepembed import data
from deepembed.config import RunConfig, save_config
from deepembed.data.datasets import collate
from deepembed.data.transforms import train_augmentation
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.io import atomic_dir, write_json
from deepembed.losses import MetricLoss
from deepembed.miners import Miner
from deepembed.models.embedder import Embedder
from deepembed.training.build import (
    Splits,
    adapt_splits,
    build_model,
    check_names,
    make_optimizer,
    make_sampler,
    make_scheduler,
    open_splits,
    resolve_device,
    seed_everything,
)
from deepembed.training.callbacks import BestCheckpoint, Callback, EvaluateCallback, TrainState
from deepembed.training.frozen import FeatureBank, bank_bytes, build_bank
from deepembed.training.objective import build_objective
from deepembed.training.rundir import SkipReporter, attach_skip_log, check_run_dir

__all__ = ["Prepared", "TrainResult", "build_model", "evaluate_embeddings", "prepare", "train"]


@dataclass
class TrainResult:
    """What a run produced: its directory, the saved model and the last evaluation."""

    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds, to metrics.json


def prepare(config: RunConfig) -> Prepared:
    """Validate the config and open, build and check every part of the run, writing nothing."""
    check_names(config)
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    splits = open_splits(config)
    model = build_model(config, splits.train).to(device)
    # dataset labels -> contiguous class indices 0..C-1 (class-parameter losses index by them)
    class_index = torch.as_tensor(np.unique(splits.train.labels), device=device)
    loss_fn, miner = build_objective(config, len(class_index), model.embedding_dim)
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
        # image files are decoded (once, into the cache) only now: skips land in the log
        start = time.perf_counter()
        splits = adapt_splits(ready.splits, ready.model.preprocessing, config, progress)
        # unreadable files may have been dropped while caching: sample what is left
        ready = dataclasses.replace(
            ready, splits=splits, sampler=make_sampler(config, splits.train)
        )
        ready.timings["decode_s"] = time.perf_counter() - start
        skips.report()
        result = fit(config, ready, stage, skips, progress)
    return dataclasses.replace(result, run_dir=run_dir, model_dir=run_dir / "model")


def frozen_bank(
    config: RunConfig, model: Embedder, train_set: Any, run_dir: Path, progress: bool
) -> tuple[int, FeatureBank | None]:
    """(stage, bank) when train.frozen_views asks for one and the model allows it, else
    (0, None): the frozen first stages are then recomputed every step."""
    stage, views = config.model.freeze_stages, config.train.frozen_views
    if views <= 0 or stage <= 0:
        return 0, None
    if not model.backbone.splittable:
        tqdm.write(
            f"train.frozen_views: {config.model.backbone} cannot be split between stages; "
            "its frozen stages are recomputed each step"
        )
        return 0, None
    size = bank_bytes(model, stage, len(train_set), views)
    if size > config.data.max_cache_gb * 2**30:
        tqdm.write(
            f"train.frozen_views: the bank would take {size / 2**30:.1f} GB > data.max_cache_gb; "
            "frozen stages are recomputed each step"
        )
        return 0, None
    bank = build_bank(
        model,
        stage,
        train_set,
        views,
        run_dir,
        config.train.seed,
        workers=config.data.num_workers,
        progress=progress,
    )
    return stage, bank


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
    channels_last = config.train.channels_last is True or (
        config.train.channels_last == "auto" and model.prefers_channels_last
    )
    if channels_last:
        model.to(memory_format=torch.channels_last)
    timings = ready.timings
    bank_start = time.perf_counter()
    frozen_at, bank = frozen_bank(config, model, train_set, run_dir, progress)
    timings["frozen_bank_s"] = time.perf_counter() - bank_start
    loader = DataLoader(
        bank or train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=0 if bank else config.data.num_workers,
    )
    # in-memory small images: random affine on the whole batch; image files are augmented
    # per item (random resized crop + flip) by their dataset
    augment = train_augmentation(
        config.data.augment and isinstance(train_set, data.TensorImageDataset)
    ).to(device)
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
    evaluator = EvaluateCallback(
        val_set if val_set is not None else splits.query,
        monitor_key,
        metric_names,
        config.eval.distance,
        config.eval.batch_size,
        config.train.eval_every,
        progress,
        gallery=None if val_set is not None else splits.gallery,
    )
    callbacks: list[Callback] = [evaluator, checkpoint]

    history: list[dict[str, Any]] = []
    history_path = run_dir / "history.jsonl"
    mc = config.model
    for epoch in range(config.train.epochs):
        sampler.set_epoch(epoch)
        if epoch < config.train.warmup_epochs:  # head-only warm-up: the backbone as loaded
            model.freeze(len(model.backbone.stages()), bn=True)
        elif epoch == config.train.warmup_epochs:
            model.freeze(mc.freeze_stages, mc.freeze_bn)
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
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = torch.searchsorted(class_index, labels.to(device))  # (B,) in 0..C-1
            with torch.autocast(device.type, enabled=use_amp):
                if bank is not None:  # images are the frozen stages' output
                    embeddings = model.forward_from(images, frozen_at)  # (B, D)
                else:
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

    timings["epochs_s"] = time.perf_counter() - bank_start - timings["frozen_bank_s"]
    test_start = time.perf_counter()
    # the kept checkpoint (best on validation, or the last epoch) is what gets tested; when
    # the test set was just embedded with that very model, those embeddings are reused
    model_dir = run_dir / "model"
    latest = evaluator.latest if val_set is None else None
    if latest is not None and latest[0] == checkpoint.best_epoch:
        _, query, gallery = latest
    else:
        kept = Embedder.load(model_dir, device)
        query = embed(kept, splits.query, config.eval.batch_size, progress=progress)
        gallery = None
        if splits.gallery is not None:
            gallery = embed(kept, splits.gallery, config.eval.batch_size, progress=progress)
    query.save(run_dir / "embeddings" / "test.npz")
    if gallery is not None:
        gallery.save(run_dir / "embeddings" / "gallery.npz")
    skips.report()
    metrics = evaluate_embeddings(query, gallery, config)
    summary = {
        **metrics,
        "dataset": config.data.name,
        "split": "test",
        "selected_epoch": checkpoint.best_epoch,
        "selection": checkpoint.selection,
        "timings": {**timings, "final_test_s": time.perf_counter() - test_start},
    }
    if val_set is not None:
        summary["validation"] = history[checkpoint.best_epoch - 1]["val"]
    write_json(run_dir / "metrics.json", summary)
    return TrainResult(run_dir, model_dir, summary, history)
