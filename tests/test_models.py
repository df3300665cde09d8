"""Embedder: shapes, normalisation, self-describing save/load, and broken model directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepembed import Embedder, EmbedderSpec
from deepembed.errors import ModelFormatError
from deepembed.models import BACKBONES

SPEC = EmbedderSpec(backbone_params={"widths": [4, 4, 8, 8, 8]}, embedding_dim=12)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_gives_finite_features_and_gradients(name: str) -> None:
    model = Embedder(EmbedderSpec(backbone=name, embedding_dim=8))
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 8) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)  # L2-normalised
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


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
    assert loaded.spec == SPEC
    assert torch.allclose(loaded.embed(images), expected, atol=1e-6)


def test_preprocess_converts_any_image_to_model_input() -> None:
    model = Embedder(SPEC)
    rgba = Image.fromarray(np.full((40, 30, 4), 200, np.uint8), "RGBA")
    x = model.preprocess(rgba)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_incomplete_directory(tmp_path: Path) -> None:
    Embedder(SPEC).save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"incomplete: no model\.safetensors"):
        Embedder.load(tmp_path / "m")
    with pytest.raises(ModelFormatError, match=r"incomplete: no config\.json"):
        Embedder.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version 99; this deepembed reads 1"),
        ({"kind": "other"}, "does not describe a deepembed model"),
        ({"embedding_dim": 13}, "cannot be loaded"),  # weights no longer fit the config
        ({"unknown_field": 1}, "cannot be loaded"),
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
