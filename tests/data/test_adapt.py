"""for_model: the one preprocessing path, and its loading options really change what happens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepembed import data
from deepembed.data.adapt import Loading, ResizedTensorDataset, for_model
from deepembed.data.cached_items import CachedImageDataset
from deepembed.data.images import load_image
from deepembed.data.preprocess import Preprocess

PRE = Preprocess((24, 24), 3, 28, "bilinear", (0.5,) * 3, (0.5,) * 3)


def folder(root: Path) -> data.ImageFileDataset:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (40 + 7 * i, 50, 3), np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return data.open("folder", str(root), "all", transform=None)


def test_cache_option_decides_whether_files_are_cached(tmp_path: Path) -> None:
    items = folder(tmp_path / "data")
    cached = for_model(items, PRE, loading=Loading(cache_dir=str(tmp_path / "c"), progress=False))
    assert isinstance(cached, CachedImageDataset)
    assert list((tmp_path / "c").glob("*.npy"))
    plain = for_model(items, PRE, loading=Loading(cache=False, cache_dir=str(tmp_path / "d")))
    assert isinstance(plain, data.ImageFileDataset) and not (tmp_path / "d").exists()
    # both give exactly the model's evaluation transform
    expected = PRE.transform()(load_image(items.paths[3]))
    assert torch.equal(cached[3][0], expected) and torch.equal(plain[3][0], expected)


def test_crop_scale_and_cache_size_reach_the_cache(tmp_path: Path) -> None:
    items = folder(tmp_path / "data")
    how = Loading(cache_dir=str(tmp_path / "c"), crop_scale=0.9, progress=False)
    train = for_model(items, PRE, train=True, augment=True, loading=how)
    assert isinstance(train, CachedImageDataset) and train.scale == (0.9, 1.0)
    tiny = Loading(cache_dir=str(tmp_path / "e"), max_cache_gb=1e-9, progress=False)
    fallback = for_model(items, PRE, loading=tiny)  # over the limit: decoded per item
    assert isinstance(fallback, data.ImageFileDataset)
    assert not list((tmp_path / "e").glob("*.npy"))


def test_in_memory_images_are_brought_to_the_model_input() -> None:
    grey = data.TensorImageDataset(np.full((3, 28, 28), 128, np.uint8), np.array([0, 1, 1]))
    native = Preprocess((28, 28), 1, 0, "bilinear", (0.5,), (0.5,))
    assert for_model(grey, native) is grey  # already the input shape: used as it is
    adapted = for_model(grey, PRE)
    assert isinstance(adapted, ResizedTensorDataset) and adapted.image_shape == (3, 24, 24)
    images, labels = adapted.__getitems__([0, 2])
    assert images.shape == (2, 3, 24, 24) and labels.tolist() == [0, 1]
    assert torch.allclose(images, torch.full_like(images, 128 / 255), atol=1e-6)
