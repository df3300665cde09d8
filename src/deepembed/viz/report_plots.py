"""The report's figures as PNG bytes, ready to inline (the drawing lives in the plot modules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepembed.inference import Embeddings
from deepembed.viz.curves import recall_figure, recall_points, training_curves_figure
from deepembed.viz.grids import Thumbnails
from deepembed.viz.hashing import hamming_histograms_figure, hashing_figure
from deepembed.viz.maps import embedding_map_figure, umap_2d, umap_available
from deepembed.viz.style import png_bytes
from deepembed.viz.tsne import stratified_sample, tsne_2d


def training_figure_png(
    history: Sequence[Mapping[str, Any]], kept_epoch: int | None, metric: str
) -> bytes | None:
    """Loss and the evaluated metric per epoch; None without a history."""
    if not history:
        return None
    return png_bytes(training_curves_figure(history, kept_epoch, metric))


def recall_figure_png(recall: Mapping) -> bytes | None:
    """Recall@K against K from {K: recall} or a metrics dict; None without values."""
    if not recall_points(recall)[0]:
        return None
    return png_bytes(recall_figure(recall))


def hashing_figures(curves: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(alt text, PNG) of the precision-recall / precision@N curves and, where the curves
    carry it, the Hamming distance histogram of relevant and irrelevant pairs."""
    out = [("precision-recall and precision@N", png_bytes(hashing_figure(curves)))]
    hist = curves.get("distance_histogram")
    if isinstance(hist, Mapping):
        fig = hamming_histograms_figure(
            np.asarray(hist["relevant"], np.float64), np.asarray(hist["irrelevant"], np.float64)
        )
        out.append(("Hamming distance histograms", png_bytes(fig)))
    return out


def embedding_maps(
    query: Embeddings,
    thumbs: Thumbnails,
    max_points: int,
    max_thumbnails: int,
    seed: int,
) -> list[tuple[str, bytes | None]]:
    """t-SNE (and UMAP where installed) maps of a stratified sample of the query items,
    coloured by class, with pictures at a seeded subset of the points. An entry with PNG
    None is a note (its text in place of the alt text)."""
    labels = query.labels
    if labels.ndim != 1:
        return [("The map colours points by class: it needs single labels.", None)]
    if len(query) < 5:
        return [(f"Too few items for a map ({len(query)}).", None)]
    rows = stratified_sample(labels, max_points, seed)
    vectors = query.vectors[rows]
    if not np.ptp(vectors, axis=0).any():  # a collapsed model: t-SNE's PCA start divides by 0
        return [("Every embedding of the sample is the same point: no map to draw.", None)]
    picked = np.random.default_rng(seed).permutation(len(rows))[:max_thumbnails]
    pictures = [(int(p), thumbs.image(int(query.ids[rows[p]]))) for p in np.sort(picked)]
    thumbnails = [(p, image) for p, image in pictures if image is not None]
    maps = [("t-SNE", tsne_2d(vectors, seed))]
    if umap_available():
        maps.append(("UMAP", umap_2d(vectors, seed)))
    out: list[tuple[str, bytes | None]] = []
    for method, xy in maps:
        fig = embedding_map_figure(
            xy,
            labels[rows],
            query.class_names,
            thumbnails,
            title=f"{method} of the test embeddings",
        )
        out.append((f"{method} map", png_bytes(fig)))
    if not umap_available():
        out.append(("UMAP map: install umap-learn to add it.", None))
    return out
