"""The training loop."""

from deepembed.training.trainer import TrainResult, build_model, train

__all__ = ["TrainResult", "build_model", "train"]
