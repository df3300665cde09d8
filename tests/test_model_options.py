"""Fine-tuning options of the model (issue 12): `model.center_crop` false (the evaluation
transform resizes the whole image, no centre crop) and `model.head_init` identity (the head
starts as the pooled features), against plain computations, through save/load, a config, a
training run, and for model directories written before these keys existed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepembed import Embedder, EmbedderSpec
from deepembed.config import load_config
from deepembed.errors import ConfigError
from deepembed.training.build import build_model
from deepembed.training.pipeline import train
from tests.conftest import write_folder_dataset

LITE = EmbedderSpec(backbone="efficientnet_lite0", pretrained=False, image_size=64, pool="avg")
IDENTITY = replace(LITE, embedding_dim=1280, head_init="identity")  # 1280 pooled features


def picture(height: int = 90, width: int = 140) -> Image.Image:
    """A non-square RGB noise image: a centre crop and a plain resize see different pixels."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8), "RGB")


def plain_resize(image: Image.Image, size: int) -> torch.Tensor:
    """The oracle: PIL's bicubic resize of the whole image to size x size, as (3, H, W) / 255."""
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


# -- model.center_crop ------------------------------------------------------------------
def test_no_center_crop_resizes_the_whole_image(tmp_path: Path) -> None:
    cropped = Embedder(LITE)
    whole = Embedder(replace(LITE, center_crop=False))
    assert cropped.preprocessing.resize == round(256 * 64 / 224)  # the backbone's own crop
    assert whole.spec.preprocess == {**cropped.spec.preprocess, "resize": 0}
    image = picture()
    assert torch.allclose(whole.preprocess(image), plain_resize(image, 64), atol=1e-6)
    assert not torch.allclose(cropped.preprocess(image), plain_resize(image, 64), atol=0.05)
    whole.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["center_crop"] is False and saved["preprocess"]["resize"] == 0
    loaded = Embedder.load(tmp_path / "m")
    assert loaded.preprocessing == whole.preprocessing and loaded.preprocessing.resize == 0
    assert torch.equal(loaded.preprocess(image), whole.preprocess(image))


def test_no_center_crop_at_the_backbones_own_size() -> None:
    """efficientnet_lite0 at 224: resize 256 + crop 224 becomes a resize straight to 224."""
    model = Embedder(
        EmbedderSpec(backbone="efficientnet_lite0", pretrained=False, center_crop=False)
    )
    assert model.preprocessing.input_size == (224, 224) and model.preprocessing.resize == 0
    image = picture(300, 200)
    assert torch.allclose(model.preprocess(image), plain_resize(image, 224), atol=1e-6)


