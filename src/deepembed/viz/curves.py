"""Curves of a run: Recall@K against K, and loss and evaluation metric per training epoch."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepembed.viz.style import PALETTE, figure, legend_if_labelled, save_png, styled

_RECALL = re.compile(r"^recall@([1-9][0-9]*)$")
_SPLITS = {"val": "validation", "test": "test"}  # history key -> name on the plot
_MARKERS_UP_TO = 40  # epochs; more and markers hide the line


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


@styled
def recall_figure(results: Mapping, title: str = "Recall@K") -> Figure:
    """Recall@K against K (log scale) for one or several runs.

    Args:
        results: one metrics dict as returned by ``evaluate`` (its "recall@K" entries), or
            a mapping from a curve name to such a dict or to ``{K: recall}``.
        title: plot title.

    Raises:
        ValueError: no recall@K value in ``results``.
    """
    curves = {"": results} if recall_points(results)[0] else dict(results)
    series = {name: recall_points(r) for name, r in curves.items() if isinstance(r, Mapping)}
    series = {name: pts for name, pts in series.items() if pts[0]}
    if not series:
        raise ValueError("no recall@K values to plot; evaluate with recall@K metrics")
    fig = figure(6, 4)
    ax = fig.subplots()
    for name, (ks, values) in series.items():
        ax.plot(ks, values, marker="o", label=name or None)
    all_ks = [k for ks, _ in series.values() for k in ks]
    ax.set_xscale("log", base=2 if all(k & (k - 1) == 0 for k in all_ks) else 10)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    legend_if_labelled(ax)
    return fig


def plot_recall_at_k(results: Mapping, path: str | Path, title: str = "Recall@K") -> Path:
    """Write :func:`recall_figure` as a PNG (atomically, parents created)."""
    return save_png(recall_figure(results, title), path)


def _per_epoch(
    history: Sequence[Mapping[str, Any]], value: Callable[[Mapping[str, Any]], object]
) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records where `value(record)` is a finite number."""
    epochs, values = [], []
    for i, record in enumerate(history):
        v = value(record)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            epochs.append(int(record.get("epoch", i + 1)))
            values.append(float(v))
    return epochs, values


def _primary_metric(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The "primary_metric" named by the first evaluation in `history`."""
    for record in history:
        for split in _SPLITS:
            evaluation = record.get(split)
            if isinstance(evaluation, Mapping) and evaluation.get("primary_metric"):
                return str(evaluation["primary_metric"])
    return None


@styled
def training_curves_figure(
    history: Sequence[Mapping[str, Any]],
    kept_epoch: int | None = None,
    metric: str | None = None,
    title: str = "Training",
) -> Figure:
    """Training loss per epoch (top panel) and the validation or test `metric` at the
    epochs that were evaluated (bottom panel), with the kept epoch marked on both.

    Args:
        history: the records of a run's history.jsonl; each may hold "epoch", "loss" and a
            "val" or "test" metrics dict (absent on epochs without evaluation).
        kept_epoch: the selected epoch (1-based), drawn as a dashed vertical line.
        metric: the metric to draw; default the evaluations' "primary_metric".
        title: figure title.

    A history without evaluations (or without `metric`) gives the loss panel only; one
    without loss gives the metric panel only. Non-finite values are left out.

    Raises:
        ValueError: no loss and no metric value in `history`.
    """
    metric = metric or _primary_metric(history)
    panels: list[tuple[str, dict[str, tuple[list[int], list[float]]]]] = []
    loss = _per_epoch(history, lambda r: r.get("loss"))
    if loss[0]:
        panels.append(("training loss", {"": loss}))
    evaluated = {
        name: _per_epoch(history, lambda r, key=key: (r.get(key) or {}).get(metric))
        for key, name in _SPLITS.items()
    }
    evaluated = {name: points for name, points in evaluated.items() if points[0]}
    if evaluated:
        panels.append((str(metric), evaluated))
    if not panels:
        raise ValueError("no loss and no evaluation metric in the history: nothing to plot")
    fig = figure(7, 0.8 + 2.4 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, curves) in zip(axes, panels, strict=True):
        for name, (epochs, values) in curves.items():
            marker = "o" if len(epochs) <= _MARKERS_UP_TO else None
            ax.plot(epochs, values, marker=marker, label=name or None)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color=PALETTE[7], linestyle="--", linewidth=1, gid="kept")
        legend_if_labelled(ax)
    if kept_epoch is not None:
        top = axes[0]
        top.text(
            kept_epoch,
            1.0,
            f" kept: epoch {kept_epoch}",
            transform=top.get_xaxis_transform(),  # x in epochs, y in axes fraction
            ha="left",
            va="bottom",
            fontsize=8,
        )
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title)
    return fig
