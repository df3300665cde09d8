"""recall_figure and training_curves_figure: what they draw, where."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.lines import Line2D

from deepembed.viz.curves import recall_figure, training_curves_figure
from tests.viz.helpers import png_size


def _history(epochs: int, eval_every: int = 1, split: str = "val") -> list[dict]:
    """Records as in history.jsonl: loss each epoch, an evaluation every `eval_every`."""
    history = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "loss": 10.0 / epoch, "train_images_per_s": 100.0}
        if epoch % eval_every == 0:
            record[split] = {
                "map@r": 0.1 * epoch,
                "recall@1": 0.5 + 0.01 * epoch,
                "primary_metric": "map@r",
            }
        history.append(record)
    return history


def _data_lines(ax) -> list[Line2D]:
    return [line for line in ax.lines if line.get_gid() != "kept"]


def _kept_x(ax) -> list[float]:
    return [float(x) for line in ax.lines if line.get_gid() == "kept" for x in line.get_xdata()]


def test_loss_and_metric_panels_with_the_kept_epoch():
    fig = training_curves_figure(_history(6, eval_every=2), kept_epoch=4)
    loss_ax, metric_ax = fig.axes
    (loss,) = _data_lines(loss_ax)
    assert list(loss.get_xdata()) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(loss.get_ydata(), [10.0 / e for e in range(1, 7)])
    (metric,) = _data_lines(metric_ax)
    assert list(metric.get_xdata()) == [2, 4, 6]  # only the evaluated epochs
    np.testing.assert_allclose(metric.get_ydata(), [0.2, 0.4, 0.6])
    assert metric_ax.get_ylabel() == "map@r"  # the primary metric by default
    assert metric.get_label() == "validation"
    assert _kept_x(loss_ax) == [4, 4] and _kept_x(metric_ax) == [4, 4]
    assert any("kept: epoch 4" in t.get_text() for t in loss_ax.texts)
    assert png_size(fig) == (700, int(100 * (0.8 + 2 * 2.4)))


def test_named_metric_and_test_split():
    fig = training_curves_figure(_history(3, split="test"), kept_epoch=None, metric="recall@1")
    metric_ax = fig.axes[1]
    (metric,) = _data_lines(metric_ax)
    np.testing.assert_allclose(metric.get_ydata(), [0.51, 0.52, 0.53])
    assert metric.get_label() == "test" and metric_ax.get_ylabel() == "recall@1"
    assert not _kept_x(fig.axes[0]) and not fig.axes[0].texts


def test_one_epoch():
    fig = training_curves_figure(_history(1), kept_epoch=1)
    assert len(fig.axes) == 2
    assert [list(_data_lines(ax)[0].get_xdata()) for ax in fig.axes] == [[1], [1]]
    assert all(line.get_marker() == "o" for ax in fig.axes for line in _data_lines(ax))
    png_size(fig)


def test_no_evaluation_gives_the_loss_only():
    history = [{"epoch": e, "loss": 1.0 / e} for e in (1, 2, 3)]
    fig = training_curves_figure(history, kept_epoch=3)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "training loss" and ax.get_xlabel() == "epoch"
    assert _kept_x(ax) == [3, 3]
    png_size(fig)


def test_no_loss_gives_the_metric_only_and_non_finite_values_are_left_out():
    history = _history(4)
    for record in history:
        del record["loss"]
    history[1]["val"]["map@r"] = math.nan
    fig = training_curves_figure(history, kept_epoch=3)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "map@r"
    assert list(_data_lines(ax)[0].get_xdata()) == [1, 3, 4]


def test_nothing_to_plot():
    with pytest.raises(ValueError, match="nothing to plot"):
        training_curves_figure([], kept_epoch=None)
    with pytest.raises(ValueError, match="nothing to plot"):
        training_curves_figure([{"epoch": 1}], kept_epoch=1)


def test_recall_figure_one_and_several_runs():
    one = recall_figure({"recall@1": 0.5, "recall@4": 0.8, "map@r": 0.3, "primary_metric": "x"})
    ax = one.axes[0]
    (line,) = ax.lines
    assert list(line.get_xdata()) == [1, 4] and list(line.get_ydata()) == [0.5, 0.8]
    assert ax.get_legend() is None and ax.get_xscale() == "log"
    two = recall_figure({"a": {1: 0.2, 10: 0.5}, "b": {"recall@1": 0.3}}, title="runs")
    ax = two.axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_title() == "runs"
    assert png_size(two) == (600, 400)
