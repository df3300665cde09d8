"""Plots of runs and embeddings, in one style (:mod:`deepembed.viz.style`).

Each plot is a function returning a :class:`matplotlib.figure.Figure` (``*_figure``); write
it with :func:`save_png` or inline it with :func:`png_bytes`. The ``plot_*`` functions draw
and write a PNG in one call.
"""

from deepembed.viz.curves import plot_recall_at_k, recall_figure, training_curves_figure
from deepembed.viz.hashing import hamming_histograms_figure, hashing_figure, plot_hashing_curves
from deepembed.viz.maps import embedding_map_figure, umap_2d, umap_available
from deepembed.viz.style import figure, png_bytes, save_png, styled
from deepembed.viz.tsne import plot_tsne, stratified_sample, tsne_2d, tsne_figure

__all__ = [
    "embedding_map_figure",
    "figure",
    "hamming_histograms_figure",
    "hashing_figure",
    "plot_hashing_curves",
    "plot_recall_at_k",
    "plot_tsne",
    "png_bytes",
    "recall_figure",
    "save_png",
    "stratified_sample",
    "styled",
    "training_curves_figure",
    "tsne_2d",
    "tsne_figure",
    "umap_2d",
    "umap_available",
]
