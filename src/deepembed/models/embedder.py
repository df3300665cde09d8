"""Embedder = input normalisation + backbone + head, saved as a self-describing directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from deepembed.errors import ModelFormatError
from deepembed.io import atomic_dir, reading
from deepembed.models.backbones import BACKBONES
from deepembed.models.heads import EmbeddingHead

FORMAT_VERSION = 1  # bump when the directory layout or config meaning changes
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class EmbedderSpec:
    """Everything needed to rebuild an Embedder; written as config.json."""

    backbone: str = "small_cnn"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 128
    normalize: bool = True
    in_channels: int = 1
    image_size: list[int] = field(default_factory=lambda: [28, 28])  # (H, W)
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.5])


class Embedder(nn.Module):
    """Maps images (B, C, H, W) with values in [0, 1] to embeddings (B, D)."""

    def __init__(self, spec: EmbedderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = BACKBONES.create(
            spec.backbone, in_channels=spec.in_channels, **spec.backbone_params
        )
        self.head = EmbeddingHead(self.backbone.num_features, spec.embedding_dim, spec.normalize)
        shape = (1, spec.in_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(spec.mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).reshape(shape), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((images - self.mean) / self.std))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Embeddings (B, D) on the CPU of images (B, C, H, W) or one image (C, H, W), eval mode."""
        was_training = self.training
        self.eval()
        if images.ndim == 3:
            images = images[None]
        device = self.mean.device
        out = [
            self(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.spec.embedding_dim)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A PIL image -> (C, H, W) float in [0, 1] at this model's input size and channels."""
        mode = "L" if self.spec.in_channels == 1 else "RGB"
        h, w = self.spec.image_size
        image = image.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)

    def save(self, path: str | Path) -> Path:
        """Write config.json + model.safetensors to `path` atomically (temp dir, then rename)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            config = {
                "format_version": FORMAT_VERSION,
                "kind": "deepembed.Embedder",
                **asdict(self.spec),
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Embedder:
        """Rebuild a saved model from its directory alone."""
        path = Path(path)
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for required in (config_path, weights_path):
            if not required.is_file():
                raise ModelFormatError(f"model directory {path} is incomplete: no {required.name}")
        with reading(config_path, "a model config.json", ModelFormatError):
            config = json.loads(config_path.read_text())
        if not isinstance(config, dict) or config.get("kind") != "deepembed.Embedder":
            raise ModelFormatError(f"{config_path} does not describe a deepembed model")
        version = config.pop("format_version", None)
        config.pop("kind")
        if version != FORMAT_VERSION:
            raise ModelFormatError(
                f"model {path} has format_version {version}; this deepembed reads {FORMAT_VERSION}"
            )
        with reading(weights_path, "a safetensors weights file", ModelFormatError):
            state = load_file(str(weights_path))
        try:
            model = cls(EmbedderSpec(**config))
            model.load_state_dict(state)
        except (TypeError, RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFormatError(f"model {path} cannot be loaded: {first}") from exc
        return model.to(device).eval()
