"""P classes x K images per batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from deepembed.errors import ConfigError


class PKSampler(Sampler[list[int]]):
    """Yields batches of P classes x K images, visiting (almost) every image once per epoch.

    Each class's images are shuffled and cut into chunks of K (the last chunk is topped up
    with images of the same class drawn again, so a class with fewer than K images still
    gives K). Classes are drawn P at a time, weighted by their remaining chunks, with no
    class twice in a batch. Deterministic for a given seed and epoch (`set_epoch`).
    """

    def __init__(
        self, labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int = 0
    ) -> None:
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        if images_per_class < 1 or classes_per_batch < 2:
            raise ConfigError("sampler needs images_per_class >= 1 and classes_per_batch >= 2")
        if len(classes) < classes_per_batch:
            raise ConfigError(
                f"sampler.classes_per_batch={classes_per_batch} but the training set has "
                f"only {len(classes)} classes"
            )
        self.by_class = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.p, self.k, self.seed, self.epoch = classes_per_batch, images_per_class, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use a different (still deterministic) order for each epoch."""
        self.epoch = epoch

    def _chunks(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Per class, its images shuffled and cut into chunks of K."""
        chunks = []
        for rows in self.by_class:
            rows = rng.permutation(rows)
            pad = -len(rows) % self.k  # top up the last chunk from the same class
            if pad:
                rows = np.concatenate([rows, rng.choice(rows, pad, replace=pad > len(rows))])
            chunks.append(list(rows.reshape(-1, self.k)))
        return chunks

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = self._chunks(rng)
        remaining = np.array([len(c) for c in chunks], dtype=np.float64)
        # Each batch draws P distinct classes with probability proportional to their
        # remaining chunks, so classes run out together and (almost) every image is
        # visited; the epoch ends when fewer than P classes have chunks left.
        while (remaining > 0).sum() >= self.p:
            classes = rng.choice(len(chunks), self.p, replace=False, p=remaining / remaining.sum())
            remaining[classes] -= 1
            yield np.concatenate([chunks[c].pop() for c in classes]).tolist()

    def __len__(self) -> int:
        return sum(-(-len(r) // self.k) for r in self.by_class) // self.p
