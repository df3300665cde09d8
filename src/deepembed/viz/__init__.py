"""Plots of embeddings."""

from deepembed.viz.tsne import plot_tsne

__all__ = ["plot_tsne"]
