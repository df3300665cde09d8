"""Curves of hashing evaluations: precision-recall over Hamming radii and precision@N."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

from deepembed.io import atomic_write


def _runs(curves: Mapping) -> dict[str, Mapping]:
    """{name: curves dict} from one ``hashing_curves`` result or a mapping name -> result."""
    if "pr_curve" in curves or "precision_at_n" in curves:
        return {"": curves}
    return {str(name): c for name, c in curves.items() if isinstance(c, Mapping)}


def plot_hashing_curves(curves: Mapping, path: str | Path, title: str = "Hamming ranking") -> Path:
    """Write a PNG with the precision-recall curve over Hamming radii (left) and
    precision@N (right, log N) for one or several runs; written atomically.

    Radii where no query retrieves anything have no precision and are not drawn.

    Args:
        curves: one result of :func:`deepembed.evaluation.hashing_curves` (or the same
            dict read back from JSON), or a mapping from a curve name to such a result.
        path: PNG file to write (parent folders are created).
        title: figure title.

    Raises:
        ValueError: nothing to plot in ``curves``.
    """
    runs = _runs(curves)
    pr = {n: c["pr_curve"] for n, c in runs.items() if c.get("pr_curve")}
    at_n = {n: c["precision_at_n"] for n, c in runs.items() if c.get("precision_at_n")}
    if not pr and not at_n:
        raise ValueError("no hashing curves to plot; pass the result of hashing_curves")
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_pr, ax_n = fig.subplots(1, 2)
    for name, c in pr.items():
        points = [(r, p) for r, p in zip(c["recall"], c["precision"], strict=True) if p is not None]
        if points:
            ax_pr.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name or None)
    ax_pr.set_xlabel("Recall")
    ax_pr.set_ylabel("Precision")
    ax_pr.set_title("Precision-recall (Hamming radius 0..bits)")
    for name, c in at_n.items():
        ax_n.plot(c["n"], c["precision"], marker="o", label=name or None)
    ax_n.set_xscale("log", base=10)
    ax_n.set_xlabel("N")
    ax_n.set_ylabel("Precision@N")
    ax_n.set_title("Precision@N")
    for ax in (ax_pr, ax_n):
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        if any(runs):  # named curves
            ax.legend()
    ax_pr.set_xlim(0.0, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
