"""deepembed: deep embedding learning for image retrieval.

Public API: `Embedder` (load / embed), the `losses`, `miners`, `data`, `evaluation` and
`index` modules (each with `create`/`open`/`evaluate` entry points), `train` (a config-driven
run over `Trainer`) and `embed`.
"""

from __future__ import annotations

from deepembed import data, evaluation, index, losses, miners
from deepembed.config import RunConfig, load_config
from deepembed.errors import ConfigError, DataError, ModelFormatError, UserError
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "Embedder",
    "EmbedderSpec",
    "Embeddings",
    "ModelFormatError",
    "RunConfig",
    "Trainer",
    "UserError",
    "__version__",
    "data",
    "embed",
    "evaluate",
    "evaluation",
    "index",
    "load_config",
    "losses",
    "miners",
    "train",
]
