"""`timm/<arch>` and `torchvision/<arch>` backbones: any architecture those libraries have.

Weights: `pretrained=True` asks the library for its default ImageNet weights (its hub or
local cache; needs internet the first time), False is random init, a path loads that file
(air-gapped sites). Preprocessing comes from the library's own description of the weights
(timm's pretrained_cfg; torchvision's weights transforms), ImageNet defaults otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from deepembed.data.preprocess import Preprocess
from deepembed.errors import ConfigError
from deepembed.models.backbones import Backbone, Pretrained, known_backbones
from deepembed.models.weights import load_weights

OFFLINE_HINT = (
    "cannot download {name} weights (no internet?): put a weights file on this machine and "
    "set model.pretrained=/path/to/weights.safetensors (or .pth), or model.pretrained=false"
)


def create_library_backbone(
    library: str, arch: str, pretrained: Pretrained, channels: int, **params: Any
) -> Backbone:
    """A timm or torchvision architecture wrapped as a Backbone."""
    if channels != 3:
        raise ConfigError(f"{library}/{arch} takes RGB images (3 channels)")
    if library == "timm":
        return TimmBackbone(arch, pretrained, **params)
    return TorchvisionBackbone(arch, pretrained, **params)


def _download_failed(name: str, exc: Exception) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"model.pretrained: {OFFLINE_HINT.format(name=name)} ({first[:160]})")


class TimmBackbone(Backbone):
    """A timm model without its classifier and pooling: forward_features' maps.

    Token models (ViT) give (B, N, C); they are returned as (B, C, N, 1) maps so that every
    pooling applies.
    """

    def __init__(self, arch: str, pretrained: Pretrained, **params: Any) -> None:
        super().__init__()
        import timm

        if not timm.is_model(arch):
            raise ConfigError(
                f"model.backbone: timm has no architecture {arch!r} (timm.list_models() lists "
                f"them); known backbones: {known_backbones()}"
            )
        try:
            self.net = timm.create_model(
                arch, pretrained=pretrained is True, num_classes=0, global_pool="", **params
            )
        except TypeError as exc:
            raise ConfigError(
                f"model.backbone_params: bad parameters for timm/{arch}: {exc}"
            ) from exc
        except Exception as exc:  # hub / network errors of many kinds
            if pretrained is True:
                raise _download_failed(f"timm/{arch}", exc) from exc
            raise
        if isinstance(pretrained, str):
            classifier = self.net.pretrained_cfg.get("classifier", "")
            ignore = (classifier,) if isinstance(classifier, str) and classifier else ()
            load_weights(self.net, pretrained, ignore=ignore)
        self.num_features = int(self.net.num_features)
        cfg = timm.data.resolve_data_config({}, model=self.net)
        _, h, w = cfg["input_size"]
        crop = float(cfg.get("crop_pct", 0.875))
        self.preprocess = Preprocess(
            (h, w),
            3,
            math.floor(min(h, w) / crop) if crop < 1 else 0,
            "bicubic" if cfg["interpolation"] == "bicubic" else "bilinear",
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        if out.ndim == 3:  # tokens (B, N, C) -> (B, C, N, 1)
            out = out.transpose(1, 2)[..., None]
        return out

    def stages(self) -> list[list[nn.Module]]:
        from timm.models import group_parameters

        groups = group_parameters(self.net, self.net.group_matcher(coarse=True))
        modules = dict(self.net.named_modules())
        out = []
        for names in groups.values():
            owners = {n.rsplit(".", 1)[0] for n in names}
            out.append([modules[o] for o in sorted(owners) if o in modules])
        return out


class TorchvisionBackbone(Backbone):
    """A torchvision classification model cut before its pooling and classifier.

    Families with a `features` trunk (EfficientNet, MobileNet, ConvNeXt, VGG, DenseNet ...)
    and ResNet-like ones (ResNet, ResNeXt, Wide ResNet) are supported; for others use timm.
    """

    def __init__(self, arch: str, pretrained: Pretrained, **params: Any) -> None:
        super().__init__()
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(
                f"model.backbone: torchvision has no classification model {arch!r} "
                f"(torchvision.models.list_models() lists them); known: {known_backbones()}"
            )
        weights = None
        if pretrained is True:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            net = torchvision.models.get_model(arch, weights=weights, **params)
        except TypeError as exc:
            raise ConfigError(
                f"model.backbone_params: bad parameters for torchvision/{arch}: {exc}"
            ) from exc
        except Exception as exc:
            if pretrained is True:
                raise _download_failed(f"torchvision/{arch}", exc) from exc
            raise
        if isinstance(pretrained, str):
            head = "fc." if hasattr(net, "fc") else "classifier."
            _load_torchvision(net, pretrained, head)
        self._stages = _torchvision_stages(net, arch)
        self.trunk = nn.Sequential(*[m for stage in self._stages for m in stage])
        self.num_features = _channels_out(self.trunk)
        resize, crop, interpolation = 256, 224, "bilinear"
        if weights is not None:
            t = weights.transforms()
            resize, crop = t.resize_size[0], t.crop_size[0]
            interpolation = "bicubic" if "BICUBIC" in str(t.interpolation) else "bilinear"
        self.preprocess = Preprocess((crop, crop), 3, resize, interpolation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def stages(self) -> list[list[nn.Module]]:
        return self._stages


def _load_torchvision(net: nn.Module, path: str, head: str) -> None:
    """Load a local weights file into a whole torchvision model; its classifier may differ."""
    from deepembed.models.weights import state_dict_from

    state = state_dict_from(path)
    own = net.state_dict()
    for key in list(state):  # a classifier of another size (fine-tuned elsewhere) is dropped
        if key.startswith(head) and (key not in own or own[key].shape != state[key].shape):
            del state[key]
    for key in own:
        if key.startswith(head) and key not in state:
            state[key] = own[key]
    load_weights(net, path, state)


def _torchvision_stages(net: nn.Module, arch: str) -> list[list[nn.Module]]:
    """The trunk of a torchvision model as stages (input first)."""
    if hasattr(net, "layer4"):  # ResNet family
        stem = [net.conv1, net.bn1, net.relu, net.maxpool]
        return [stem, [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        stages = [[m] for m in features]
        if arch.startswith("densenet"):  # its final BN is followed by a ReLU in forward()
            stages.append([nn.ReLU()])
        return stages
    raise ConfigError(
        f"model.backbone: torchvision/{arch} has no convolutional trunk deepembed can cut "
        f"(features or layer1-4); use timm/{arch} instead"
    )


def _channels_out(trunk: nn.Module) -> int:
    """Channels of the trunk's output maps (one small dry run on a 64 x 64 image)."""
    with torch.no_grad():
        was = trunk.training
        trunk.eval()
        channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        trunk.train(was)
    return int(channels)
