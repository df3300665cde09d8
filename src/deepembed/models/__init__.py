"""Backbones, heads and the Embedder that joins them."""

from deepembed.models.backbones import BACKBONES
from deepembed.models.embedder import FORMAT_VERSION, Embedder
from deepembed.models.heads import EmbeddingHead

__all__ = ["BACKBONES", "FORMAT_VERSION", "Embedder", "EmbeddingHead"]
