"""Embedder: shapes, pooling and heads against their formulas, self-describing save/load
(version 1 directories included), preprocessing, fine-tuning controls, broken directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode, v2

from deepembed import Embedder, EmbedderSpec
from deepembed.errors import ConfigError, ModelFormatError
from deepembed.models.pooling import POOLS, create_pool

SPEC = EmbedderSpec(backbone_params={"widths": [4, 4, 8, 8, 8]}, embedding_dim=12)
LITE = EmbedderSpec(backbone="efficientnet_lite0", pretrained=False, embedding_dim=8, image_size=64)


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("spec", [SPEC, LITE], ids=["small_cnn", "efficientnet_lite0"])
def test_every_pooling_gives_finite_normalised_embeddings_and_gradients(
    spec: EmbedderSpec, pool: str
) -> None:
    model = Embedder(EmbedderSpec(**{**spec.__dict__, "pool": pool}))
    x = torch.rand(4, *model.preprocessing.shape)
    out = model(x)
    assert out.shape == (4, model.embedding_dim) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)  # L2-normalised
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_poolings_match_their_formulas() -> None:
    torch.manual_seed(0)
    maps = torch.rand(3, 5, 4, 6)  # (B, C, h, w), positive like post-ReLU features
    flat = maps.flatten(2)  # (B, C, h*w)
    expected = {
        "avg": flat.mean(2),
        "max": flat.max(2).values,
        "avgmax": flat.mean(2) + flat.max(2).values,
        "gem": flat.pow(3).mean(2).pow(1 / 3),
    }
    for name, value in expected.items():
        assert torch.allclose(create_pool(name, 5)(maps), value, atol=1e-6), name
    grid = create_pool("gridmax", 5, grid=2)(maps)
    cells = [
        maps[:, :, i * 2 : i * 2 + 2, j * 3 : j * 3 + 3].mean((2, 3))
        for i in (0, 1)
        for j in (0, 1)
    ]
    manual = torch.cat([torch.stack(cells, 2).flatten(1), flat.max(2).values], 1)
    assert grid.shape == (3, 25) and torch.allclose(grid, manual, atol=1e-6)


def test_gem_exponent_is_learned() -> None:
    pool = create_pool("gem", 4, p=2.0)
    pool(torch.rand(2, 4, 3, 3)).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0


def test_embedding_dim_zero_keeps_the_pooled_features() -> None:
    model = Embedder(EmbedderSpec(**{**LITE.__dict__, "embedding_dim": 0, "normalize": False}))
    model.eval()  # batch statistics and drop-connect would differ between the two calls
    x = torch.rand(2, *model.preprocessing.shape)
    assert model.embedding_dim == 1280
    maps = model.backbone((x - model.mean) / model.std)
    assert torch.allclose(model(x), maps.mean((2, 3)), atol=1e-6)


def test_head_batch_norm_sits_before_the_projection() -> None:
    model = Embedder(EmbedderSpec(**{**SPEC.__dict__, "head_bn": True, "normalize": False}))
    model.eval()
    x = torch.rand(3, *model.preprocessing.shape)
    pooled = model.pool(model.backbone((x - model.mean) / model.std))
    assert torch.allclose(model(x), model.head.linear(model.head.bn(pooled)), atol=1e-6)


def test_save_load_round_trip_needs_nothing_else(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Embedder(SPEC).eval()
    images = torch.rand(5, 1, 28, 28)
    expected = model.embed(images)
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = Embedder.load(tmp_path / "model")
    assert loaded.spec == model.spec
    assert torch.allclose(loaded.embed(images), expected, atol=1e-6)


def test_load_never_reads_the_pretrained_weights_again(tmp_path: Path) -> None:
    """A model built from a local weights file loads after that file is gone."""
    source = Embedder(LITE)
    weights = tmp_path / "lite.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(weights))
    spec = EmbedderSpec(**{**LITE.__dict__, "pretrained": str(weights)})
    model = Embedder(spec).eval()
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    model.save(tmp_path / "m")
    weights.unlink()
    loaded = Embedder.load(tmp_path / "m")
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded.embed(x), model.embed(x), atol=1e-6)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pretrained"] == str(weights)


def test_version_1_directories_still_load(tmp_path: Path) -> None:
    """A directory as format 1 wrote it (small_cnn pooling inside the backbone, image_size
    and mean/std at the top level) loads and embeds as that model did."""
    torch.manual_seed(0)
    reference = Embedder(
        EmbedderSpec(backbone_params={"widths": [4, 4, 8, 8, 8], "pool_size": 2}, embedding_dim=6)
    ).eval()
    old = tmp_path / "v1"
    old.mkdir()
    config = {
        "format_version": 1,
        "kind": "deepembed.Embedder",
        "backbone": "small_cnn",
        "backbone_params": {"widths": [4, 4, 8, 8, 8], "pool_size": 2},
        "embedding_dim": 6,
        "normalize": True,
        "in_channels": 1,
        "image_size": [28, 28],
        "mean": [0.5],
        "std": [0.5],
    }
    (old / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(old / "model.safetensors"),
    )
    loaded = Embedder.load(old)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(loaded.embed(x), reference.embed(x), atol=1e-6)
    assert loaded.spec.pool == "gridmax" and loaded.spec.pool_params == {"grid": 2}
    # version 1 resized straight to the input size (no crop)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), np.uint8), "L")
    resized = picture.resize((28, 28), Image.Resampling.BILINEAR)
    assert loaded.preprocess(picture).shape == (1, 28, 28)
    assert np.abs(loaded.preprocess(picture)[0].numpy() * 255 - np.asarray(resized)).max() <= 1.0


def test_preprocess_is_exactly_the_evaluation_transform() -> None:
    """efficientnet_lite0's preprocessing: bicubic resize of the shorter side to 256, centre
    crop 224, RGB in [0, 1] (the model normalises to [-1, 1] itself)."""
    model = Embedder(EmbedderSpec(backbone="efficientnet_lite0", pretrained=False))
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8), "RGB")
    oracle = v2.Compose(
        [
            v2.Resize(256, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    assert torch.equal(model.preprocess(picture), oracle(picture))
    assert model.spec.preprocess == {
        "input_size": [224, 224],
        "channels": 3,
        "resize": 256,
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5] * 3))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_preprocess_accepts_every_image_mode(mode: str) -> None:
    """Grey, palette, RGBA, CMYK and 16-bit images give the same input as their RGB view."""
    model = Embedder(LITE)
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, (50, 70), np.uint8)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    else:
        image = Image.fromarray(grey, "L").convert(mode)
    rgb = Image.fromarray(grey, "L").convert("1" if mode == "1" else "L").convert("RGB")
    x = model.preprocess(image)
    assert x.shape == (3, 64, 64)
    assert torch.allclose(x, model.preprocess(rgb), atol=1 / 255 + 1e-6)


def test_image_size_rescales_the_backbone_preprocessing() -> None:
    model = Embedder(EmbedderSpec(backbone="efficientnet_lite0", pretrained=False, image_size=160))
    assert model.spec.preprocess["input_size"] == [160, 160]
    assert model.spec.preprocess["resize"] == round(256 * 160 / 224)


def test_freeze_stages_and_batch_norm() -> None:
    """Frozen stages get no gradient and keep their BatchNorm statistics in train mode;
    freeze_bn keeps every backbone BatchNorm in eval mode; later stages still learn."""
    model = Embedder(LITE)
    stages = model.backbone.stages()
    model.freeze(3, bn=False)
    model.train()
    frozen = [p for stage in stages[:3] for m in stage for p in m.parameters()]
    trainable = [p for stage in stages[3:] for m in stage for p in m.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in trainable)
    first_bn = model.backbone.stem[1]
    later_bn = model.backbone.head[1]
    assert not first_bn.training and later_bn.training
    before = first_bn.running_mean.clone()
    model(torch.rand(4, 3, 64, 64)).sum().backward()
    assert torch.equal(first_bn.running_mean, before)
    assert all(p.grad is None for p in frozen)
    model.freeze(0, bn=True)  # unfreezes the stages, freezes all statistics
    model.train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(
        not m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    with pytest.raises(ConfigError, match="freeze_stages=99"):
        model.freeze(99)


def test_incomplete_directory(tmp_path: Path) -> None:
    Embedder(SPEC).save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"incomplete: no model\.safetensors"):
        Embedder.load(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"incomplete: no config\.json"):
        Embedder.load(tmp_path / "empty")
    with pytest.raises(ModelFormatError, match="not found"):
        Embedder.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version 99; this deepembed reads 1-2"),
        ({"kind": "other"}, "does not describe a deepembed model"),
        ({"embedding_dim": 13}, "cannot be loaded"),  # weights no longer fit the config
        ({"unknown_field": 1}, "cannot be loaded"),
        ({"backbone": "nonsense"}, "cannot be loaded"),
    ],
)
def test_incompatible_directory(tmp_path: Path, change: dict, message: str) -> None:
    Embedder(SPEC).save(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ModelFormatError, match=message):
        Embedder.load(tmp_path / "m")


def test_save_replaces_atomically(tmp_path: Path) -> None:
    Embedder(SPEC).save(tmp_path / "m")
    Embedder(SPEC).save(tmp_path / "m")  # overwriting leaves one complete directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    Embedder.load(tmp_path / "m")


@pytest.mark.parametrize(
    "backbone", ["efficientnet_lite0", "torchvision/resnet18", "torchvision/mobilenet_v3_small"]
)
def test_splittable_backbones_resume_exactly_between_stages(backbone: str) -> None:
    """run(run(x, 0, k), k) is forward(x) for every stage boundary k: what the frozen-stage
    bank relies on."""
    from deepembed.models.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone(backbone, pretrained=False).eval()
    assert net.splittable
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        whole = net(x)
        for k in range(len(net.stages()) + 1):
            assert torch.equal(net.run(net.run(x, 0, k), k), whole), k


def test_other_backbones_refuse_to_split() -> None:
    from deepembed.models.backbones import create_backbone

    net = create_backbone("small_cnn", pretrained=False)
    assert not net.splittable
    with pytest.raises(NotImplementedError):
        net.run(torch.rand(1, 1, 28, 28), 0, 2)
