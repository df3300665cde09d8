"""Fine-tuning speed on a CPU: `deepembed train configs/images.yaml` against the plain
PyTorch loop a user would write for the same recipe, in one run.

Both fine-tune ImageNet EfficientNet-Lite0 (same weights file, same resolution, the same
first stages frozen with BatchNorm statistics fixed, avg+max pooling, the same linear head,
Proxy-Anchor with the same margin/alpha/learning rates, batches of 32, the same DataLoader
workers). The peer decodes and augments every file every epoch with torchvision transforms
and uses pytorch-metric-learning's ProxyAnchorLoss; deepembed decodes once into its cache,
runs the frozen stages once on `train.frozen_views` augmented views, trains NHWC.

Reported: training images/s of the epochs after the first (the steady state the issue
asks for), and the wall-clock of the whole fine-tuning including one-time work (decoding,
the frozen-stage bank; deepembed's final test evaluation is excluded).

    .venv/bin/python bench/finetune.py [--epochs 3] [section.key=value ...]
    .venv/bin/python bench/finetune.py --breakdown   # where a plain-loop step spends its time
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from pytorch_metric_learning.losses import ProxyAnchorLoss
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from deepembed import data
from deepembed.config import RunConfig, load_config
from deepembed.models.backbones import efficientnet_lite_weights
from deepembed.training import train


class Files(Dataset):
    """(path, label) pairs decoded with PIL and transformed per item, every epoch."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform: T.Compose) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


class PeerModel(nn.Module):
    """EfficientNet-Lite0 trunk + avg+max pooling + a linear head (the recipe's
    embedding_dim; the identity at start when the recipe's head_init says so), L2-normalised."""

    def __init__(self, frozen_blocks: int, dim: int, identity: bool) -> None:
        super().__init__()
        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(efficientnet_lite_weights())
        )
        self.head = nn.Linear(1280, dim)
        if identity:
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(dim, 1280))
                self.head.bias.zero_()
        frozen = [self.net._conv_stem, self.net._bn0, *self.net._blocks[:frozen_blocks]]
        for module in frozen:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> PeerModel:
        super().train(mode)
        for m in self.net.modules():  # frozen BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.net.extract_features(x)
        pooled = maps.mean((2, 3)) + maps.amax((2, 3))
        return nn.functional.normalize(self.head(pooled), dim=1)


def peer_model(config: RunConfig) -> PeerModel:
    """The peer's model for the recipe; our stage 0 is the stem, stages 1..3 the first
    1 + 2 + 2 = 5 blocks."""
    dim = config.model.embedding_dim or 1280
    return PeerModel(5, dim, config.model.head_init == "identity")


