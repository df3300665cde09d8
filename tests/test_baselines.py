"""Baselines a run is compared with: the off-the-shelf backbone is what `deepembed model
create` gives, and raw pixels are the pooled input, both by the plain computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.cli.model import create_model
from deepembed.data import TensorImageDataset
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.results import off_the_shelf, raw_pixels


def test_off_the_shelf_is_the_model_create_baseline(tmp_path: Path) -> None:
    trained = Embedder(
        EmbedderSpec(
            backbone="efficientnet_lite0", pretrained=True, pool="avgmax", image_size=64,
            center_crop=False, embedding_dim=32, head_bn=True,
        )
    )  # fmt: skip
    with torch.no_grad():  # as if trained: the backbone's weights moved away from ImageNet
        next(trained.backbone.parameters()).add_(0.5)
    base = off_the_shelf(trained)
    created = create_model(
        "efficientnet_lite0", tmp_path / "m", 0, True, "avgmax", 64, center_crop=False
    )
    assert base.embedding_dim == created.embedding_dim == 1280  # avg + max, summed
    assert base.preprocessing == trained.preprocessing == created.preprocessing
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():  # ImageNet's weights, not the changed ones
        torch.testing.assert_close(base(images), created.eval()(images))


def test_raw_pixels_are_the_pooled_input_in_item_order() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (10, 3, 48, 40), dtype=np.uint8)
    images = torch.from_numpy(pixels).float() / 255  # what the dataset's items hold
    labels = np.arange(10) % 3
    dataset = TensorImageDataset(pixels, labels, ids=np.arange(100, 110))
    got = raw_pixels(dataset, batch_size=4)
    want = F.adaptive_avg_pool2d(images, 32).flatten(1).numpy()  # at most 32 x 32
    np.testing.assert_allclose(got.vectors, want, atol=1e-6)
    assert got.labels.tolist() == labels.tolist() and got.ids.tolist() == list(range(100, 110))
    small = raw_pixels(TensorImageDataset(pixels[:, :, :28, :28].copy(), labels))
    np.testing.assert_allclose(small.vectors, images[:, :, :28, :28].flatten(1).numpy(), atol=1e-6)
