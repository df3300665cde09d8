"""Training batches whose randomness is a function of (seed, epoch, step), nothing else.

A checkpoint cannot capture the random state of DataLoader workers, so augmentation that
draws from a worker's generator would differ after a resume. Here every batch carries a key
derived from (seed, epoch, step); the dataset draws that batch's random crops, flips and
bank views from a generator seeded with the key. So a batch is the same whichever process
or worker loads it, a run resumed at step s sees exactly the batches s, s+1, ... of the
uninterrupted run, and the number of workers does not change the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deepembed.data.datasets import collate


def batch_key(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed for batch `step` of `epoch` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(2, np.uint64)[0] >> 1)


class EpochBatches(Sampler[tuple[int, list[int]]]):
    """One epoch of a P x K sampler as (key, indices) pairs, from step `start` to `stop`.

    A rank's step s is batch s * world_size + rank of the epoch's plan (samplers.py): that
    index is the key, so the ranks of a distributed run draw different augmentations.
    """

    def __init__(self, sampler: Any, seed: int, epoch: int, start: int, stop: int) -> None:
        self.sampler, self.seed, self.epoch = sampler, seed, epoch
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        self.sampler.set_epoch(self.epoch)
        world = getattr(self.sampler, "world_size", 1)
        rank = getattr(self.sampler, "rank", 0)
        for step, indices in enumerate(self.sampler):
            if step >= self.stop:
                return
            if step >= self.start:
                yield batch_key(self.seed, self.epoch, step * world + rank), indices

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class KeyedBatches(Dataset):
    """Wraps a training dataset: `__getitems__((key, indices))` loads the batch with torch's
    generator (and a bank's view choice) seeded by `key`, leaving the caller's random state
    as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, batch: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        key, indices = batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            draw = getattr(self.dataset, "draw", None)
            if draw is not None:  # a feature bank picks views with its own generator
                return draw(indices, np.random.default_rng(key))
            getitems = getattr(self.dataset, "__getitems__", None)
            if getitems is not None:
                return collate(getitems(indices))
            return collate([self.dataset[i] for i in indices])
