"""Plots of hashing evaluations: precision-recall over Hamming radii, precision@N, and the
distributions of Hamming distance for relevant and irrelevant pairs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from deepembed.viz.style import figure, legend_if_labelled, save_png, styled


def _runs(curves: Mapping) -> dict[str, Mapping]:
    """{name: curves dict} from one ``hashing_curves`` result or a mapping name -> result."""
    if "pr_curve" in curves or "precision_at_n" in curves:
        return {"": curves}
    return {str(name): c for name, c in curves.items() if isinstance(c, Mapping)}


@styled
def hashing_figure(curves: Mapping, title: str = "Hamming ranking") -> Figure:
    """The precision-recall curve over Hamming radii (left) and precision@N (right, log N)
    for one or several runs.

    Radii where no query retrieves anything have no precision and are not drawn.

    Args:
        curves: one result of :func:`deepembed.evaluation.hashing_curves` (or the same
            dict read back from JSON), or a mapping from a curve name to such a result.
        title: figure title.

    Raises:
        ValueError: nothing to plot in ``curves``.
    """
    runs = _runs(curves)
    pr = {n: c["pr_curve"] for n, c in runs.items() if c.get("pr_curve")}
    at_n = {n: c["precision_at_n"] for n, c in runs.items() if c.get("precision_at_n")}
    if not pr and not at_n:
        raise ValueError("no hashing curves to plot; pass the result of hashing_curves")
    fig = figure(10, 4)
    ax_pr, ax_n = fig.subplots(1, 2)
    for name, c in pr.items():
        points = [(r, p) for r, p in zip(c["recall"], c["precision"], strict=True) if p is not None]
        if points:
            ax_pr.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name or None)
    ax_pr.set_xlabel("Recall")
    ax_pr.set_ylabel("Precision")
    ax_pr.set_title("Precision-recall (Hamming radius 0..bits)")
    ax_pr.set_xlim(0.0, 1.02)
    for name, c in at_n.items():
        ax_n.plot(c["n"], c["precision"], marker="o", label=name or None)
    ax_n.set_xscale("log", base=10)
    ax_n.set_xlabel("N")
    ax_n.set_ylabel("Precision@N")
    ax_n.set_title("Precision@N")
    for ax in (ax_pr, ax_n):
        ax.set_ylim(0.0, 1.02)
        legend_if_labelled(ax)
    fig.suptitle(title)
    return fig


def plot_hashing_curves(curves: Mapping, path: str | Path, title: str = "Hamming ranking") -> Path:
    """Write :func:`hashing_figure` as a PNG (atomically, parents created)."""
    return save_png(hashing_figure(curves, title), path)


def _fractions(counts: np.ndarray, what: str) -> np.ndarray:
    """(bits + 1,) counts of pairs per distance -> fractions summing to 1 (all 0 if none)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(f"{what} counts must be 1-D over distances 0..bits, got {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"{what} counts must be finite and >= 0")
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


@styled
def hamming_histograms_figure(
    relevant_counts: np.ndarray,
    irrelevant_counts: np.ndarray,
    title: str = "Hamming distance between query and gallery codes",
) -> Figure:
    """Overlaid histograms of the Hamming distance of relevant and of irrelevant
    query-gallery pairs, each normalised to fractions of its own pairs (so a few million
    irrelevant pairs do not flatten the relevant ones). Good codes put the relevant mass on
    the left, the irrelevant on the right, with little overlap.

    Args:
        relevant_counts: (bits + 1,) number of relevant pairs at distance 0..bits.
        irrelevant_counts: (bits + 1,) the same for irrelevant pairs.
        title: plot title.

    Raises:
        ValueError: counts not 1-D, of different lengths, negative or not finite.
    """
    relevant = _fractions(relevant_counts, "relevant")
    irrelevant = _fractions(irrelevant_counts, "irrelevant")
    if len(relevant) != len(irrelevant):
        raise ValueError(
            f"relevant and irrelevant counts differ in length: {len(relevant)} and "
            f"{len(irrelevant)} (both must cover distances 0..bits)"
        )
    bits = len(relevant) - 1
    fig = figure(7, 3.6)
    ax = fig.subplots()
    distances = np.arange(bits + 1)
    for fractions, counts, name in (
        (relevant, relevant_counts, "relevant"),
        (irrelevant, irrelevant_counts, "irrelevant"),
    ):
        pairs = int(np.sum(counts))
        ax.bar(distances, fractions, width=1.0, alpha=0.55, label=f"{name} pairs ({pairs:,})")
    ax.set_xlim(-0.5, bits + 0.5)
    ax.set_xlabel(f"Hamming distance (0..{bits} bits)")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(title)
    ax.grid(False, axis="x")
    legend_if_labelled(ax)
    return fig