def peer_transform(config: RunConfig) -> T.Compose:
    """What a user writes: bicubic random resized crop, flip, to tensor, normalise."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                config.model.image_size,
                (config.data.crop_scale, 1.0),
                interpolation=T.InterpolationMode.BICUBIC,
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def peer(config: RunConfig, epochs: int) -> dict[str, float]:
    """The plain loop: torchvision transforms on files, PML's loss, Adam."""
    train_set = data.open(config.data.name, config.data.root, "train", transform=None)
    labels = np.searchsorted(np.unique(train_set.labels), train_set.labels)
    transform = peer_transform(config)
    loader = DataLoader(
        Files(list(train_set.paths), labels, transform),
        batch_size=config.sampler.classes_per_batch * config.sampler.images_per_class,
        shuffle=True,
        drop_last=True,
        num_workers=config.data.num_workers,
    )
    model = peer_model(config)
    loss_fn = ProxyAnchorLoss(int(labels.max()) + 1, model.head.out_features, margin=0.1, alpha=32)
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in model.parameters() if p.requires_grad]},
            {"params": loss_fn.parameters(), "lr": config.optim.loss_lr},
        ],
        lr=config.optim.lr,
    )
    rates, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        begin, seen = time.perf_counter(), 0
        for images, batch_labels in loader:
            loss = loss_fn(model(images), batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(batch_labels)
        rates.append(seen / (time.perf_counter() - begin))
        print(f"  peer epoch {epoch + 1}: {rates[-1]:.1f} img/s", flush=True)
    return {"images_per_s": float(np.mean(rates[1:])), "wall_s": time.perf_counter() - start}


def ours(config: RunConfig) -> dict[str, float]:
    """deepembed train with the recipe; images/s from the run's own history."""
    result = train(config, progress=False)
    rates = [h["train_images_per_s"] for h in result.history]
    for epoch, rate in enumerate(rates, 1):
        print(f"  deepembed epoch {epoch}: {rate:.1f} img/s", flush=True)
    timings = result.metrics["timings"]
    wall = timings["decode_s"] + timings["frozen_bank_s"] + timings["epochs_s"]
    return {"images_per_s": float(np.mean(rates[1:])), "wall_s": wall, **timings}


def breakdown(config: RunConfig, batches: int = 8) -> dict[str, float]:
    """Where a plain-loop step's time goes, in ms per image: decoding, resize + augmentation,
    the frozen stages' forward, the trainable stages' forward + backward + step, the loss."""
    from PIL import Image

    train_set = data.open(config.data.name, config.data.root, "train", transform=None)
    labels = torch.as_tensor(np.searchsorted(np.unique(train_set.labels), train_set.labels))
    bsz = 32
    augment = peer_transform(config)
    model = peer_model(config).train()
    loss_fn = ProxyAnchorLoss(int(labels.max()) + 1, model.head.out_features, margin=0.1, alpha=32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([*trainable, *loss_fn.parameters()], lr=1e-4)
    net = model.net
    spent = dict.fromkeys(["decode", "augment", "frozen", "trainable", "loss"], 0.0)
    rng = np.random.default_rng(0)
    for step in range(batches + 1):
        rows = rng.choice(len(train_set), bsz, replace=False)
        t0 = time.perf_counter()
        pictures = []
        for r in rows:
            with Image.open(train_set.paths[r]) as image:
                pictures.append(image.convert("RGB"))
        t1 = time.perf_counter()
        x = torch.stack([augment(p) for p in pictures])
        t2 = time.perf_counter()
        with torch.no_grad():
            h = net._swish(net._bn0(net._conv_stem(x)))
            for i, block in enumerate(net._blocks[:5]):
                h = block(h, drop_connect_rate=0.2 * i / len(net._blocks))
        t3 = time.perf_counter()
        for i, block in enumerate(net._blocks[5:], 5):
            h = block(h, drop_connect_rate=0.2 * i / len(net._blocks))
        maps = net._swish(net._bn1(net._conv_head(h)))
        out = nn.functional.normalize(model.head(maps.mean((2, 3)) + maps.amax((2, 3))), dim=1)
        t4 = time.perf_counter()
        loss = loss_fn(out, labels[rows])
        t5 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        t6 = time.perf_counter()
        if step == 0:
            continue  # warm-up
        spent["decode"] += t1 - t0
        spent["augment"] += t2 - t1
        spent["frozen"] += t3 - t2
        spent["trainable"] += (t4 - t3) + (t6 - t5)
        spent["loss"] += t5 - t4
    return {k: 1000 * v / (batches * bsz) for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="only the per-part times")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.breakdown:
        config = load_config("configs/images.yaml", args.overrides)
        parts = breakdown(config)
        total = sum(parts.values())
        for name, ms in parts.items():
            print(f"{name:>10}: {ms:6.2f} ms/img ({100 * ms / total:4.1f}%)")
        print(f"{'total':>10}: {total:6.2f} ms/img = {1000 / total:.1f} img/s")
        return
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"output_dir={tmp}",
            f"train.epochs={args.epochs}",
            "train.warmup_epochs=0",  # every epoch trains the same layers in both loops
            f"data.cache_dir={tmp}/cache",  # the first decoding is part of the run
            "eval.metrics=[recall@1]",
            *args.overrides,
        ]
        config = load_config("configs/images.yaml", overrides)
        print(
            f"threads {torch.get_num_threads()}, {config.data.name}, {config.model.image_size} px"
        )
        mine = ours(config)
        theirs = peer(config, args.epochs)
    ratio = mine["images_per_s"] / theirs["images_per_s"]
    print(json.dumps({"deepembed": mine, "peer": theirs}, indent=2))
    print(
        f"steady-state epoch: deepembed {mine['images_per_s']:.1f} img/s, plain loop "
        f"{theirs['images_per_s']:.1f} img/s: {ratio:.2f}x; whole fine-tune ({args.epochs} epochs) "
        f"{mine['wall_s']:.0f} s vs {theirs['wall_s']:.0f} s: "
        f"{theirs['wall_s'] / mine['wall_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
