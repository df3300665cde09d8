"""The config schema: each section a dataclass owning its defaults and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepembed.data.images import MAX_IMAGE_PIXELS, ON_ERROR
from deepembed.errors import ConfigError


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raise ConfigError "<key> must be <rule>, got <value>" unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


SAMPLER_KINDS = ("pk", "random")
BASELINES = ("raw_pixels", "pretrained")


@dataclass
class DataConfig:
    """Which dataset, where, and how much of it."""

    name: str = "mnist30"
    root: str = ""  # "" = the dataset's default locations
    eval_per_source: int = 5000  # mnist30: seeded sample of unseen-class images per source
    train_per_class: int = 0  # 0 = every training image; >0 caps each class (quick runs)
    augment: bool = True
    cache: bool = True  # image files: decode + resize once into a memory-mapped uint8 cache
    cache_dir: str = ""  # "" = $DEEPEMBED_CACHE/images or ~/.cache/deepembed/images
    max_cache_gb: float = 10.0  # larger caches are not built (images decoded per item)
    crop_scale: float = 0.3  # image files, augment: smallest area fraction of a random crop
    on_error: str = "fail"  # unreadable image files: fail | skip (summary + skipped.txt)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are refused (decompression bombs)
    scan: bool = False  # header-check every image file when the dataset opens
    num_workers: int = 0
    val_classes: float = 0.0  # fraction of training classes held out to choose the checkpoint
    val_per_class: int = 0  # >0 caps each validation class (cheaper per-epoch evaluation)
    # retrieval: the dataset's own protocol (class-disjoint, or query/gallery). hashing: the
    # seen-class protocol of the hashing literature, per class hash_query_per_class queries,
    # hash_train_per_class training and hash_val_per_class validation items, the rest the
    # database (datasets with their own query/database splits keep them)
    protocol: str = "retrieval"
    hash_query_per_class: int = 100
    hash_train_per_class: int = 500
    hash_val_per_class: int = 0
    hash_database_per_class: int = 0  # > 0 caps the database per class (quick runs)

    def __post_init__(self) -> None:
        require(self.eval_per_source >= 1, "data.eval_per_source", ">= 1", self.eval_per_source)
        require(self.train_per_class >= 0, "data.train_per_class", ">= 0", self.train_per_class)
        require(self.on_error in ON_ERROR, "data.on_error", " or ".join(ON_ERROR), self.on_error)
        require(self.max_image_pixels >= 1, "data.max_image_pixels", ">= 1", self.max_image_pixels)
        require(self.num_workers >= 0, "data.num_workers", ">= 0", self.num_workers)
        require(self.max_cache_gb >= 0, "data.max_cache_gb", ">= 0", self.max_cache_gb)
        require(0 < self.crop_scale <= 1, "data.crop_scale", "in (0, 1]", self.crop_scale)
        require(0.0 <= self.val_classes < 1.0, "data.val_classes", "in [0, 1)", self.val_classes)
        require(self.val_per_class >= 0, "data.val_per_class", ">= 0", self.val_per_class)
        protocols = ("retrieval", "hashing")
        require(self.protocol in protocols, "data.protocol", "retrieval or hashing", self.protocol)
        q, t, v = self.hash_query_per_class, self.hash_train_per_class, self.hash_val_per_class
        require(q >= 1, "data.hash_query_per_class", ">= 1", q)
        require(t >= 1, "data.hash_train_per_class", ">= 1", t)
        require(v >= 0, "data.hash_val_per_class", ">= 0", v)
        cap = self.hash_database_per_class
        require(cap >= 0, "data.hash_database_per_class", ">= 0 (0: the rest)", cap)


@dataclass
class SamplerConfig:
    """P classes x K images per batch ("pk"), or shuffled batches of P x K images without
    class structure ("random", for multi-label data)."""

    kind: str = "pk"  # pk | random
    classes_per_batch: int = 32
    images_per_class: int = 8
    small_classes: str = "repeat"  # classes with < K images: repeat (draw again) | drop
    super_classes_per_batch: int = 0  # > 0: draw a batch's classes within this many super-classes

    def __post_init__(self) -> None:
        p, k, supers = self.classes_per_batch, self.images_per_class, self.super_classes_per_batch
        require(self.kind in SAMPLER_KINDS, "sampler.kind", " or ".join(SAMPLER_KINDS), self.kind)
        require(p >= 2, "sampler.classes_per_batch", ">= 2", p)
        require(k >= 1, "sampler.images_per_class", ">= 1", k)
        require(supers >= 0, "sampler.super_classes_per_batch", ">= 0", supers)


@dataclass
class ModelConfig:
    """Backbone + pooling + embedding head, and what of them is trained."""

    backbone: str = "small_cnn"  # small_cnn | efficientnet_lite0 | timm/<arch> | torchvision/<arch>
    backbone_params: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | str | None = None  # None: the backbone's default; true | false | a file
    pool: str = ""  # "" = the backbone's default; avg | max | avgmax | gem | gridmax
    pool_params: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 128  # 0 = the pooled features themselves
    head: str = "embedding"  # embedding (float vectors) | hash (binary codes, model.bits)
    bits: int = 64  # hash head: code length, a multiple of 8
    head_bn: bool = False  # BatchNorm before the projection
    head_init: str = "random"  # random | identity (embedding_dim = the pooled size, no head_bn)
    normalize: bool = True
    image_size: int = 0  # 0 = the backbone's input size (small_cnn: the data's)
    center_crop: bool = True  # false: evaluation resizes the whole image, no centre crop
    freeze_stages: int = 0  # the first N backbone stages are not trained
    freeze_bn: bool = False  # BatchNorm statistics of the backbone stay as pretrained

    def __post_init__(self) -> None:
        require(self.embedding_dim >= 0, "model.embedding_dim", ">= 0", self.embedding_dim)
        require(self.image_size >= 0, "model.image_size", ">= 0", self.image_size)
        require(self.freeze_stages >= 0, "model.freeze_stages", ">= 0", self.freeze_stages)
        require(self.head in ("embedding", "hash"), "model.head", "embedding or hash", self.head)
        inits = ("random", "identity")
        require(self.head_init in inits, "model.head_init", "random or identity", self.head_init)
        bits_ok = self.bits >= 8 and self.bits % 8 == 0
        require(bits_ok, "model.bits", "a positive multiple of 8 (packed bytes)", self.bits)


@dataclass
class LossConfig:
    """A loss by registry name and its parameters (pytorch-metric-learning's names)."""

    name: str = "multi_similarity"
    params: dict[str, Any] = field(default_factory=dict)
    memory_size: int = 0  # > 0: cross-batch memory (XBM) of this many past embeddings
    # > 0: add weight * mean (|u| - 1)^2 to any loss on a hash head (Zhuang et al.'s triplet
    # binary embedding), ramped up linearly over the first quantization_ramp of the steps
    quantization_weight: float = 0.0
    quantization_ramp: float = 0.5  # fraction of the run's steps; 0 = constant weight

    def __post_init__(self) -> None:
        w, ramp = self.quantization_weight, self.quantization_ramp
        require(w >= 0, "loss.quantization_weight", ">= 0", w)
        require(0 <= ramp <= 1, "loss.quantization_ramp", "in [0, 1]", ramp)


@dataclass
class MinerConfig:
    """A miner by registry name; name "" trains on every pair/triplet of the batch."""

    name: str = "multi_similarity"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Adam with optional weight decay and a learning-rate schedule."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    loss_lr: float = 1e-2  # learned loss parameters: proxies, class weights, margin beta
    schedule: str = "cosine"  # cosine (decay to 0 over the run, per step) | constant
    backbone_lr_mult: float = 1.0  # the backbone learns at lr * this (head and pooling at lr)
    warmup_steps: int = 0  # learning rates ramp up linearly over the first N steps

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "> 0", self.lr)
        require(self.backbone_lr_mult >= 0, "optim.backbone_lr_mult", ">= 0", self.backbone_lr_mult)
        require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        require(self.loss_lr >= 0, "optim.loss_lr", ">= 0", self.loss_lr)
        require(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 3
    warmup_epochs: int = 0  # the first N epochs train the head only (backbone frozen)
    max_steps: int = 0  # 0 = no cap; >0 stops each epoch early (smoke tests)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | bool = "off"  # off | bf16 (CPU or CUDA) | fp16 (CUDA, with loss scaling)
    checkpoint_every: int = 200  # steps between resumable checkpoints (also at epoch ends)
    keep_checkpoints: int = 2  # newest checkpoints kept while the run is unfinished
    early_stopping: int = 0  # > 0: stop after this many validations without improvement
    resume: str = ""  # an interrupted run directory to continue (as `train --resume RUN_DIR`)
    channels_last: bool | str = "auto"  # NHWC layout: true | false | auto (true from 64 px on)
    frozen_views: int = 0  # > 0: frozen stages run once on this many augmented views per image
    eval_every: int = 1  # epochs between evaluations (validation split, else test); 0 = at end
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    select: str = "map@r"  # validation metric that picks the kept checkpoint (higher is better)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", ">= 1", self.epochs)
        require(
            0 <= self.warmup_epochs < self.epochs,
            "train.warmup_epochs",
            f">= 0 and < train.epochs ({self.epochs})",
            self.warmup_epochs,
        )
        require(self.max_steps >= 0, "train.max_steps", ">= 0 (0: no cap)", self.max_steps)
        require(self.eval_every >= 0, "train.eval_every", ">= 0 (0: at the end)", self.eval_every)
        require(self.threads >= 0, "train.threads", ">= 0 (0: torch's default)", self.threads)
        require(self.frozen_views >= 0, "train.frozen_views", ">= 0", self.frozen_views)
        if self.amp is False:  # configs written before bf16 / fp16 existed
            self.amp = "off"
        require(self.amp in ("off", "bf16", "fp16"), "train.amp", "off, bf16 or fp16", self.amp)
        every, keep = self.checkpoint_every, self.keep_checkpoints
        require(every >= 0, "train.checkpoint_every", ">= 0 (0: at epoch ends only)", every)
        require(keep >= 1, "train.keep_checkpoints", ">= 1", keep)
        require(self.early_stopping >= 0, "train.early_stopping", ">= 0", self.early_stopping)
        layout = self.channels_last
        require(
            layout in (True, False, "auto"), "train.channels_last", "true, false or auto", layout
        )


@dataclass
class EvalConfig:
    """Evaluation on the held-out classes."""

    metrics: list[str] = field(
        default_factory=lambda: [
            "recall@1",
            "recall@2",
            "recall@4",
            "recall@8",
            "map@r",
            "r_precision",
            "nmi",
        ]
    )
    distance: str = "cosine"
    batch_size: int = 0  # images per inference batch; 0 = from the model's input size
    # also tested at the end, beside the model: raw_pixels (the input pixels, pooled to at
    # most 32 x 32) and/or pretrained (the backbone's off-the-shelf pooled features)
    baselines: list[str] = field(default_factory=list)
    report: bool = True  # write report.html into the run directory at the end

    def __post_init__(self) -> None:
        require(bool(self.metrics), "eval.metrics", "a non-empty list", self.metrics)
        require(self.batch_size >= 0, "eval.batch_size", ">= 0 (0: automatic)", self.batch_size)
        for name in self.baselines:
            require(name in BASELINES, "eval.baselines[]", " or ".join(BASELINES), name)
        require(
            len(set(self.baselines)) == len(self.baselines),
            "eval.baselines",
            "a list without repeats",
            self.baselines,
        )


@dataclass
class RunConfig:
    """Everything a training run needs; written resolved to the run directory."""

    name: str = "mnist30"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        """Where everything of this run lands."""
        return Path(self.output_dir) / self.name
