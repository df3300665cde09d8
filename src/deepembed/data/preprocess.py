"""Preprocess: what a model expects its input images to be, down to the pixels.

A backbone declares one (as timm's pretrained_cfg does) and a saved model carries it in its
config.json, so a model directory alone says how to turn any image into its input:

    PIL image -> convert to L / RGB -> resize (shorter side to `resize`, or straight to
    `input_size` when resize = 0) -> centre crop `input_size` -> (C, H, W) float in [0, 1]

Normalisation by `mean` / `std` is the model's first step (Embedder.forward), so exported
and served models take plain [0, 1] images. Training augmentation is built from the same
description (`train_transform`), and in-memory tensor datasets (MNIST, CIFAR) are brought
to the model's input by `tensor_transform`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from deepembed.data.images import convert_image
from deepembed.errors import ConfigError

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, the weights PIL's convert("L") uses: RGB tensors -> grey
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """The evaluation transform of a model; `input_size` is (H, W)."""

    input_size: tuple[int, int] = (224, 224)
    channels: int = 3  # 1 (grey, "L") or 3 (RGB)
    resize: int = 0  # shorter side before the centre crop; 0 = resize to input_size (no crop)
    interpolation: str = "bilinear"  # bilinear | bicubic
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 1 or w < 1:
            raise ConfigError(f"preprocess input_size must be positive, got {self.input_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess channels must be 1 or 3, got {self.channels}")
        if self.resize and self.resize < min(h, w):
            raise ConfigError(
                f"preprocess resize {self.resize} is smaller than the crop {self.input_size}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocess mean/std need {self.channels} values, got {self.mean} / {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess std must be > 0, got {self.std}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Rebuild from `to_dict` output (lists become tuples)."""
        values = dict(data)
        for key in ("input_size", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def at_size(self, size: int) -> Preprocess:
        """The same preprocessing at a square input `size`, keeping the crop ratio."""
        h, w = self.input_size
        if (size, size) == (h, w):
            return self
        resize = round(self.resize * size / min(h, w)) if self.resize else 0
        return replace(self, input_size=(size, size), resize=resize)

    def with_channels(self, channels: int) -> Preprocess:
        """The same preprocessing for grey (1) or RGB (3) input; mean/std follow."""
        if channels == self.channels:
            return self
        mean = (sum(self.mean) / len(self.mean),) * channels
        std = (sum(self.std) / len(self.std),) * channels
        return replace(self, channels=channels, mean=mean, std=std)

    # -- transforms -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model input."""
        return (self.channels, *self.input_size)

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to."""
        return "L" if self.channels == 1 else "RGB"

    def geometry(self) -> list[Any]:
        """Eval resize + centre crop steps (PIL or uint8 tensors)."""
        mode = INTERPOLATIONS[self.interpolation]
        if not self.resize:
            return [v2.Resize(list(self.input_size), interpolation=mode, antialias=True)]
        return [
            v2.Resize(self.resize, interpolation=mode, antialias=True),
            v2.CenterCrop(list(self.input_size)),
        ]

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The evaluation transform: a PIL image of any mode -> (C, H, W) float in [0, 1]."""
        return self._on_pil(self.geometry())

    def train_geometry(self, scale: tuple[float, float] = (0.3, 1.0)) -> list[Any]:
        """Training crop: random resized crop to `input_size` and a horizontal flip."""
        mode = INTERPOLATIONS[self.interpolation]
        return [
            v2.RandomResizedCrop(list(self.input_size), scale, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]

    def train_transform(self, scale: tuple[float, float] = (0.3, 1.0)) -> Callable:
        """A PIL image -> augmented (C, H, W) float in [0, 1] (random resized crop + flip)."""
        return self._on_pil(self.train_geometry(scale))

    def _on_pil(self, geometry: list[Any]) -> Callable[[Image.Image], torch.Tensor]:
        """Mode conversion, then `geometry`, then uint8 -> float in [0, 1]."""
        pipeline = v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        channels = self.channels

        def apply(image: Image.Image) -> torch.Tensor:
            return pipeline(convert_image(image, channels))

        return apply

    def tensor_transform(self, images: torch.Tensor) -> torch.Tensor:
        """A batch (B, C', H', W') float in [0, 1] -> (B, C, H, W) at this model's input.

        For in-memory datasets whose items are tensors: grey is repeated to RGB, RGB goes to
        grey with PIL's luma weights, then the eval geometry (antialiased resize + centre
        crop). The identity when the batch already has the input shape.
        """
        c = images.shape[1]
        if c != self.channels:
            if self.channels == 3:
                images = images.expand(-1, 3, -1, -1)
            else:
                weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
                images = (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
        if tuple(images.shape[2:]) == tuple(self.input_size):
            return images
        mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
        h, w = images.shape[2:]
        if self.resize:
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            size = tuple(self.input_size)
        out = F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
        if self.resize:
            out = v2.functional.center_crop(out, list(self.input_size))
        return out.clamp_(0.0, 1.0)
