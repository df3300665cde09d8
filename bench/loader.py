"""Can the data loader keep a 224-px training step fed?

Writes synthetic photo-like JPEGs (300-500 px, smooth colour fields plus grain, so they
compress like photos), then measures decode + imagenet224 train augmentation in images/s
through a DataLoader at several worker counts, and the images/s of a resnet18 training step
(forward + backward + SGD, random init) at 224 px on the same machine. Loading keeps up when
its rate exceeds the step's.

    python bench/loader.py                      # the full run (500 images)
    python bench/loader.py --images 64 --steps 2 --batch 8 --workers 0,1   # a quick check
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from deepembed import data


def write_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs in 10 class folders, sizes 300-500 px, quality 90."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = rng.integers(300, 501, 2)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # smooth colour field
        base = np.asarray(Image.fromarray(coarse).resize((int(w), int(h)), Image.BICUBIC))
        grain = rng.normal(0, 12, base.shape)
        pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
        path = folder / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)


def loader_rate(root: Path, workers: int, batch: int) -> float:
    """Images/s of decode + RandomResizedCrop(224) + flip over one pass, worker start included
    (excluding it would credit the workers' prefetch of the first batches to no time)."""
    dataset = data.open("folder", str(root), "all", transform="imagenet224", augment=True)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=data.collate,
        persistent_workers=False,
    )
    seen, start = 0, time.perf_counter()
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def train_step_rate(batch: int, steps: int, device: torch.device) -> float:
    """Images/s of resnet18 forward + backward + SGD step on (batch, 3, 224, 224)."""
    model = torchvision.models.resnet18(num_classes=128).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(batch, 3, 224, 224, device=device)
    start = time.perf_counter()
    for step in range(steps + 1):
        if step == 1:  # the first step allocates and warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(images).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_jpegs(root, args.images)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.1f} s")
        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            rates[workers] = loader_rate(root, workers, args.batch)
            print(f"loader  num_workers={workers}: {rates[workers]:8.1f} images/s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = train_step_rate(args.batch, args.steps, device)
    print(f"train step resnet18 224px batch {args.batch} on {device}: {step:8.1f} images/s")
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    print(
        f"best loader / train step = {rates[best] / step:.1f}x (num_workers={best}); "
        f"{'keeps up' if rates[best] >= step else 'does NOT keep up'}"
    )


if __name__ == "__main__":
    main()
