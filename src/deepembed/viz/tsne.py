"""t-SNE map of embeddings coloured by class (openTSNE, FFT-accelerated)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np

from deepembed.errors import DataError
from deepembed.io import atomic_write


def stratified_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Row indices of at most `max_points` items, the same share of each class, seeded."""
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    fraction = max_points / n
    keep = [
        rng.permutation(rows)[: max(1, round(len(rows) * fraction))]
        for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))
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


def plot_tsne(
    vectors: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: dict[int, str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
    title: str = "t-SNE of embeddings",
) -> Path:
    """Write a PNG t-SNE map of a stratified sample of at most `max_points` items."""
    if len(vectors) < 5:
        raise DataError(f"t-SNE needs at least 5 embeddings, got {len(vectors)}")
    rows = stratified_sample(labels, max_points, seed)
    xy = tsne_2d(vectors[rows], seed)
    labels = labels[rows]
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    for i, c in enumerate(classes):
        at = labels == c
        name = (class_names or {}).get(int(c), str(c))
        ax.scatter(xy[at, 0], xy[at, 1], s=3, color=cmap(i % cmap.N), label=name)
    ax.set_title(f"{title} ({len(rows)} points, {len(classes)} classes)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
    )
    fig.tight_layout()
    out = atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    plt.close(fig)
    return out
