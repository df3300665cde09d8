"""`deepembed.train(config)`: a whole run from a config, a thin pipeline over the Trainer.

check and build everything -> write the run to `.<name>.partial` -> decode images once ->
(frozen-stage bank) -> Trainer.fit with evaluation, selection, logging and checkpoints ->
test the kept model on the unseen classes -> metrics.json -> rename to `<name>`.

Under torchrun every rank runs this; rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepembed import data
from deepembed.config import RunConfig, save_config
from deepembed.data.labels import is_multi_label
from deepembed.data.transforms import train_augmentation
from deepembed.errors import ConfigError
from deepembed.evaluation import hashing_curves
from deepembed.inference import Embeddings, evaluate_embeddings, evaluate_model
from deepembed.io import write_json
from deepembed.models.embedder import Embedder
from deepembed.training.build import (
    Splits,
    adapt_splits,
    build_model,
    check_names,
    has_validation,
    make_optimizer,
    make_sampler,
    make_scheduler,
    open_splits,
    seed_everything,
)
from deepembed.training.callbacks import (
    BestCheckpoint,
    Callback,
    EarlyStopping,
    EvaluateCallback,
    HashScale,
    HeadWarmup,
    LRWarmup,
)
from deepembed.training.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_paths,
    load_checkpoint,
)
from deepembed.training.distributed import Strategy, check_world_size, strategy_from_env
from deepembed.training.frozen import frozen_bank
from deepembed.training.logs import MetricsLogger, TensorBoardLogger
from deepembed.training.objective import MetricObjective, build_objective, check_multi_label
from deepembed.training.results import (
    baseline_metrics,
    check_baselines,
    split_sizes,
    write_run_report,
)
from deepembed.training.rundir import (
    SkipReporter,
    attach_skip_log,
    check_resumable,
    check_run_dir,
    finish_run,
    partial_dir,
    resume_dir,
)
from deepembed.training.trainer import Trainer, autocast_dtype
from deepembed.viz.hashing import plot_hashing_curves

__all__ = ["Prepared", "TrainResult", "prepare", "train"]


@dataclass
class TrainResult:
    """What a run produced: its directory, the saved model and the last evaluation."""

    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written."""

    splits: Splits
    model: Embedder
    objective: MetricObjective
    sampler: data.PKSampler
    strategy: Strategy
    timings: dict[str, float] = field(default_factory=dict)  # seconds, to metrics.json


def prepare(config: RunConfig, strategy: Strategy | None = None) -> Prepared:
    """Validate the config and open, build and check every part of the run, writing nothing."""
    check_names(config)
    strategy = strategy or Strategy(_device(config))
    autocast_dtype(config.train.amp, strategy.device)
    if config.train.early_stopping and not has_validation(config):
        raise ConfigError(
            "train.early_stopping needs a validation split (data.val_classes > 0, or "
            "data.hash_val_per_class > 0 under data.protocol=hashing): stopping on the test "
            "queries would tune the run on them"
        )
    seed_everything(config.train.seed)
    splits = open_splits(config)
    if is_multi_label(splits.train):
        check_multi_label(config)
    model = build_model(config, splits.train).to(strategy.device)
    check_baselines(config, model)
    if strategy.world_size > 1:  # the batches of one epoch, before rounding up for ranks
        check_world_size(len(make_sampler(config, splits.train)), strategy.world_size)
    sampler = make_sampler(config, splits.train, strategy.rank, strategy.world_size)
    # dataset labels -> contiguous class indices 0..C-1 (class-parameter losses index by them);
    # a multi-label matrix's columns are its classes already
    labels = np.asarray(splits.train.labels)
    if labels.ndim == 2:
        class_index = torch.arange(labels.shape[1], device=strategy.device)
    else:
        class_index = torch.as_tensor(np.unique(labels), device=strategy.device)
    loss_fn, miner = build_objective(
        config, len(class_index), model.embedding_dim, total_steps(config, sampler)
    )
    objective = MetricObjective(loss_fn, miner, class_index).to(strategy.device)
    return Prepared(splits, model, objective, sampler, strategy)


def total_steps(config: RunConfig, sampler: data.PKSampler) -> int:
    """Optimisation steps of the whole run (train.max_steps caps each epoch)."""
    per_epoch = len(sampler)
    if config.train.max_steps > 0:
        per_epoch = min(per_epoch, config.train.max_steps)
    return per_epoch * config.train.epochs


def _device(config: RunConfig) -> torch.device:
    from deepembed.training.build import resolve_device

    return resolve_device(config.train.device)


