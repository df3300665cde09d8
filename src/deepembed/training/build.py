"""Building a run from its config: device, datasets, model, sampler, optimizer, schedule.

Nothing here writes a file; `trainer.prepare` calls these before a run directory exists.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.optim import Adam

from deepembed import data, losses
from deepembed.config import RunConfig
from deepembed.data.adapt import Loading, for_model
from deepembed.data.labels import is_multi_label, require_class_ids
from deepembed.data.preprocess import Preprocess
from deepembed.data.splits import per_class_holdout
from deepembed.errors import ConfigError, DataError, UserError
from deepembed.evaluation import parse_metrics
from deepembed.evaluation.knn import KNN_DISTANCES
from deepembed.models.backbones import BACKBONES
from deepembed.models.embedder import Embedder, EmbedderSpec


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


def build_model(config: RunConfig, train_set: Any) -> Embedder:
    """The Embedder a config describes. Backbones that follow the data (small_cnn) take the
    training images' channels and, for in-memory datasets, their size; pretrained ones keep
    their own input (model.image_size rescales it)."""
    mc = config.model
    spec = EmbedderSpec(
        backbone=mc.backbone,
        backbone_params=dict(mc.backbone_params),
        pretrained=mc.pretrained,
        pool=mc.pool,
        pool_params=dict(mc.pool_params),
        embedding_dim=mc.embedding_dim,
        head_bn=mc.head_bn,
        head_init=mc.head_init,
        normalize=mc.normalize,
        image_size=mc.image_size,
        center_crop=mc.center_crop,
        head=mc.head,
        bits=mc.bits if mc.head == "hash" else 0,
        # losses that binarise the codes themselves (GreedyHash) take the head's raw output
        hash_activation=getattr(losses.LOSSES.get(config.loss.name), "hash_activation", "tanh"),
    )
    if getattr(BACKBONES.get(mc.backbone), "follows_data", False):
        if isinstance(train_set, data.TensorImageDataset):
            c, h, _ = train_set.image_shape
            spec.in_channels = c
            spec.image_size = mc.image_size or h
        else:  # image files: RGB at 32 px unless model.image_size says otherwise
            spec.in_channels, spec.image_size = 3, mc.image_size or 32
    model = Embedder(spec)
    model.check_input()
    model.freeze(mc.freeze_stages, mc.freeze_bn)
    return model


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


def open_split(config: RunConfig, split: str) -> data.Dataset:
    """One split of the configured dataset as stored (image files are not decoded yet)."""
    d = config.data
    return data.open(
        d.name,
        d.root,
        split,
        d.eval_per_source,
        config.train.seed,
        transform=None,
        on_error=d.on_error,
        scan=d.scan,
        max_image_pixels=d.max_image_pixels,
    )


def open_hashing_splits(config: RunConfig) -> Splits:
    """data.protocol=hashing: the dataset's own train/query/database splits where it has
    them (cifar*_hash*, a CSV whose split column says train/query/database; validation: the
    CSV's val rows, else data.hash_val_per_class per class of train), else the seen-class
    protocol drawn from all its items (`data.splits.hashing_split`)."""
    d, seed = config.data, config.train.seed
    if data.eval_splits(d.name) == ("query", "database") or _has_split(config, "database"):
        train, query, database = (open_split(config, s) for s in ("train", "query", "database"))
        val = None
        if d.name == "csv" and _has_split(config, "val"):  # a CSV's own validation rows
            val = open_split(config, "val")
        elif d.hash_val_per_class:
            require_class_ids(train, "data.hash_val_per_class")
            train, val = per_class_holdout(train, d.hash_val_per_class, seed)
        return Splits(train, val, query, database)
    everything = open_split(config, "all")
    require_class_ids(everything, "data.protocol=hashing without query/database splits")
    parts = data.hashing_split(
        everything,
        d.hash_query_per_class,
        d.hash_train_per_class,
        d.hash_val_per_class,
        seed,
    )
    val = parts["val"] if d.hash_val_per_class else None
    database = cap_per_class(parts["database"], d.hash_database_per_class, seed)
    return Splits(parts["train"], val, parts["query"], database)


def _has_split(config: RunConfig, split: str) -> bool:
    """Whether the configured dataset has a split of that name (a CSV's split column)."""
    try:
        open_split(config, split)
    except DataError:
        return False
    return True


def open_splits(config: RunConfig) -> Splits:
    """The run's datasets as stored. Validation classes are carved from the training classes
    (data.val_classes > 0), so checkpoints are chosen without ever seeing the test classes."""
    d = config.data
    if d.protocol == "hashing":
        return open_hashing_splits(config)
    train_set = open_split(config, "train")
    val_set = None
    for key, value in (
        ("data.val_classes", d.val_classes),
        ("data.train_per_class", d.train_per_class),
    ):
        if value > 0:
            require_class_ids(train_set, key)
    if d.val_classes > 0:
        train_set, val_set = data.validation_split(train_set, d.val_classes, config.train.seed)
        val_set = cap_per_class(val_set, d.val_per_class, config.train.seed)
    query, gallery = open_eval_splits(config)
    return Splits(
        cap_per_class(train_set, d.train_per_class, config.train.seed), val_set, query, gallery
    )


def open_eval_splits(config: RunConfig) -> tuple[data.Dataset, data.Dataset | None]:
    """The run's test queries and gallery (None: leave-one-out on the queries) as stored:
    the items, in order and with the ids, of its embeddings/test.npz and gallery.npz."""
    if config.data.protocol == "hashing":
        splits = open_hashing_splits(config)
        return splits.query, splits.gallery
    query_split, gallery_split = data.eval_splits(config.data.name)
    query = open_split(config, query_split)
    return query, open_split(config, gallery_split) if gallery_split else None


def loading(config: RunConfig, progress: bool) -> Loading:
    """How the run reads image files (data.cache, data.num_workers ...)."""
    d = config.data
    return Loading(d.cache, d.cache_dir, d.max_cache_gb, d.num_workers, d.crop_scale, progress)


def adapt_splits(
    splits: Splits, preprocess: Preprocess, config: RunConfig, progress: bool
) -> Splits:
    """Every split as the model takes it: training images augmented (data.augment),
    validation and test images through the model's evaluation transform."""
    how = loading(config, progress)
    train = for_model(splits.train, preprocess, True, config.data.augment, how)
    val, query, gallery = (
        None if d is None else for_model(d, preprocess, loading=how)
        for d in (splits.val, splits.query, splits.gallery)
    )
    return Splits(train, val, query, gallery)


def make_sampler(
    config: RunConfig, train_set: data.Dataset, rank: int = 0, world_size: int = 1
) -> data.PKSampler | data.RandomBatchSampler:
    """P x K batches over the training set (within super-classes when configured), or
    shuffled batches of P x K images (sampler.kind=random, the one for multi-label data); in
    a distributed run, this rank's share of every epoch's batches."""
    s = config.sampler
    if s.kind == "random":
        size = s.classes_per_batch * s.images_per_class
        return data.RandomBatchSampler(len(train_set), size, config.train.seed, rank, world_size)
    if is_multi_label(train_set):
        raise ConfigError(
            "sampler.kind='pk' draws P classes x K images, but the training set has multi-label "
            "rows: use sampler.kind=random (shuffled batches of P x K images)"
        )
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
            rank,
            world_size,
        )
    return data.PKSampler(
        train_set.labels,
        s.classes_per_batch,
        s.images_per_class,
        config.train.seed,
        s.small_classes,
        rank,
        world_size,
    )


def make_optimizer(config: RunConfig, model: Embedder, loss_fn: torch.nn.Module) -> Adam:
    """Adam over the head and pooling at optim.lr, the backbone at lr * backbone_lr_mult,
    and the loss's learned parameters (proxies, class weights, margin beta) at optim.loss_lr.

    Frozen parameters are left out; warm-up epochs freeze the backbone by requires_grad, so
    every backbone parameter that may train later is in its group from the start."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    frozen_ids = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in frozen_ids]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if backbone and config.optim.backbone_lr_mult > 0:
        groups.append({"params": backbone, "lr": config.optim.lr * config.optim.backbone_lr_mult})
    learned = [p for p in loss_fn.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": config.optim.loss_lr, "weight_decay": 0.0})
    return Adam(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay)


def check_names(config: RunConfig) -> None:
    """The names other modules resolve late (metrics, distance, schedule), now."""
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
    if has_validation(config) and config.train.select not in config.eval.metrics:
        raise ConfigError(
            f"train.select={config.train.select!r} must be one of eval.metrics "
            f"({', '.join(config.eval.metrics)})"
        )


def has_validation(config: RunConfig) -> bool:
    """Whether the run holds out a validation split (classes, or hashing items per class)."""
    d = config.data
    return d.val_classes > 0 or (d.protocol == "hashing" and d.hash_val_per_class > 0)
