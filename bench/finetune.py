"""Fine-tuning speed on a CPU: `deepembed train configs/images.yaml` against the plain
PyTorch loop a user would write for the same recipe, in one run.

Both fine-tune ImageNet EfficientNet-Lite0 (same weights file, same resolution, the same
first stages frozen with BatchNorm statistics fixed, avg+max pooling, a 512-d linear head,
Proxy-Anchor with the same margin/alpha/learning rates, batches of 32, the same DataLoader
workers). The peer decodes and augments every file every epoch with torchvision transforms
and uses pytorch-metric-learning's ProxyAnchorLoss; deepembed decodes once into its cache,
runs the frozen stages once on `train.frozen_views` augmented views, trains NHWC.

Reported: training images/s of the epochs after the first (the steady state the issue
asks for), and the wall-clock of the whole fine-tuning including one-time work (decoding,
the frozen-stage bank; deepembed's final test evaluation is excluded).

    .venv/bin/python bench/finetune.py [--epochs 3] [section.key=value ...]
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
    """EfficientNet-Lite0 trunk + avg+max pooling + linear 512, L2-normalised."""

    def __init__(self, frozen_blocks: int) -> None:
        super().__init__()
        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(efficientnet_lite_weights())
        )
        self.head = nn.Linear(1280, 512)
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


def peer(config: RunConfig, epochs: int) -> dict[str, float]:
    """The plain loop: torchvision transforms on files, PML's loss, Adam."""
    train_set = data.open(config.data.name, config.data.root, "train", transform=None)
    labels = np.searchsorted(np.unique(train_set.labels), train_set.labels)
    size = config.model.image_size
    transform = T.Compose(
        [
            T.RandomResizedCrop(
                size, (config.data.crop_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    loader = DataLoader(
        Files(list(train_set.paths), labels, transform),
        batch_size=config.sampler.classes_per_batch * config.sampler.images_per_class,
        shuffle=True,
        drop_last=True,
        num_workers=config.data.num_workers,
    )
    # our stage 0 is the stem; stages 1..3 are the first 1 + 2 + 2 = 5 blocks
    model = PeerModel(frozen_blocks=5)
    loss_fn = ProxyAnchorLoss(int(labels.max()) + 1, 512, margin=0.1, alpha=32)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
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