def train(
    config: RunConfig,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train, select the checkpoint, test on the unseen classes; all lands in config.run_dir.

    Every input is checked before anything is written. The run is written to
    `<output_dir>/.<name>.partial`, which replaces `config.run_dir` only when the run has
    finished, so a failed run leaves an existing run directory as it was. An interrupted
    run keeps its partial directory and checkpoints: `resume=True` (or
    train.resume=RUN_DIR) continues it exactly.
    `callbacks` are added after the run's own.
    """
    if config.train.resume:  # train.resume=RUN_DIR in a config: as --resume RUN_DIR
        config, resume = check_resumable(Path(config.train.resume), config), True
    run_dir, stage = config.run_dir, partial_dir(config.run_dir)
    strategy = strategy_from_env(config.train.device)
    checkpoint = None
    if resume:
        checkpoint, path, notes = load_checkpoint(resume_dir(run_dir))
        for note in notes if strategy.is_main else []:
            tqdm.write(note)
        if strategy.is_main and progress:
            tqdm.write(f"resuming {run_dir} from {path.name}")
    else:
        check_run_dir(run_dir, overwrite)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    ready = prepare(config, strategy)
    strategy.barrier()  # every rank has checked the run directory before rank 0 writes one
    if not resume and strategy.is_main:
        shutil.rmtree(stage, ignore_errors=True)  # --overwrite of an interrupted run
    if strategy.is_main:
        stage.mkdir(parents=True, exist_ok=True)
        save_config(config, stage / "config.yaml")
    strategy.barrier()
    try:
        result = _run(config, ready, stage, checkpoint, progress, callbacks)
    except BaseException:
        if strategy.is_main and not checkpoint_paths(stage):
            shutil.rmtree(stage, ignore_errors=True)  # nothing to resume from
        elif strategy.is_main:
            tqdm.write(f"the run can continue: deepembed train --resume {run_dir}")
        raise
    if strategy.is_main:
        shutil.rmtree(stage / CHECKPOINT_DIR, ignore_errors=True)
        finish_run(stage, run_dir)
    strategy.barrier()
    return dataclasses.replace(result, run_dir=run_dir, model_dir=run_dir / "model")


def _adapt(ready: Prepared, config: RunConfig, stage: Path, progress: bool) -> Prepared:
    """Decode image files (once, into the cache; rank 0 first, the others then read it)."""
    strategy = ready.strategy
    skip_log = attach_skip_log(ready.splits, stage / "skipped.txt")
    skips = SkipReporter(skip_log, config.run_dir / "skipped.txt")
    start = time.perf_counter()
    if not strategy.is_main:
        strategy.barrier()
    splits = adapt_splits(
        ready.splits, ready.model.preprocessing, config, progress and strategy.is_main
    )
    if strategy.is_main:
        strategy.barrier()
    # unreadable files may have been dropped while caching: sample what is left
    sampler = make_sampler(config, splits.train, strategy.rank, strategy.world_size)
    ready = dataclasses.replace(ready, splits=splits, sampler=sampler)
    ready.timings["decode_s"] = time.perf_counter() - start
    if strategy.is_main:
        skips.report()
    return ready


def _run(
    config: RunConfig,
    ready: Prepared,
    stage: Path,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    extra: Sequence[Callback],
) -> TrainResult:
    """Decode, train and test into `stage`."""
    ready = _adapt(ready, config, stage, progress)
    splits, model, strategy, timings = ready.splits, ready.model, ready.strategy, ready.timings
    show = progress and strategy.is_main
    bank_start = time.perf_counter()
    frozen_at, bank = frozen_bank(config, model, splits.train, stage, show, strategy.is_main)
    timings["frozen_bank_s"] = time.perf_counter() - bank_start
    optimizer = make_optimizer(config, model, ready.objective)
    scheduler = make_scheduler(optimizer, config.optim.schedule, total_steps(config, ready.sampler))
    # in-memory small images: random affine on the whole batch; image files are augmented
    # per item (random resized crop + flip) by their dataset
    tensors = isinstance(splits.train, data.TensorImageDataset)
    augment = train_augmentation(config.data.augment and tensors) if bank is None else None
    val = splits.val
    key = "val" if val is not None else "test"
    evaluator = EvaluateCallback(
        val if val is not None else splits.query,
        key,
        tuple(config.eval.metrics),
        config.eval.distance,
        config.eval.batch_size,
        config.train.eval_every,
        show,
        gallery=None if val is not None else splits.gallery,
    )
    keeper = BestCheckpoint(
        stage / "model", "val" if val is not None else None, config.train.select
    )
    callbacks: list[Callback] = [
        HeadWarmup(config.train.warmup_epochs, config.model.freeze_stages, config.model.freeze_bn),
        evaluator,
        keeper,
    ]
    if config.train.early_stopping:
        callbacks.append(EarlyStopping("val", config.train.select, config.train.early_stopping))
    if config.optim.warmup_steps:
        callbacks.append(LRWarmup(config.optim.warmup_steps))
    if config.loss.name == "hashnet" and model.produces_codes:
        callbacks.append(HashScale())
    callbacks.append(MetricsLogger(stage))
    if TensorBoardLogger.available():
        callbacks.append(TensorBoardLogger(stage / "tensorboard"))
    channels_last = config.train.channels_last is True or (
        config.train.channels_last == "auto" and model.prefers_channels_last
    )
    trainer = Trainer(
        model,
        ready.objective,
        bank or splits.train,
        ready.sampler,
        optimizer,
        scheduler,
        epochs=config.train.epochs,
        max_steps=config.train.max_steps,
        seed=config.train.seed,
        callbacks=[*callbacks, *extra],
        strategy=strategy,
        amp=config.train.amp,
        channels_last=channels_last,
        num_workers=0 if bank is not None else config.data.num_workers,
        frozen_at=frozen_at,
        augment=augment,
        run_dir=stage,
        checkpoint_every=config.train.checkpoint_every,
        keep_checkpoints=config.train.keep_checkpoints,
        progress=progress,
    )
    history = trainer.fit(checkpoint)
    timings["epochs_s"] = trainer.train_seconds
    return _final_test(config, ready, stage, evaluator, keeper, history, show)


def _final_test(
    config: RunConfig,
    ready: Prepared,
    stage: Path,
    evaluator: EvaluateCallback,
    keeper: BestCheckpoint,
    history: list[dict[str, Any]],
    progress: bool,
) -> TrainResult:
    """Test the kept model (best on validation, or the last epoch's) on the unseen classes.
    When the test set was just embedded by that very model, those embeddings are reused."""
    splits, strategy, timings = ready.splits, ready.strategy, ready.timings
    start = time.perf_counter()
    model_dir = stage / "model"
    latest = evaluator.latest if splits.val is None else None
    query: Embeddings
    gallery: Embeddings | None
    if latest is not None and latest[0] == keeper.best_epoch:
        _, query, gallery = latest
        # rank 0 evaluates and the other ranks take its metrics, as in evaluate_model
        metrics = strategy.broadcast_object(
            evaluate_embeddings(query, gallery, tuple(config.eval.metrics), config.eval.distance)
            if strategy.is_main
            else None
        )
    else:
        strategy.barrier()  # rank 0 has written the model
        kept = Embedder.load(model_dir, strategy.device)
        metrics, query, gallery = evaluate_model(
            kept,
            splits.query,
            splits.gallery,
            tuple(config.eval.metrics),
            config.eval.distance,
            config.eval.batch_size,
            progress,
            strategy,
        )
    summary = {
        **metrics,
        "dataset": config.data.name,
        "split": "test",
        "selected_epoch": keeper.best_epoch,
        "selection": keeper.selection,
        "epochs_trained": len(history),
        "world_size": strategy.world_size,
        "timings": {**timings, "final_test_s": time.perf_counter() - start},
    }
    if splits.val is not None:
        summary["validation"] = history[keeper.best_epoch - 1]["val"]
    summary["split_sizes"] = split_sizes(splits)
    if config.eval.baselines and strategy.is_main:
        base_start = time.perf_counter()
        summary["baselines"] = baseline_metrics(
            config, ready.model, splits.query, splits.gallery, progress
        )
        summary["timings"]["baselines_s"] = time.perf_counter() - base_start
    if strategy.is_main:
        query.save(stage / "embeddings" / "test.npz")
        if gallery is not None:
            gallery.save(stage / "embeddings" / "gallery.npz")
        if query.codes is not None:  # a hash model: the literature's curves and their plot
            ref = gallery if gallery is not None else None
            curves = hashing_curves(
                query.codes,
                query.labels,
                None if ref is None else ref.codes,
                None if ref is None else ref.labels,
            )
            summary["hashing_curves"] = curves
            plot_hashing_curves(curves, stage / "hashing_curves.png")
        write_json(stage / "metrics.json", summary)
        if config.eval.report:
            write_run_report(stage, progress)
    return TrainResult(stage, model_dir, summary, history)
