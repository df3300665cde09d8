"""Small helpers for the plot tests: decode a PNG, find artists."""

from __future__ import annotations

import io

from matplotlib.figure import Figure
from PIL import Image

from deepembed.viz.style import png_bytes


def png_size(fig: Figure) -> tuple[int, int]:
    """(width, height) in pixels of `fig` rendered as PNG, checked to decode as a PNG."""
    with Image.open(io.BytesIO(png_bytes(fig))) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size
