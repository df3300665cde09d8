"""embedding_map_figure, UMAP availability, and the t-SNE map drawn through the same path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.offsetbox import AnnotationBbox
from PIL import Image

import deepembed.viz.maps as maps
import deepembed.viz.tsne as tsne
from deepembed.errors import DataError, UserError
from deepembed.viz.maps import embedding_map_figure, umap_2d, umap_available
from tests.viz.helpers import png_size


def _points(classes: int, per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) points in one blob per class, labels (N,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per)
    angle = 2 * np.pi * labels / classes
    xy = rng.normal(size=(len(labels), 2)) + 8 * np.stack([np.cos(angle), np.sin(angle)], 1)
    return xy, labels


def _scatter(fig) -> PathCollection:
    (points,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    return points


def test_points_coloured_by_class_with_a_legend_of_names():
    xy, labels = _points(3, 10)
    fig = embedding_map_figure(xy, labels, class_names={0: "cat", 2: "dog"}, title="Map")
    ax = fig.axes[0]
    points = _scatter(fig)
    np.testing.assert_allclose(points.get_offsets(), xy)
    colours = points.get_facecolors()
    assert len(colours) == 30
    assert len({tuple(c) for c in colours}) == 3  # one colour per class
    assert all((colours[labels == c] == colours[labels == c][0]).all() for c in range(3))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "1", "dog"]
    assert ax.get_title() == "Map (30 points, 3 classes)"
    assert png_size(fig) == (900, 700)


def test_no_legend_for_many_classes():
    xy, labels = _points(25, 2)
    fig = embedding_map_figure(xy, labels)
    assert fig.axes[0].get_legend() is None
    assert len({tuple(c) for c in _scatter(fig).get_facecolors()}) == 25


def test_thumbnails_are_drawn_at_their_points():
    xy, labels = _points(4, 5)
    images = [
        (0, Image.new("L", (28, 28), 200)),
        (7, Image.new("RGB", (200, 100), (255, 0, 0))),
        (19, Image.new("RGBA", (16, 16))),
    ]
    fig = embedding_map_figure(xy, labels, thumbnails=images)
    boxes = [a for a in fig.axes[0].artists if isinstance(a, AnnotationBbox)]
    assert len(boxes) == 3
    np.testing.assert_allclose([box.xy for box in boxes], xy[[0, 7, 19]])
    wide = boxes[1].offsetbox.get_data()  # the 200 x 100 image: shrunk, RGB, same aspect
    assert wide.shape[2] == 3 and max(wide.shape[:2]) <= 40
    assert abs(wide.shape[1] - 2 * wide.shape[0]) <= 1
    png_size(fig)


def test_map_errors():
    xy, labels = _points(2, 3)
    with pytest.raises(ValueError, match="thumbnail row 6"):
        embedding_map_figure(xy, labels, thumbnails=[(6, Image.new("L", (4, 4)))])
    with pytest.raises(ValueError, match=r"xy \(N, 2\)"):
        embedding_map_figure(xy[:, :1], labels)
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        embedding_map_figure(xy, labels[:-1])


def test_umap_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(maps.importlib.util, "find_spec", lambda name: None)
    assert not umap_available()
    with pytest.raises(UserError, match="pip install umap-learn"):
        umap_2d(np.zeros((10, 4)))


def test_umap_coordinates_when_installed():
    pytest.importorskip("umap")
    xy, _ = _points(3, 10)
    vectors = np.concatenate([xy, np.ones((30, 2))], axis=1)
    out = umap_2d(vectors, seed=0)
    assert out.shape == (30, 2) and np.isfinite(out).all()


def test_tsne_plot_draws_the_embedding_map_of_the_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    vectors, labels = _points(4, 50)
    fake = lambda v, seed=0: v[:, :2] * 10  # noqa: E731 - t-SNE itself is tested below
    monkeypatch.setattr(tsne, "tsne_2d", fake)
    out = tsne.plot_tsne(vectors, labels, tmp_path / "maps" / "tsne.png", {0: "a"}, 40, seed=1)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 700)
    fig = tsne.tsne_figure(vectors, labels, {0: "a"}, max_points=40, seed=1)
    rows = tsne.stratified_sample(labels, 40, seed=1)
    np.testing.assert_allclose(_scatter(fig).get_offsets(), vectors[rows] * 10)
    assert fig.axes[0].get_title() == "t-SNE of embeddings (40 points, 4 classes)"
    with pytest.raises(DataError, match="at least 5"):
        tsne.tsne_figure(vectors, labels, max_points=4)


@pytest.mark.slow  # openTSNE takes seconds even for 60 points
def test_real_tsne_on_a_small_set():
    vectors, labels = _points(3, 20)
    fig = tsne.tsne_figure(np.concatenate([vectors, vectors**2], 1), labels, seed=0)
    offsets = _scatter(fig).get_offsets()
    assert offsets.shape == (60, 2) and np.isfinite(offsets).all()
