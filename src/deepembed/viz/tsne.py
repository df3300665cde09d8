"""t-SNE map of embeddings coloured by class (openTSNE, FFT-accelerated), drawn by
:func:`deepembed.viz.maps.embedding_map_figure` on a stratified sample."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from deepembed.errors import DataError
from deepembed.viz.maps import embedding_map_figure
from deepembed.viz.style import save_png

MIN_POINTS = 5  # t-SNE needs a few neighbours per point


def stratified_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of min(N, max_points) items, each class in proportion, seeded.

    Class c of n_c items out of N gets its share n_c * max_points / N rounded by largest
    remainder (off by less than one item; the shares add up to max_points exactly). When
    max_points is below the number of classes, a seeded random choice of max_points classes
    gets one item each. Which items of a class are taken is seeded too.

    Args:
        labels: (N,) class of each row.
        max_points: at most this many rows (>= 1).
        seed: seed of every random choice; the same seed gives the same rows.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_of = class_of.reshape(-1)  # (N,) class index per row (numpy 2 may keep label shape)
    if max_points < len(classes):
        shares = np.zeros(len(classes), dtype=np.int64)
        shares[rng.choice(len(classes), size=max_points, replace=False)] = 1
    else:
        # integer largest remainder: share_c = floor(n_c * m / N), then one more to the
        # classes with the largest remainders (n_c * m) mod N; seeded order among equals
        exact = counts.astype(np.int64) * max_points
        shares, remainders = exact // n, exact % n
        left = max_points - int(shares.sum())  # < number of classes with a remainder
        order = np.lexsort((rng.permutation(len(classes)), -remainders))
        shares[order[:left]] += 1
    rows_by_class = np.argsort(class_of, kind="stable")  # rows grouped by class, ascending
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keep = [
        rng.choice(rows_by_class[start : start + count], size=share, replace=False)
        for start, count, share in zip(starts, counts, shares, strict=True)
        if share
    ]
    return np.sort(np.concatenate(keep))


def tsne_2d(vectors: np.ndarray, seed: int = 0, n_jobs: int = 2) -> np.ndarray:
    """(N, 2) t-SNE coordinates of (N, D) vectors."""
    from openTSNE import TSNE  # imported here: slow import, only needed for plots

    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    return np.asarray(
        TSNE(perplexity=perplexity, metric="cosine", n_jobs=n_jobs, random_state=seed).fit(
            vectors.astype(np.float64)
        )
    )


def tsne_figure(
    vectors: np.ndarray,
    labels: np.ndarray,
    class_names: Mapping[int, str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
    title: str = "t-SNE of embeddings",
) -> Figure:
    """A t-SNE map of a stratified sample of at most `max_points` of (N, D) `vectors`.

    Raises:
        DataError: fewer than MIN_POINTS vectors (or `max_points`).
    """
    rows = stratified_sample(labels, max_points, seed)
    if len(rows) < MIN_POINTS:
        raise DataError(f"t-SNE needs at least {MIN_POINTS} embeddings, got {len(rows)}")
    xy = tsne_2d(vectors[rows], seed)
    return embedding_map_figure(xy, np.asarray(labels)[rows], class_names, title=title)


def plot_tsne(
    vectors: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Mapping[int, str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
    title: str = "t-SNE of embeddings",
) -> Path:
    """Write :func:`tsne_figure` as a PNG (atomically, parents created)."""
    return save_png(tsne_figure(vectors, labels, class_names, max_points, seed, title), path)
