"""plot_recall_at_k writes a real PNG from evaluate() results."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepembed.evaluation import evaluate
from deepembed.viz.curves import plot_recall_at_k, recall_points


def test_recall_points_from_results_and_mappings():
    result = {"recall@10": 0.9, "recall@1": 0.5, "map@r": 0.2, "primary_metric": "map@r"}
    assert recall_points(result) == ([1, 10], [0.5, 0.9])
    assert recall_points({4: 0.7, 2: 0.6}) == ([2, 4], [0.6, 0.7])


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    x = rng.normal(size=(60, 8)) + 3 * np.eye(10, 8)[labels]
    names = ("recall@1", "recall@2", "recall@4", "recall@8")
    result = evaluate(x, labels, metrics=names)
    one = plot_recall_at_k(result, tmp_path / "one" / "recall_at_k.png")
    two = plot_recall_at_k({"a": result, "b": {1: 0.2, 10: 0.5}}, tmp_path / "two.png")
    for path in (one, two):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300
    with pytest.raises(ValueError, match="no recall@K values"):
        plot_recall_at_k({"map@r": 0.3}, tmp_path / "none.png")
