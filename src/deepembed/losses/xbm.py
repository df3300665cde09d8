"""Cross-batch memory (XBM): a queue of past embeddings for any pair-based loss."""

from __future__ import annotations
