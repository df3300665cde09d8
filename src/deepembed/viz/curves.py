"""Curves of evaluation results: Recall@K against K."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

_RECALL = re.compile(r"^recall@([1-9][0-9]*)$")


def recall_points(result: Mapping) -> tuple[list[int], list[float]]:
    """(Ks, recalls) ascending in K from a metrics dict ("recall@K" keys) or {K: recall}."""
    points: dict[int, float] = {}
    for key, value in result.items():
        match = _RECALL.match(key) if isinstance(key, str) else None
        if match:
            points[int(match.group(1))] = float(value)
        elif isinstance(key, int) and not isinstance(key, bool):
            points[key] = float(value)
    ks = sorted(points)
    return ks, [points[k] for k in ks]


def plot_recall_at_k(results: Mapping, path: str | Path, title: str = "Recall@K") -> Path:
    """Write a PNG of Recall@K against K (log scale) for one or several runs.

    Args:
        results: one metrics dict as returned by ``evaluate`` (its "recall@K" entries), or
            a mapping from a curve name to such a dict or to ``{K: recall}``.
        path: PNG file to write (parent folders are created).
        title: plot title.

    Raises:
        ValueError: no recall@K value in ``results``.
    """
    curves = {"": results} if recall_points(results)[0] else dict(results)
    series = {name: recall_points(r) for name, r in curves.items() if isinstance(r, Mapping)}
    series = {name: pts for name, pts in series.items() if pts[0]}
    if not series:
        raise ValueError("no recall@K values to plot; evaluate with recall@K metrics")
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for name, (ks, values) in series.items():
        ax.plot(ks, values, marker="o", label=name or None)
    all_ks = [k for ks, _ in series.values() for k in ks]
    ax.set_xscale("log", base=2 if all(k & (k - 1) == 0 for k in all_ks) else 10)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(series):  # named curves
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
