"""The objective of a run: the configured loss and miner, checked to fit before anything runs.

Losses declare what they take (`MetricLoss.accepts`, `needs_classes`) and miners what they
give (`Miner.produces`), so a combination is refused from the config alone, naming both keys,
instead of failing at the first training step.
"""

from __future__ import annotations

from typing import Any

from deepembed import losses, miners
from deepembed.config import RunConfig
from deepembed.errors import ConfigError
from deepembed.losses import MetricLoss
from deepembed.losses.base import describe_accepts
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
    if per_class < 2 and not loss_cls.needs_classes and config.loss.memory_size == 0:
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


def build_objective(
    config: RunConfig, num_classes: int, embedding_size: int
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
    return loss_fn, miner


def _create(create: Any, section: str, name: str, params: dict[str, Any]) -> Any:
    """create(name, **params) with any refusal of the parameters named as a config key."""
    try:
        return create(name, **params)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{section}.params for {section}.name={name!r}: {exc}") from exc
