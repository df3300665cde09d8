"""`timm/<arch>` and `torchvision/<arch>` backbones: any architecture those libraries have.

Weights: `pretrained=True` asks the library for its default ImageNet weights (its hub or
local cache; needs internet the first time), False is random init, a path loads that file
(air-gapped sites). Weights that are not cached yet are fetched only after one quick request
to their host succeeds: offline, the libraries would retry for about a minute (Hugging Face
Hub backs off 10 times) before failing. Preprocessing comes from the library's own
description of the weights (timm's pretrained_cfg; torchvision's weights transforms),
ImageNet defaults otherwise.
"""

from __future__ import annotations

import math
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from deepembed.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
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


def _download_failed(name: str, exc: Exception | str) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"model.pretrained: {OFFLINE_HINT.format(name=name)} ({first[:160]})")


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why the host of `url` cannot be reached (one HEAD request, no retries), else None.

    Any HTTP answer counts as reachable, and so does a TLS failure (the library may trust
    other certificates); proxies are honoured as the libraries honour them."""
    parts = urlparse(url)
    try:
        request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        return None if isinstance(exc.reason, ssl.SSLError) else str(exc.reason)
    except OSError as exc:  # a timeout while reading the answer
        return None if isinstance(exc, ssl.SSLError) else str(exc) or type(exc).__name__
    return None


def _check_download(name: str, cached: bool, url: str) -> None:
    """Fail now, in one line, when weights must be downloaded from `url` and cannot be."""
    reason = None if cached or not url else _unreachable(url)
    if reason is not None:
        raise _download_failed(name, reason)


def _torch_hub_cached(url: str) -> bool:
    """Whether torch.hub (torchvision, timm's URL weights) has the file of `url` already."""
    import torch.hub

    name = os.path.basename(urlparse(url).path)
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def _timm_weights(arch: str) -> tuple[bool, str]:
    """(cached, url): whether timm's default weights of `arch` are on this machine, and the
    URL it would fetch them from (the Hugging Face Hub, else the cfg's url)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or cfg.file or cfg.state_dict:
        return True, ""  # no download to check (or timm reports the problem itself)
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE:
            return True, ""  # offline mode: the hub fails fast by itself
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        cached = any(
            isinstance(try_to_load_from_cache(repo, n, revision=revision or None), str)
            for n in names
        )
        return cached, constants.ENDPOINT
    if cfg.url:
        return _torch_hub_cached(cfg.url), cfg.url
    return True, ""


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
        if pretrained is True:
            _check_download(f"timm/{arch}", *_timm_weights(arch))
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
            # the file's classifier (one name, or several: distilled ViTs) is not ours
            classifier = self.net.pretrained_cfg.get("classifier") or ()
            names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            load_weights(self.net, pretrained, ignore=[f"{n}." for n in names])
        self.num_features = int(self.net.num_features)
        cfg = timm.data.resolve_data_config({}, model=self.net)
        _, h, w = cfg["input_size"]
        crop = float(cfg.get("crop_pct", 0.875))
        self.preprocess = Preprocess(
            (h, w),
            3,
            # timm's eval transform: shorter side to floor(size / crop_pct), centre crop
            # (crop_pct 1 too: still aspect-preserving, never a squash to the input size)
            math.floor(min(h, w) / crop) if crop <= 1 else 0,
            "bicubic" if cfg["interpolation"] == "bicubic" else "bilinear",
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        if out.ndim == 3:  # tokens (B, N, C) -> (B, C, N, 1)
            out = out.transpose(1, 2)[..., None]
        elif getattr(self.net, "output_fmt", "NCHW") == "NHWC":  # Swin, MambaOut
            out = out.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        return out

    def stages(self) -> list[list[nn.Module]]:
        """timm's coarse parameter groups (its layer-decay stages), as modules.

        A module whose parameters all fall in one group stands for them (its submodules then
        are not listed again: a ConvNeXt block holds gamma beside its convolutions);
        parameters held by a module with parts in other groups (a ViT's cls_token and
        pos_embed sit on the model itself) are wrapped in a `_Parameters` holder, so each
        parameter is in exactly one stage.
        """
        from timm.models import group_parameters

        groups = list(group_parameters(self.net, self.net.group_matcher(coarse=True)).values())
        group_of = {name: g for g, names in enumerate(groups) for name in names}
        modules = dict(self.net.named_modules())
        out = []
        for g, names in enumerate(groups):
            stage: list[nn.Module] = []
            loose = []
            whole: list[str] = []  # owners taken whole, parents before their children
            for owner in sorted({n.rpartition(".")[0] for n in names}):
                if any(owner.startswith(f"{w}.") or not w for w in whole):
                    continue  # inside a module already taken whole
                module = modules[owner]
                inside = [f"{owner}.{n}" if owner else n for n, _ in module.named_parameters()]
                if all(group_of[n] == g for n in inside):
                    whole.append(owner)
                    stage.append(module)
                else:
                    loose += [
                        p
                        for n, p in module.named_parameters(recurse=False)
                        if group_of[f"{owner}.{n}" if owner else n] == g
                    ]
            if loose:
                stage.append(_Parameters(loose))
            out.append(stage)
        return out


class _Parameters(nn.Module):
    """A stage entry for parameters that no module of their own holds (not registered in the
    backbone, so its state dict is unchanged); freezing it freezes them."""

    def __init__(self, parameters: list[nn.Parameter]) -> None:
        super().__init__()
        for i, parameter in enumerate(parameters):
            self.register_parameter(str(i), parameter)


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
            _check_download(f"torchvision/{arch}", _torch_hub_cached(weights.url), weights.url)
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
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if weights is not None:
            t = weights.transforms()
            resize, crop = t.resize_size[0], t.crop_size[0]
            interpolation = "bicubic" if "BICUBIC" in str(t.interpolation) else "bilinear"
            mean, std = tuple(t.mean), tuple(t.std)
        self.preprocess = Preprocess((crop, crop), 3, resize, interpolation, mean, std)

    splittable = True  # the trunk is its stages in sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def run(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for stage in self._stages[start:end]:
            for module in stage:
                x = module(x)
        return x

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
