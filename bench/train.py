"""Trainer overhead: images/s of deepembed's Trainer against the plain PyTorch loop a user
would write, same model, batches, loss, optimizer and schedule, in one run.

Both train the mnist30 demo model (small_cnn, 128-d, circle loss, Adam + cosine schedule)
on the same P x K index batches of the in-memory mnist30 training set, read through a
DataLoader with the same batch sampler and no workers. The plain loop is

    for images, labels in loader:
        loss = loss_fn(model(images), labels); opt.zero_grad(); loss.backward(); opt.step()
        sched.step()

and the Trainer adds what it is for: callbacks on every event, batches seeded by
(seed, epoch, step), the objective's gradient sync (a no-op on one process), the AMP
scaler (disabled), the loss summed on the device. Runs alternate (plain, trainer, plain,
trainer ...) and the median images/s of each is reported, so drift of a shared machine
hits both alike. `--amp bf16` also times the Trainer with bf16 autocast.

    .venv/bin/python bench/train.py [--steps 40] [--repeats 3] [--amp bf16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepembed import data
from deepembed.config import load_config
from deepembed.data.datasets import collate
from deepembed.training.build import build_model, make_optimizer, make_scheduler
from deepembed.training.objective import MetricObjective, build_objective
from deepembed.training.trainer import Trainer


class FixedBatches:
    """The same index batches every epoch (a stand-in for a P x K sampler)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs."""

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def setup(device: str) -> tuple:
    config = load_config("configs/mnist30.yaml", [f"train.device={device}"])
    train_set = data.open("mnist30", "", "train", config.data.eval_per_source, 0, transform=None)
    sampler = data.PKSampler(
        train_set.labels, config.sampler.classes_per_batch, config.sampler.images_per_class, 0
    )
    return config, train_set, sampler.plan(0)


def fresh(config, train_set, device: str) -> tuple:
    """Model, objective, optimizer and schedule, identically seeded each time."""
    torch.manual_seed(0)
    model = build_model(config, train_set).to(device)
    class_index = torch.as_tensor(np.unique(train_set.labels), device=device)
    loss_fn, miner = build_objective(config, len(class_index), model.embedding_dim)
    objective = MetricObjective(loss_fn, miner, class_index).to(device)
    optimizer = make_optimizer(config, model, objective)
    scheduler = make_scheduler(optimizer, "cosine", 10_000)
    return model, objective, optimizer, scheduler


def plain(config, train_set, batches, device: str) -> float:
    """images/s of the plain loop over `batches`."""
    model, objective, optimizer, scheduler = fresh(config, train_set, device)
    loss_fn, class_index = objective.loss_fn, objective.class_index
    loader = DataLoader(train_set, batch_sampler=FixedBatches(batches), collate_fn=collate)
    model.train()
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = loss_fn(model(images), torch.searchsorted(class_index, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    loss.item()  # wait for the device
    return len(batches) * len(batches[0]) / (time.perf_counter() - start)


def trainer(config, train_set, batches, device: str, amp: str = "off") -> float:
    """images/s of Trainer.fit over `batches` (one epoch)."""
    model, objective, optimizer, scheduler = fresh(config, train_set, device)
    run = Trainer(
        model,
        objective,
        train_set,
        FixedBatches(batches),
        optimizer,
        scheduler,
        epochs=1,
        amp=amp,
        progress=False,
    )
    start = time.perf_counter()
    run.fit()
    run.last_loss()
    return len(batches) * len(batches[0]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", default="", help="also time the Trainer with this train.amp")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config, train_set, plan = setup(args.device)
    batches = plan[: args.steps]
    warm = plan[:3]
    plain(config, train_set, warm, args.device)  # first-call costs (allocator, kernels)
    trainer(config, train_set, warm, args.device)
    runs: dict[str, list[float]] = {"plain": [], "trainer": []}
    if args.amp:
        runs[f"trainer {args.amp}"] = []
    for _ in range(args.repeats):
        runs["plain"].append(plain(config, train_set, batches, args.device))
        runs["trainer"].append(trainer(config, train_set, batches, args.device))
        if args.amp:
            runs[f"trainer {args.amp}"].append(
                trainer(config, train_set, batches, args.device, args.amp)
            )
    median = {name: statistics.median(values) for name, values in runs.items()}
    size = len(batches[0])
    print(f"{args.steps} steps of {size} images, {args.device}, {args.repeats} runs each")
    for name, values in runs.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<14} median {median[name]:7.0f} img/s  (runs: {shown})")
    print(f"trainer / plain: {median['trainer'] / median['plain']:.3f}x")
    if args.amp:
        ratio = median[f"trainer {args.amp}"] / median["trainer"]
        print(f"{args.amp} / fp32 trainer: {ratio:.3f}x")


if __name__ == "__main__":
    main()
