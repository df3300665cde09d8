"""P classes x K images per batch, visiting every training image in every epoch.

The epoch plan: each class's images are shuffled and cut into chunks of K (the last chunk
topped up with other images of the same class). Every chunk is then placed in exactly one
batch with no class twice in a batch: the classes are shuffled, their chunks laid end to end
and dealt round-robin over B batches, B = max(ceil(chunks / P), largest class's chunks), so
a class's chunks land in distinct batches. Batches left with fewer than P chunks (at most
P - 1 of them in the usual case, more when one class dominates) are filled with K images of
classes not yet in the batch. So every image is seen at least once per epoch, and the only
repeats are these two top-ups (unlike PML's MPerClassSampler, which draws with replacement
and can miss images; its issue #684).

Classes with fewer than K images follow `small_classes`: "repeat" samples them with
replacement up to K; "drop" leaves them out of training. The plan depends only on
(seed, epoch): `set_epoch` changes it; every rank of a distributed run computes the same plan
and takes every world_size-th batch (B is rounded up to a multiple of world_size, so all ranks
get the same number of batches and no batch is given to two ranks).

`RandomBatchSampler` has no class structure: shuffled batches of a fixed size, for data
whose items carry several labels (a multi-label matrix has no classes to pick P of).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from deepembed.errors import ConfigError

SMALL_CLASS_POLICIES = ("repeat", "drop")


def _n_batches(counts: list[int], per_batch: int, multiple: int) -> int:
    """Batches needed to place every item, no group twice per batch, rounded to `multiple`."""
    n = max(-(-sum(counts) // per_batch), max(counts, default=0))
    return -(-n // multiple) * multiple


def _spread(
    counts: list[int], per_batch: int, multiple: int, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """Deal item i of group g, as (g, i), into batches with no group twice in a batch.

    Groups are shuffled and their items laid end to end; item j goes to batch j mod B. A
    group has at most B items, so its (contiguous) items fall in distinct batches; every
    batch gets floor or ceil of the mean, at most `per_batch`. The batch order is shuffled.
    """
    n = _n_batches(counts, per_batch, multiple)
    batches: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    position = 0
    for group in rng.permutation(len(counts)):
        for item in range(counts[group]):
            batches[position % n].append((int(group), item))
            position += 1
    return [batches[b] for b in rng.permutation(n)]


def _draw(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K rows of one class, with replacement only when the class has fewer than K."""
    return rng.choice(rows, k, replace=len(rows) < k)