# -- model.head_init ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pool", "formula"),
    [("avg", lambda m: m.mean((2, 3))), ("avgmax", lambda m: m.mean((2, 3)) + m.amax((2, 3)))],
    ids=["avg", "avgmax"],
)
def test_identity_head_starts_at_the_pooled_features(
    pool: str, formula: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Before any training the embeddings are the L2-normalised pooled backbone features
    (avgmax sums average and max, so it keeps 1280 features)."""
    torch.manual_seed(0)
    model = Embedder(replace(IDENTITY, pool=pool)).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone((x - 0.5) / 0.5)  # efficientnet_lite0 normalises to [-1, 1]
        expected = F.normalize(formula(maps), dim=1)
    assert torch.allclose(model.embed(x), expected, atol=1e-5)
    assert torch.equal(model.head.linear.weight, torch.eye(1280))
    model.train()
    model(x).sum().backward()  # the head is a trainable layer, not a fixed identity
    assert model.head.linear.weight.grad is not None


def test_identity_head_survives_save_load_and_keeps_trained_weights(tmp_path: Path) -> None:
    """Loading a model with head_init identity keeps its saved (trained) head weights."""
    model = Embedder(IDENTITY).eval()
    with torch.no_grad():
        model.head.linear.weight.add_(0.01 * torch.randn(1280, 1280))  # as if trained
    model.save(tmp_path / "m")
    loaded = Embedder.load(tmp_path / "m")
    assert loaded.spec.head_init == "identity"
    assert torch.equal(loaded.head.linear.weight, model.head.linear.weight)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded.embed(x), model.embed(x), atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding_dim": 512}, r"pooled feature size, 1280 \(efficientnet_lite0 with avg"),
        ({"embedding_dim": 0}, r"embedding_dim = the pooled feature size, 1280 .*got 0$"),
        ({"head_bn": True}, r"model\.head_init=identity cannot go with model\.head_bn=true"),
        ({"head": "hash", "bits": 1280}, r"model\.head_init=identity needs model\.head=embedding"),
        ({"head_init": "zeros"}, r"model\.head_init must be one of random, identity"),
    ],
)
def test_identity_head_refuses_what_is_no_identity(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Embedder(replace(IDENTITY, **change))
    assert "\n" not in str(info.value)


def test_identity_head_names_the_concatenated_size_of_gridmax() -> None:
    """small_cnn's gridmax concatenates a 2 x 2 grid and the max: (4 + 1) x 8 = 40 features."""
    spec = EmbedderSpec(
        backbone_params={"widths": [4, 4, 8, 8, 8], "pool_size": 2}, head_init="identity"
    )
    with pytest.raises(ConfigError, match=r"size, 40 \(small_cnn with gridmax pooling\), got 8"):
        Embedder(replace(spec, embedding_dim=8))
    model = Embedder(replace(spec, embedding_dim=40, normalize=False)).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model.embed(x), model.pool(model.backbone((x - 0.5) / 0.5)), atol=1e-6)


# -- both: config, old directories, a run --------------------------------------------------
def test_config_keys_reach_the_model() -> None:
    config = load_config(
        None,
        [
            "model.backbone=efficientnet_lite0",
            "model.pretrained=false",
            "model.image_size=64",
            "model.pool=avg",
            "model.embedding_dim=1280",
            "model.head_init=identity",
            "model.center_crop=false",
        ],
    )
    model = build_model(config, None)
    assert model.spec.head_init == "identity" and model.spec.center_crop is False
    assert model.preprocessing.resize == 0
    assert torch.equal(model.head.linear.weight, torch.eye(1280))
    assert load_config(None).model.center_crop is True  # defaults: unchanged behaviour
    assert load_config(None).model.head_init == "random"


def test_directories_without_the_new_keys_load_as_before(tmp_path: Path) -> None:
    model = Embedder(replace(LITE, embedding_dim=8)).eval()
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    del config["center_crop"], config["head_init"]  # as written before these keys existed
    path.write_text(json.dumps(config))
    loaded = Embedder.load(tmp_path / "m")
    assert (loaded.spec.center_crop, loaded.spec.head_init) == (True, "random")
    assert loaded.preprocessing == model.preprocessing and loaded.preprocessing.resize == 73
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded.embed(x), model.embed(x), atol=1e-6)


def test_a_run_with_both_options_saves_them(tmp_path: Path) -> None:
    """Non-square image files, a frozen bank, an identity head: the saved model resizes
    without a crop, and training moved its head away from the identity."""
    root = write_folder_dataset(tmp_path / "data", 40, 56)
    config = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "name=options",
            "data.name=folder",
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.backbone=efficientnet_lite0",
            "model.pretrained=false",
            "model.image_size=32",
            "model.pool=avg",
            "model.embedding_dim=1280",
            "model.head_init=identity",
            "model.center_crop=false",
            "model.freeze_stages=5",
            "sampler.classes_per_batch=2",
            "sampler.images_per_class=3",
            "train.epochs=1",
            "train.frozen_views=1",
            "eval.metrics=[recall@1]",
            "loss.name=contrastive",
            "miner.name=",
        ],
    )
    result = train(config, progress=False)
    model = Embedder.load(result.model_dir)
    assert model.preprocessing.resize == 0 and model.spec.head_init == "identity"
    assert not torch.equal(model.head.linear.weight, torch.eye(1280))
    image = Image.open(next(root.glob("c0/*.png")))
    assert torch.allclose(model.preprocess(image), plain_resize(image, 32), atol=1e-6)
