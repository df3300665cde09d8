"""Embedder = input normalisation + backbone + pooling + head, saved as a self-describing
directory: config.json (architecture and the whole preprocessing) + model.safetensors.

`Embedder.load(dir)` needs nothing else and never downloads: the backbone is rebuilt
without pretrained weights and the saved tensors are loaded into it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from deepembed.data.preprocess import Preprocess
from deepembed.errors import ConfigError, ModelFormatError
from deepembed.io import atomic_dir, reading
from deepembed.models.backbones import Backbone, Pretrained, create_backbone, default_pretrained
from deepembed.models.heads import HASH_ACTIVATIONS, EmbeddingHead, HashHead
from deepembed.models.pooling import create_pool

FORMAT_VERSION = 2  # 2: pooling, head BN, preprocess; version 1 directories still load
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass
class EmbedderSpec:
    """Everything needed to rebuild an Embedder; written as config.json.

    `pool` "" and `preprocess` None mean the backbone's own; `image_size` > 0 rescales the
    backbone's preprocessing to that square input (keeping its crop ratio); `center_crop`
    False resizes the whole image straight to the input size instead of cropping its centre
    (resize 0); `in_channels` 0 is the backbone's default. `pretrained` and `head_init`
    record how the model was first initialised (loading puts the saved weights over it).
    """

    backbone: str = "small_cnn"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    pretrained: Pretrained | None = None
    pool: str = ""
    pool_params: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 128  # 0: the pooled features themselves
    head_bn: bool = False
    head_init: str = "random"  # random | identity (weight = I, bias = 0; D = pooled size)
    normalize: bool = True
    in_channels: int = 0
    image_size: int = 0
    center_crop: bool = True  # False: no crop, the whole image resized to the input size
    preprocess: dict[str, Any] | None = None
    head: str = "embedding"  # embedding | hash (binary codes of `bits` bits)
    bits: int = 0
    hash_activation: str = "tanh"  # the hash head's training relaxation (HashHead)


class Embedder(nn.Module):
    """Maps images (B, C, H, W) with values in [0, 1] to embeddings (B, D)."""

    def __init__(self, spec: EmbedderSpec, load_pretrained: bool = True) -> None:
        super().__init__()
        channels = spec.in_channels or (spec.preprocess["channels"] if spec.preprocess else None)
        self.backbone: Backbone = create_backbone(
            spec.backbone,
            spec.pretrained if load_pretrained else False,
            channels or None,
            **spec.backbone_params,
        )
        pool_name, pool_params = (
            (spec.pool, spec.pool_params) if spec.pool else self.backbone.default_pool
        )
        self.pool = create_pool(pool_name, self.backbone.num_features, **pool_params)
        if spec.embedding_dim < 0:
            raise ConfigError(f"model.embedding_dim must be >= 0, got {spec.embedding_dim}")
        self.head: EmbeddingHead | HashHead = build_head(spec, self.pool.out_features, pool_name)
        pre = Preprocess.from_dict(spec.preprocess) if spec.preprocess else self.backbone.preprocess
        if spec.image_size:
            pre = pre.at_size(spec.image_size)
        if not spec.center_crop:
            pre = replace(pre, resize=0)  # the whole image, squashed to the input size
        self.preprocessing = pre
        self._transform: tuple[Preprocess, Callable[[Image.Image], torch.Tensor]] | None = None
        # the spec as saved: pooling and preprocessing resolved, nothing left to defaults
        pretrained = spec.pretrained
        if pretrained is None and load_pretrained:
            pretrained = default_pretrained(spec.backbone)
        self.spec = replace(
            spec,
            pretrained=pretrained,
            pool=pool_name,
            pool_params=dict(pool_params),
            preprocess=pre.to_dict(),
        )
        shape = (1, pre.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(pre.mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).reshape(shape), persistent=False)
        self._eval_modules: list[nn.Module] = []  # kept in eval mode while training

    @property
    def prefers_channels_last(self) -> bool:
        """NHWC input runs faster: depthwise convolutions of pretrained backbones at 64 px
        and more run several times faster (measured 19 -> 100+ img/s at 160 px on a CPU)."""
        return min(self.preprocessing.input_size) >= 64

    @property
    def embedding_dim(self) -> int:
        """D, the length of an embedding (the number of bits of a hash model)."""
        return self.head.out_features

    @property
    def produces_codes(self) -> bool:
        """Whether the model gives binary codes (+1/-1 per bit) rather than float vectors."""
        return isinstance(self.head, HashHead)

    def forward(self, images: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, D) embeddings. With `start` > 0 the input is
        `features_at(images, start)` instead (a frozen-stage bank), so a wrapper such as
        DistributedDataParallel sees every training forward through this method."""
        if start:
            return self.forward_from(images, start)
        maps = self.backbone((images - self.mean) / self.std)  # (B, F, h, w)
        return self.head(self.pool(maps))  # (B, D)

    def features_at(self, images: torch.Tensor, stage: int) -> torch.Tensor:
        """The output of the first `stage` backbone stages (splittable backbones)."""
        return self.backbone.run((images - self.mean) / self.std, 0, stage)

    def forward_from(self, features: torch.Tensor, stage: int) -> torch.Tensor:
        """Embeddings from `features_at(images, stage)`: the rest of forward()."""
        return self.head(self.pool(self.backbone.run(features, stage)))

    def check_input(self) -> None:
        """One forward pass (eval mode) on a blank input of this model's size: a backbone that
        cannot take it (a ViT built for 224 px given image_size 64) is a ConfigError now,
        before anything is written, not a failure of every later embed."""
        pre, was = self.preprocessing, self.training
        self.eval()
        try:
            with torch.no_grad():
                self(torch.zeros(1, *pre.shape, device=self.mean.device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"model.image_size: {self.spec.backbone} cannot take {pre.shape[1]}x"
                f"{pre.shape[2]} input ({first.rstrip('.')}); choose another size"
            ) from exc
        finally:
            self.train(was)

    # -- fine-tuning controls ---------------------------------------------------------
    def freeze(self, stages: int = 0, bn: bool = False) -> None:
        """Freeze the first `stages` backbone stages (weights and BatchNorm statistics);
        `bn` also keeps every BatchNorm of the backbone in eval mode (frozen statistics)."""
        all_stages = self.backbone.stages()
        if stages > len(all_stages):
            raise ConfigError(
                f"model.freeze_stages={stages} but {self.spec.backbone} has "
                f"{len(all_stages)} stages"
            )
        self.backbone.requires_grad_(True)
        frozen = [m for stage in all_stages[:stages] for m in stage]
        for module in frozen:
            module.requires_grad_(False)
        self._eval_modules = [m for f in frozen for m in f.modules()]
        if bn:
            self._eval_modules += [m for m in self.backbone.modules() if isinstance(m, _BN)]
        self.train(self.training)

    def train(self, mode: bool = True) -> Embedder:
        super().train(mode)
        for module in self._eval_modules:
            module.eval()
        return self

    # -- use ----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings (B, D) on the CPU of images (B, C, H, W) or one image (C, H, W), eval mode."""
        was_training = self.training
        if was_training:  # a walk over every module: not paid per call when in eval mode
            self.eval()
        if images.ndim == 3:
            images = images[None]
        device = self.mean.device
        out = [
            self(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        if was_training:
            self.train(True)
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A PIL image of any mode -> (C, H, W) float in [0, 1]: exactly the evaluation
        transform this model was trained and evaluated with."""
        pre = self.preprocessing
        if self._transform is None or self._transform[0] != pre:  # built once, not per image
            self._transform = (pre, pre.transform())
        return self._transform[1](image)

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write config.json + model.safetensors to `path` atomically (temp dir, then rename)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            config = {"format_version": FORMAT_VERSION, "kind": "deepembed.Embedder"}
            config |= asdict(self.spec)
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Embedder:
        """Rebuild a saved model from its directory alone (no download, no weights files)."""
        path = Path(path)
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not path.is_dir():
            raise ModelFormatError(f"model directory not found: {path}")
        for required in (config_path, weights_path):
            if not required.is_file():
                raise ModelFormatError(f"model directory {path} is incomplete: no {required.name}")
        with reading(config_path, "a model config.json", ModelFormatError):
            config = json.loads(config_path.read_text())
        if not isinstance(config, dict) or config.get("kind") != "deepembed.Embedder":
            raise ModelFormatError(f"{config_path} does not describe a deepembed model")
        version = config.pop("format_version", None)
        config.pop("kind")
        if version == 1:
            config = _from_version_1(config)
        elif version != FORMAT_VERSION:
            raise ModelFormatError(
                f"model {path} has format_version {version}; this deepembed reads "
                f"1-{FORMAT_VERSION}"
            )
        with reading(weights_path, "a safetensors weights file", ModelFormatError):
            state = load_file(str(weights_path))
        try:
            model = cls(EmbedderSpec(**config), load_pretrained=False)
            model.load_state_dict(state)
        except (TypeError, RuntimeError, ValueError, OSError, ConfigError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFormatError(f"model {path} cannot be loaded: {first}") from exc
        return model.to(device).eval()


HEADS, HEAD_INITS = ("embedding", "hash"), ("random", "identity")


def build_head(spec: EmbedderSpec, in_features: int, pool: str = "") -> EmbeddingHead | HashHead:
    """The head a spec names: float embeddings or binary codes of `spec.bits` bits, for
    `in_features` pooled features (`pool` names the pooling in errors)."""
    if spec.head not in HEADS:
        raise ConfigError(f"model.head must be one of {', '.join(HEADS)}, got {spec.head!r}")
    if spec.head_init != "random":
        check_identity_head(spec, in_features, pool)
    if spec.head == "embedding":
        head = EmbeddingHead(in_features, spec.embedding_dim, spec.normalize, spec.head_bn)
        if spec.head_init == "identity":  # after the random init: the same RNG draws
            head.init_identity()
        return head
    if spec.bits < 8 or spec.bits % 8:
        raise ConfigError(
            f"model.bits must be a positive multiple of 8 (codes are stored packed in bytes), "
            f"got {spec.bits}"
        )
    if spec.hash_activation not in HASH_ACTIVATIONS:
        raise ConfigError(
            f"hash activation must be one of {', '.join(HASH_ACTIVATIONS)}, "
            f"got {spec.hash_activation!r}"
        )
    return HashHead(in_features, spec.bits, spec.head_bn, spec.hash_activation)


def check_identity_head(spec: EmbedderSpec, in_features: int, pool: str = "") -> None:
    """head_init "identity" needs a square linear embedding head with nothing before it."""
    if spec.head_init not in HEAD_INITS:
        raise ConfigError(
            f"model.head_init must be one of {', '.join(HEAD_INITS)}, got {spec.head_init!r}"
        )
    if spec.head != "embedding":
        raise ConfigError(f"model.head_init=identity needs model.head=embedding, not {spec.head}")
    if spec.head_bn:  # BN(x) = (x - mean) / std * gamma + beta: not x, even at its init
        raise ConfigError(
            "model.head_init=identity cannot go with model.head_bn=true "
            "(BatchNorm before the linear map makes the head no identity)"
        )
    if spec.embedding_dim != in_features:
        pooling = f" with {pool} pooling" if pool else ""
        raise ConfigError(
            f"model.head_init=identity needs model.embedding_dim = the pooled feature size, "
            f"{in_features} ({spec.backbone}{pooling}), got {spec.embedding_dim}"
        )


def _from_version_1(config: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config.json (small_cnn only, pooling inside the backbone) as version 2."""
    params = dict(config.get("backbone_params", {}))
    grid = params.pop("pool_size", 1)
    h, w = config.get("image_size", [28, 28])
    channels = int(config.get("in_channels", 1))
    preprocess = Preprocess(
        (int(h), int(w)),
        channels,
        0,  # version 1 resized straight to the input size
        "bilinear",
        tuple(config.get("mean", [0.5] * channels)),
        tuple(config.get("std", [0.5] * channels)),
    )
    return {
        "backbone": config.get("backbone", "small_cnn"),
        "backbone_params": params,
        "pool": "gridmax",
        "pool_params": {"grid": grid},
        "embedding_dim": config.get("embedding_dim", 128),
        "normalize": config.get("normalize", True),
        "in_channels": channels,
        "preprocess": preprocess.to_dict(),
    }
