"""The objective of a run: the configured loss and miner, checked to fit before anything runs.

Losses declare what they take (`MetricLoss.accepts`, `needs_classes`) and miners what they
give (`Miner.produces`), so a combination is refused from the config alone, naming both keys,
instead of failing at the first training step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepembed import losses, miners
from deepembed.config import RunConfig
from deepembed.errors import ConfigError
from deepembed.losses import MetricLoss
from deepembed.losses.base import describe_accepts
from deepembed.losses.hashing import QuantizedLoss, is_hashing
from deepembed.losses.xbm import CrossBatchMemory, supports_memory
from deepembed.miners import Miner, Pairs


def check_objective(config: RunConfig) -> None:
    """Raise ConfigError when loss.name, miner.name and loss.memory_size do not fit together."""
    loss_name, miner_name = config.loss.name, config.miner.name
    loss_cls: type[MetricLoss] = losses.LOSSES.get(loss_name)  # type: ignore[assignment]
    miner_cls: type[Miner] | None = (
        miners.MINERS.get(miner_name) if miner_name else None  # type: ignore[assignment]
    )
    per_class = config.sampler.images_per_class
    pk = config.sampler.kind == "pk"  # random batches: pairs wherever labels meet
    if pk and per_class < 2 and not loss_cls.needs_classes and config.loss.memory_size == 0:
        raise ConfigError(
            f"sampler.images_per_class={per_class} gives batches without positive pairs, "
            f"which loss.name={loss_name!r} learns from; use sampler.images_per_class >= 2"
        )
    if config.loss.memory_size > 0:
        if not supports_memory(loss_cls):
            usable = [n for n in losses.names() if supports_memory(losses.LOSSES.get(n))]
            raise ConfigError(
                f"loss.memory_size={config.loss.memory_size} (cross-batch memory) needs a pair "
                f"loss; loss.name={loss_name!r} is not one (pair losses: {', '.join(usable)})"
            )
        if miner_cls is not None and miner_cls.produces is not Pairs:
            raise ConfigError(
                f"miner.name={miner_name!r} gives {miner_cls.produces.__name__}, but a cross-batch "
                f"memory (loss.memory_size) mines pairs: use miner.name=multi_similarity or ''"
            )
        return
    check_head(config, loss_cls)
    if miner_cls is None or issubclass(miner_cls.produces, loss_cls.accepts):
        return
    fitting = [
        n for n in miners.names() if issubclass(miners.MINERS.get(n).produces, loss_cls.accepts)
    ]
    choices = "miner.name='' (every tuple of the batch)"
    if fitting:
        choices += f" or one of {', '.join(fitting)}"
    raise ConfigError(
        f"miner.name={miner_name!r} gives {miner_cls.produces.__name__}, which "
        f"loss.name={loss_name!r} cannot use ({describe_accepts(loss_cls)}); use {choices}"
    )


def check_head(config: RunConfig, loss_cls: type[MetricLoss]) -> None:
    """A hashing loss needs a hash head; a hash head needs a hashing loss or a metric loss
    carrying the quantization regulariser (loss.quantization_weight)."""
    head, name = config.model.head, config.loss.name
    if is_hashing(loss_cls) and head != "hash":
        raise ConfigError(
            f"loss.name={name!r} trains binary codes but model.head={head!r} gives float "
            f"embeddings: use model.head=hash (with model.bits)"
        )
    if head == "hash" and not is_hashing(loss_cls) and config.loss.quantization_weight <= 0:
        hashing = [n for n in losses.names() if is_hashing(losses.LOSSES.get(n))]
        raise ConfigError(
            f"model.head='hash' gives binary codes but loss.name={name!r} is a float metric "
            f"loss: use a hashing loss ({', '.join(hashing)}) or push it to codes with "
            f"loss.quantization_weight > 0"
        )


def multi_label_losses() -> list[str]:
    """Names of the registered losses that take multi-label (B, C) 0/1 label rows."""
    return [n for n in losses.names() if getattr(losses.LOSSES.get(n), "multi_label", False)]


def check_multi_label(config: RunConfig) -> None:
    """ConfigError unless the objective can train on multi-label rows: a loss that takes
    them (similar = sharing a label), no miner and no cross-batch memory (both compare
    class ids)."""
    name = config.loss.name
    if not getattr(losses.LOSSES.get(name), "multi_label", False):
        raise ConfigError(
            f"loss.name={name!r} takes one class per image, but the training set has "
            f"multi-label rows: use one of {', '.join(multi_label_losses())}"
        )
    if config.miner.name:
        raise ConfigError(
            f"miner.name={config.miner.name!r} mines by class id; with multi-label rows use "
            "miner.name='' (every pair or triplet of the batch)"
        )
    if config.loss.memory_size > 0:
        raise ConfigError(
            "loss.memory_size (cross-batch memory) keeps class ids; it cannot take "
            "multi-label rows: use loss.memory_size=0"
        )


def build_objective(
    config: RunConfig, num_classes: int, embedding_size: int, total_steps: int = 0
) -> tuple[MetricLoss, Miner | None]:
    """The configured loss and miner, checked first (see `check_objective`).

    Losses with learned class parameters (`needs_classes`) get `num_classes` (training classes)
    and `embedding_size` unless the config sets them; loss.memory_size > 0 wraps the loss in a
    cross-batch memory, which then does the mining itself. Bad parameters are ConfigErrors
    naming loss.params / miner.params.
    """
    check_objective(config)
    params = dict(config.loss.params)
    if losses.LOSSES.get(config.loss.name).needs_classes:  # type: ignore[attr-defined]
        params.setdefault("num_classes", num_classes)
        params.setdefault("embedding_size", embedding_size)
    loss_fn = _create(losses.LOSSES.create, "loss", config.loss.name, params)
    miner = None
    if config.miner.name:
        miner = _create(miners.MINERS.create, "miner", config.miner.name, config.miner.params)
    if config.loss.memory_size > 0:
        loss_fn = CrossBatchMemory(loss_fn, embedding_size, config.loss.memory_size, miner)
        miner = None
    if config.loss.quantization_weight > 0:  # outside the memory: it acts on the batch
        ramp = round(config.loss.quantization_ramp * total_steps)
        loss_fn = QuantizedLoss(loss_fn, config.loss.quantization_weight, ramp)
    return loss_fn, miner


def _create(create: Any, section: str, name: str, params: dict[str, Any]) -> Any:
    """create(name, **params) with any refusal of the parameters named as a config key."""
    try:
        return create(name, **params)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{section}.params for {section}.name={name!r}: {exc}") from exc


class MetricObjective(nn.Module):
    """What a training step minimises: a metric loss (+ miner) on the embeddings of a batch.

    `training_loss(trainer, batch)` is the one place a step's loss is defined. The trainer
    owns the forward of its model (`trainer.encode`: device, layout, autocast, frozen-stage
    bank) and the optimisation; the objective decides what to compute with it. Its own
    parameters (a loss's proxies, class weights, margin beta) are optimised at optim.loss_lr
    and kept identical on every rank. Another objective plugs in by providing the same
    method: one with two encoders (image-text) owns the second encoder as a submodule and
    encodes its half of the batch itself; an adversarial one owns its generator and
    overrides `optimizer_groups` to give it its own learning rate.

    In a distributed run the batch's embeddings and labels are gathered from every rank
    with their gradient, so the miner and the loss see the global batch: every rank computes
    the same global loss, which is the value reported.
    """

    def __init__(self, loss_fn: MetricLoss, miner: Miner | None, class_index: torch.Tensor) -> None:
        super().__init__()
        self.loss_fn, self.miner = loss_fn, miner
        # (C,) sorted dataset labels of the training classes; labels -> 0..C-1
        self.register_buffer("class_index", class_index, persistent=False)

    def training_loss(self, trainer: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        embeddings = trainer.encode(images)  # (B, D)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()  # autocast output: the loss runs in float32
        labels = labels.to(embeddings.device)
        if labels.ndim == 1:  # class ids -> 0..C-1; multi-label (B, C) rows stay as they are
            labels = torch.searchsorted(self.class_index, labels)  # (B,)
        strategy = trainer.strategy
        embeddings, labels = strategy.gather(embeddings), strategy.gather(labels)  # (N*B, ...)
        mined = self.miner(embeddings, labels) if self.miner is not None else None
        loss = self.loss_fn(embeddings, labels, mined)
        if isinstance(self.loss_fn, QuantizedLoss):
            self.loss_fn.advance()  # its weight ramps with the optimisation steps
        return loss

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups of the objective's learned parameters, at `lr`, no weight decay."""
        learned = [p for p in self.parameters() if p.requires_grad]
        return [{"params": learned, "lr": lr, "weight_decay": 0.0}] if learned else []
