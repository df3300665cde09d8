"""hamming_histograms_figure and hashing_figure: normalised bars, panels, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepembed.evaluation import hashing_curves
from deepembed.viz.hashing import hamming_histograms_figure, hashing_figure
from tests.viz.helpers import png_size


def _heights(ax, label_start: str) -> np.ndarray:
    (bars,) = [c for c in ax.containers if c.get_label().startswith(label_start)]
    return np.array([patch.get_height() for patch in bars])


def test_histograms_are_fractions_of_each_kind_of_pair():
    relevant = np.array([3, 5, 2, 0, 0, 0, 0, 0, 0])  # 10 pairs, 8 bits
    irrelevant = np.array([0, 0, 10, 200, 400, 300, 80, 10, 0])  # 1,000 pairs
    fig = hamming_histograms_figure(relevant, irrelevant)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 9  # one bar per distance 0..8, twice
    np.testing.assert_allclose(_heights(ax, "relevant"), relevant / 10)
    np.testing.assert_allclose(_heights(ax, "irrelevant"), irrelevant / 1000)
    assert [p.get_x() + p.get_width() / 2 for p in ax.containers[0]] == list(range(9))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "relevant pairs (10)",
        "irrelevant pairs (1,000)",
    ]
    assert "0..8" in ax.get_xlabel() and ax.get_ylabel() == "fraction of pairs"
    assert png_size(fig) == (700, 360)


def test_histogram_without_pairs_is_flat_zero():
    fig = hamming_histograms_figure(np.zeros(5), np.array([1, 1, 1, 1, 0]))
    ax = fig.axes[0]
    assert _heights(ax, "relevant").tolist() == [0.0] * 5
    np.testing.assert_allclose(_heights(ax, "irrelevant"), [0.25, 0.25, 0.25, 0.25, 0.0])


@pytest.mark.parametrize(
    ("relevant", "irrelevant", "message"),
    [
        ([1, 2, 3], [1, 2], "differ in length"),
        ([1, -2, 3], [1, 2, 3], ">= 0"),
        ([[1, 2], [3, 4]], [1, 2], "1-D"),
        ([1, np.inf], [1, 2], "finite"),
    ],
)
def test_histogram_errors(relevant, irrelevant, message):
    with pytest.raises(ValueError, match=message):
        hamming_histograms_figure(np.array(relevant, float), np.array(irrelevant, float))


def test_hashing_figure_draws_both_panels_per_run():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 6)
    codes = (rng.normal(size=(30, 8)) + 2 * np.eye(5, 8)[labels]) > 0.5
    curves = json.loads(json.dumps(hashing_curves(codes, labels, ns=(1, 5, 10))))
    fig = hashing_figure({"a": curves, "b": curves})
    ax_pr, ax_n = fig.axes
    assert [line.get_label() for line in ax_pr.lines] == ["a", "b"]
    assert list(ax_n.lines[0].get_xdata()) == [1, 5, 10]
    assert ax_n.get_xscale() == "log"
    assert png_size(fig) == (1000, 400)
