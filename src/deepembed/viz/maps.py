"""2-D maps of embeddings: points coloured by class, optional image thumbnails at some points,
and UMAP coordinates when umap-learn is installed (t-SNE is in :mod:`deepembed.viz.tsne`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image

from deepembed.errors import UserError
from deepembed.viz.style import DPI, class_colours, figure, styled

LEGEND_UP_TO = 20  # classes; more and a legend is a wall of text
THUMBNAIL_POINTS = 28  # drawn size of a thumbnail's longer side, in points (1/72 inch)


def umap_available() -> bool:
    """Whether umap-learn is installed (:func:`umap_2d` needs it)."""
    return importlib.util.find_spec("umap") is not None


def umap_2d(vectors: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, 2) UMAP coordinates of (N, D) vectors (cosine metric), seeded.

    Raises:
        UserError: umap-learn is not installed.
    """
    if not umap_available():
        raise UserError(
            "UMAP needs the optional package umap-learn (pip install umap-learn); "
            "t-SNE (deepembed.viz.tsne.tsne_2d) works without it"
        )
    from umap import UMAP  # imported here: optional, and a slow import

    vectors = np.asarray(vectors, dtype=np.float32)
    reducer = UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, len(vectors) - 1)),
        metric="cosine",
        random_state=seed,
    )
    return np.asarray(reducer.fit_transform(vectors), dtype=np.float64)


def _thumbnail(image: Image.Image) -> OffsetImage:
    """`image` shrunk to a small RGB picture drawn THUMBNAIL_POINTS on its longer side."""
    pixels = round(THUMBNAIL_POINTS * DPI / 72)  # one image pixel per screen pixel at DPI
    small = image.convert("RGB")
    small.thumbnail((pixels, pixels))
    # OffsetImage draws one array pixel per point, times zoom
    return OffsetImage(np.asarray(small), zoom=THUMBNAIL_POINTS / max(small.size))


@styled
def embedding_map_figure(
    xy: np.ndarray,
    labels: np.ndarray,
    class_names: Mapping[int, str] | None = None,
    thumbnails: Sequence[tuple[int, Image.Image]] | None = None,
    title: str = "Map of embeddings",
) -> Figure:
    """A scatter map of 2-D coordinates coloured by class, with small images at some points.

    Args:
        xy: (N, 2) coordinates (from t-SNE or UMAP; their scale means nothing, so no ticks).
        labels: (N,) class of each point.
        class_names: class id -> name for the legend (drawn for up to LEGEND_UP_TO classes).
        thumbnails: (row, image) pairs; each image is drawn at ``xy[row]``, framed in the
            colour of its class, so a reader sees which images lie where.
        title: plot title; the numbers of points and classes are appended.

    Raises:
        ValueError: shapes that do not match, or a thumbnail row outside 0..N-1.
    """
    xy = np.asarray(xy, dtype=np.float64)
    labels = np.asarray(labels)
    if xy.ndim != 2 or xy.shape[1] != 2 or labels.shape != (len(xy),):
        raise ValueError(f"need xy (N, 2) and labels (N,), got {xy.shape} and {labels.shape}")
    n = len(xy)
    classes, class_of = np.unique(labels, return_inverse=True)  # class_of: (N,) into classes
    colours = class_colours(len(classes))  # (C, 4) RGBA
    names = class_names or {}

    fig = figure(9, 7)
    ax = fig.subplots()
    size = float(np.clip(15000 / max(n, 1), 2, 36))  # marker area (points^2): smaller if dense
    ax.scatter(xy[:, 0], xy[:, 1], c=colours[class_of], s=size, linewidths=0)
    for row, image in thumbnails or ():
        if not 0 <= row < n:
            raise ValueError(f"thumbnail row {row} outside the {n} points")
        frame = {"edgecolor": colours[class_of[row]], "linewidth": 1.5}
        ax.add_artist(AnnotationBbox(_thumbnail(image), xy[row], pad=0.1, bboxprops=frame))
    if len(classes) <= LEGEND_UP_TO:
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colour, label=names.get(c, str(c)))
            for c, colour in zip(classes.tolist(), colours, strict=True)
        ]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{title} ({n} points, {len(classes)} classes)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.spines[:].set_visible(False)
    ax.set_aspect("equal", adjustable="datalim")  # distances read the same in x and y
    return fig
