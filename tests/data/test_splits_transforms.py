"""Validation split by classes, and the transform presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepembed import data
from deepembed.data.splits import class_halves, validation_split
from deepembed.data.transforms import RandomAffine, batch_augmentation, build_transforms
from deepembed.errors import ConfigError, DataError


def test_validation_split_is_class_disjoint_and_seeded(sop_root: Path) -> None:
    labels = np.repeat(np.arange(20), 3)
    dataset = data.TensorImageDataset(np.zeros((60, 1, 2, 2), np.uint8), labels)
    train, val = validation_split(dataset, fraction=0.25, seed=3)
    assert len(np.unique(val.labels)) == 5 and len(train) + len(val) == 60
    assert not set(train.labels) & set(val.labels)
    assert sorted(np.concatenate([train.ids, val.ids]).tolist()) == list(range(60))
    again = validation_split(dataset, fraction=0.25, seed=3)[1]
    other = validation_split(dataset, fraction=0.25, seed=4)[1]
    assert np.array_equal(again.ids, val.ids) and not np.array_equal(other.ids, val.ids)
    sop_train, sop_val = validation_split(data.open("sop", str(sop_root)), 0.5, seed=0)
    assert sop_val.super_labels is not None and not set(sop_train.labels) & set(sop_val.labels)
    with pytest.raises(DataError, match="fraction must be in"):
        validation_split(dataset, fraction=1.0)


def test_class_halves() -> None:
    assert class_halves(["a", "b", "c"], "train") == ["a", "b"]
    assert class_halves(["a", "b", "c"], "test") == ["c"]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        class_halves(["a"], "dev")


def test_imagenet224_presets() -> None:
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    )
    evaluate = build_transforms("imagenet224", train=False)
    out = evaluate(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # eval = shorter side to 256, centre 224 crop: compare with PIL doing the same
    resized = image.resize((341, 256), Image.BILINEAR)
    left, top = (341 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).mean() < 0.02
    torch.manual_seed(0)
    train = build_transforms("imagenet224", train=True)
    a, b = train(image), train(image)
    assert a.shape == (3, 224, 224) and not torch.equal(a, b)
    normalised = build_transforms("imagenet224", train=False, normalize=True)(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(normalised, (out - mean) / std, atol=1e-5)


def test_small_preset_and_batch_augmentation() -> None:
    image = Image.new("RGB", (40, 28), (255, 0, 0))
    out = build_transforms("small", train=True, image_size=28)(image)
    assert out.shape == (3, 28, 28) and torch.allclose(out[0], torch.ones(28, 28))
    assert isinstance(batch_augmentation("small", True), RandomAffine)
    assert isinstance(batch_augmentation("imagenet224", True), torch.nn.Identity)
    assert isinstance(batch_augmentation("small", False), torch.nn.Identity)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_transforms("huge", train=False)
