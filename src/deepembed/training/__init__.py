"""Training: the Trainer, its callbacks and checkpoints, and the config-driven pipeline."""

from deepembed.training.build import build_model
from deepembed.training.pipeline import TrainResult, train
from deepembed.training.trainer import Trainer

__all__ = ["TrainResult", "Trainer", "build_model", "train"]
