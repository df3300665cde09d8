"""Run configuration: small dataclasses composed into one RunConfig (`schema`), loaded from
YAML with `section.key=value` overrides on top (`loading`).

Each component owns its defaults in `schema`; unknown keys and values of the wrong type are
errors naming the key.
"""

from deepembed.config.loading import from_dict, load_config, parse_overrides, save_config, to_dict
from deepembed.config.schema import (
    BASELINES,
    DataConfig,
    EvalConfig,
    LossConfig,
    MinerConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
    require,
)

__all__ = [
    "BASELINES",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "MinerConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SamplerConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "parse_overrides",
    "require",
    "save_config",
    "to_dict",
]
