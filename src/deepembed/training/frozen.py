"""Frozen first stages computed once: a bank of augmented views of every training image.

When the first N backbone stages are frozen (model.freeze_stages) their output depends on
the input image only, so recomputing it every epoch is wasted work: on a CPU it is most of
the cost at high resolution. With train.frozen_views = V > 0, each training image is
augmented V times (the dataset's own random crops and flips), passed once through the
frozen stages, and the feature maps are kept as float16 in a memory-mapped file; each
epoch then draws one of the V views per image and trains the remaining stages on it.
Augmentation becomes a fixed set of V views per image instead of a fresh one per epoch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deepembed.config import RunConfig
from deepembed.data.datasets import collate
from deepembed.models.embedder import Embedder


class FeatureBank(Dataset):
    """Views (N, V, C, h, w) float16 of N training images; an item is one random view."""

    def __init__(self, views: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.views, self.labels = views, labels
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        features, labels = self.__getitems__([index])
        return features[0], int(labels[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.draw(indices, self.rng)

    def draw(
        self, indices: list[int], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, C, h, w) float32, (B,) labels): one view of each item, chosen by `rng`."""
        rows = np.asarray(indices)
        picks = rng.integers(0, self.views.shape[1], len(rows))
        features = torch.from_numpy(np.asarray(self.views[rows, picks], dtype=np.float32))
        return features, torch.from_numpy(self.labels[rows])


def bank_bytes(model: Embedder, stage: int, n: int, views: int) -> int:
    """Bytes the bank of `n` images x `views` views takes (one dry run on a zero image)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        device = model.mean.device
        shape = model.features_at(torch.zeros(1, *model.preprocessing.shape, device=device), stage)
        model.train(was)
    return int(np.prod(shape.shape[1:])) * 2 * n * views


def build_bank(
    model: Embedder,
    stage: int,
    dataset: Any,
    views: int,
    directory: Path,
    seed: int,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> FeatureBank:
    """Pass `views` augmented copies of every item of `dataset` through the first `stage`
    backbone stages (eval mode, no gradient) into a float16 file in `directory`.

    The file is unlinked as soon as it is mapped, so nothing is left behind even if the run
    is killed; the mapping lives as long as the bank.
    """
    directory.mkdir(parents=True, exist_ok=True)
    device = model.mean.device
    was = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    array: np.ndarray | None = None
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the views' random crops are reproducible
    bar = tqdm(total=len(dataset) * views, desc="frozen stages", unit="img", disable=not progress)
    try:
        with torch.no_grad():
            for view in range(views):
                row = 0
                for images, _ in loader:
                    images = images.to(device).contiguous(memory_format=torch.channels_last)
                    features = model.features_at(images, stage).half().cpu().numpy()
                    if array is None:
                        array = _mapped(directory, (len(dataset), views, *features.shape[1:]))
                    array[row : row + len(features), view] = features
                    row += len(features)
                    bar.update(len(features))
    finally:
        bar.close()
        torch.random.set_rng_state(generator_state)
        model.train(was)
    assert array is not None, "empty training set"
    return FeatureBank(array, np.asarray(dataset.labels), seed)


def _mapped(directory: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A float16 array of `shape` in a file that is already unlinked."""
    fd, name = tempfile.mkstemp(prefix=".frozen-", suffix=".f16", dir=directory)
    try:
        os.ftruncate(fd, int(np.prod(shape)) * 2)
        array = np.memmap(name, dtype=np.float16, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(name)
    return array


def frozen_bank(
    config: RunConfig,
    model: Embedder,
    train_set: Any,
    run_dir: Path,
    progress: bool,
    main: bool = True,
) -> tuple[int, FeatureBank | None]:
    """(stage, bank) when train.frozen_views asks for one and the model allows it, else
    (0, None): the frozen first stages are then recomputed every step. Only `main` (rank 0)
    says why not; every rank builds its own bank."""
    stage, views = config.model.freeze_stages, config.train.frozen_views
    if views <= 0 or stage <= 0:
        return 0, None
    if not model.backbone.splittable:
        if main:
            tqdm.write(
                f"train.frozen_views: {config.model.backbone} cannot be split between "
                "stages; its frozen stages are recomputed each step"
            )
        return 0, None
    size = bank_bytes(model, stage, len(train_set), views)
    if size > config.data.max_cache_gb * 2**30:
        if main:
            tqdm.write(
                f"train.frozen_views: the bank would take {size / 2**30:.1f} GB > "
                "data.max_cache_gb; frozen stages are recomputed each step"
            )
        return 0, None
    bank = build_bank(
        model,
        stage,
        train_set,
        views,
        run_dir,
        config.train.seed,
        workers=config.data.num_workers,
        progress=progress,
    )
    return stage, bank