def _chunks(rows: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A class's rows shuffled and cut into chunks of K; the last is topped up from the class."""
    rows = rng.permutation(rows)
    pad = -len(rows) % k
    if pad:
        others = np.setdiff1d(rows, rows[len(rows) - len(rows) % k :])  # not in the last chunk
        source = others if len(others) >= pad else rows
        rows = np.concatenate([rows, rng.choice(source, pad, replace=len(source) < pad)])
    return list(rows.reshape(-1, k))


class _PlannedSampler(Sampler[list[int]]):
    """Shared parts: per-class rows, seed/epoch, rank slicing of a whole-epoch plan."""

    def __init__(
        self,
        labels: np.ndarray,
        images_per_class: int,
        seed: int,
        small_classes: str,
        rank: int,
        world_size: int,
    ) -> None:
        if images_per_class < 1:
            raise ConfigError(f"sampler.images_per_class must be >= 1, got {images_per_class}")
        if small_classes not in SMALL_CLASS_POLICIES:
            raise ConfigError(
                f"sampler.small_classes must be one of {', '.join(SMALL_CLASS_POLICIES)}, "
                f"got {small_classes!r}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"sampler: rank {rank} is not in [0, world_size={world_size})")
        labels = np.asarray(labels)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        by_class = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        # classes kept for training (index into self.classes); "drop" leaves out small ones
        self.kept = [
            c
            for c, rows in enumerate(by_class)
            if small_classes == "repeat" or len(rows) >= images_per_class
        ]
        self.by_class = by_class
        self.k, self.seed, self.epoch = images_per_class, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Use a different (still deterministic) plan for each epoch."""
        self.epoch = epoch

    def _random_chunks(
        self, candidates: list[int], n: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """K images each of `n` distinct classes drawn from `candidates` (a top-up)."""
        chosen = rng.choice(np.asarray(candidates), n, replace=False)
        return [_draw(self.by_class[c], self.k, rng) for c in chosen]

    def _class_chunks(self, rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
        return {c: _chunks(self.by_class[c], self.k, rng) for c in self.kept}

    def plan(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, for all ranks."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.plan(self.epoch)[self.rank :: self.world_size]

    def _total(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._total() // self.world_size


class PKSampler(_PlannedSampler):
    """Batches of P classes x K images, every image at least once per epoch (module docstring).

    With rank / world_size, yields this rank's share of the same epoch plan.
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        seed: int = 0,
        small_classes: str = "repeat",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(labels, images_per_class, seed, small_classes, rank, world_size)
        if classes_per_batch < 2:
            raise ConfigError(f"sampler.classes_per_batch must be >= 2, got {classes_per_batch}")
        if len(self.kept) < classes_per_batch:
            raise ConfigError(
                f"sampler.classes_per_batch={classes_per_batch} but the training set has "
                f"only {len(self.kept)} classes"
                + (f" with >= {self.k} images" if small_classes == "drop" else "")
            )
        self.p = classes_per_batch

    def _counts(self) -> list[int]:
        return [-(-len(self.by_class[c]) // self.k) for c in self.kept]

    def _total(self) -> int:
        return _n_batches(self._counts(), self.p, self.world_size)

    def plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        chunks = self._class_chunks(rng)
        batches = []
        for placed in _spread(self._counts(), self.p, self.world_size, rng):
            parts = [chunks[self.kept[g]][i] for g, i in placed]
            if len(placed) < self.p:  # top up with classes not in this batch
                used = {self.kept[g] for g, _ in placed}
                others = [c for c in self.kept if c not in used]
                parts += self._random_chunks(others, self.p - len(placed), rng)
            batches.append(np.concatenate(parts).tolist())
        return batches


class DistributedPKSampler(PKSampler):
    """PKSampler for torch.distributed: rank and world size default to the process group's.

    All ranks compute the same plan (same seed and epoch: call `set_epoch` on every rank)
    and each takes every world_size-th batch: distinct batches, equal counts on all ranks.
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        seed: int = 0,
        small_classes: str = "repeat",
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        active = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if active else 1
        if rank is None:
            rank = dist.get_rank() if active else 0
        super().__init__(
            labels, classes_per_batch, images_per_class, seed, small_classes, rank, world_size
        )


class HierarchicalPKSampler(_PlannedSampler):
    """P classes x K images per batch, the P classes drawn within S super-classes (SOP).

    Each super-class's classes are planned like PKSampler with P / S classes per group;
    those groups are then dealt into batches of S groups of distinct super-classes, the
    same way. Harder negatives: a batch's classes share few super-classes.
    """

    def __init__(
        self,
        labels: np.ndarray,
        super_labels: np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        super_classes_per_batch: int = 2,
        seed: int = 0,
        small_classes: str = "repeat",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(labels, images_per_class, seed, small_classes, rank, world_size)
        s = super_classes_per_batch
        if s < 1 or classes_per_batch % s:
            raise ConfigError(
                f"sampler.classes_per_batch={classes_per_batch} must be a multiple of "
                f"super_classes_per_batch={s}"
            )
        super_labels = np.asarray(super_labels)
        if len(super_labels) != len(labels):
            raise ConfigError(f"{len(super_labels)} super-labels for {len(labels)} labels")
        self.p, self.s, self.p_sub = classes_per_batch, s, classes_per_batch // s
        groups: dict[int, list[int]] = {}
        for c in self.kept:
            owners = np.unique(super_labels[self.by_class[c]])
            if len(owners) != 1:
                raise ConfigError(f"class {self.classes[c]} spans super-classes {owners.tolist()}")
            groups.setdefault(int(owners[0]), []).append(c)
        self.groups = [groups[g] for g in sorted(groups)]  # class indices per super-class
        small = [len(g) for g in self.groups if len(g) < self.p_sub]
        if len(self.groups) < s or small:
            raise ConfigError(
                f"hierarchical sampler needs >= {s} super-classes of >= {self.p_sub} classes; "
                f"got {len(self.groups)} super-classes, {len(small)} of them too small"
            )

    def _sub_counts(self, group: list[int]) -> list[int]:
        return [-(-len(self.by_class[c]) // self.k) for c in group]

    def _outer_counts(self) -> list[int]:
        return [_n_batches(self._sub_counts(g), self.p_sub, 1) for g in self.groups]

    def _total(self) -> int:
        return _n_batches(self._outer_counts(), self.s, self.world_size)

    def _sub_batches(
        self, group: list[int], chunks: dict[int, list[np.ndarray]], rng: np.random.Generator
    ) -> list[np.ndarray]:
        """One super-class planned into groups of P / S classes x K, topped up within it."""
        subs = []
        for placed in _spread(self._sub_counts(group), self.p_sub, 1, rng):
            parts = [chunks[group[g]][i] for g, i in placed]
            if len(placed) < self.p_sub:
                used = {group[g] for g, _ in placed}
                others = [c for c in group if c not in used]
                parts += self._random_chunks(others, self.p_sub - len(placed), rng)
            subs.append(np.concatenate(parts))
        return subs

    def plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        chunks = self._class_chunks(rng)
        subs = [self._sub_batches(g, chunks, rng) for g in self.groups]
        batches = []
        for placed in _spread([len(x) for x in subs], self.s, self.world_size, rng):
            parts = [subs[g][i] for g, i in placed]
            used = {g for g, _ in placed}
            for g in rng.permutation([g for g in range(len(self.groups)) if g not in used])[
                : self.s - len(placed)
            ]:  # top up: fresh groups from other super-classes
                parts += self._random_chunks(self.groups[g], self.p_sub, rng)
            batches.append(np.concatenate(parts).tolist())
        return batches


class RandomBatchSampler(Sampler[list[int]]):
    """Shuffled batches of `batch_size` distinct images, every image once per epoch.

    The epoch's permutation (seeded by (seed, epoch)) is cut into ceil(N / batch_size)
    batches, rounded up to a multiple of world_size; the batches short of `batch_size` are
    topped up with images drawn from the rest, so every batch has the same size. Each rank
    takes every world_size-th batch, as the P x K samplers do.
    """

    def __init__(
        self, n_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 2 or n_items < batch_size:
            raise ConfigError(
                f"random batches of {batch_size} images (sampler.classes_per_batch x "
                f"images_per_class) need >= 2 per batch and at most the {n_items} training images"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"sampler: rank {rank} is not in [0, world_size={world_size})")
        self.n, self.batch_size, self.seed, self.epoch = n_items, batch_size, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Use a different (still deterministic) permutation for each epoch."""
        self.epoch = epoch

    def _total(self) -> int:
        return _n_batches([1] * self.n, self.batch_size, self.world_size)

    def plan(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, for all ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        batches = []
        for b in range(self._total()):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            pad = self.batch_size - len(batch)
            if pad:
                rest = np.setdiff1d(np.arange(self.n), batch)
                batch = np.concatenate([batch, rng.choice(rest, pad, replace=False)])
            batches.append(batch.tolist())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.plan(self.epoch)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return self._total() // self.world_size
