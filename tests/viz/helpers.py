"""Small helpers for the plot and report tests: decode a PNG, read a report's HTML."""

from __future__ import annotations

import io
import re

from matplotlib.figure import Figure
from PIL import Image

from deepembed.viz.style import png_bytes


def png_size(fig: Figure) -> tuple[int, int]:
    """(width, height) in pixels of `fig` rendered as PNG, checked to decode as a PNG."""
    with Image.open(io.BytesIO(png_bytes(fig))) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def grid_rows(html: str) -> list[list[tuple[str, int, str]]]:
    """[(css class, item id, caption)] of each grid line: the query first."""
    rows = []
    for line in re.findall(r"<tr><th>.*?</tr>", html, re.S):
        cells = re.findall(r'<td class="(\w+)" data-item="(\d+)".*?<div>([^<]*)</div></td>', line)
        rows.append([(css, int(item), caption) for css, item, caption in cells])
    return rows


def table_rows(html: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", html)]
