"""Retrieval grids: a query, then its top-k results, correct ones framed green, wrong red.

Pictures come from the run's own dataset by item id (`DatasetImages`), shrunk to thumbnails
and inlined; without the images on disk every cell still shows the item's class and
distance, in a text tile, so the grid reads the same.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from deepembed.data.images import convert_image
from deepembed.data.item_images import DatasetImages
from deepembed.inference import Embeddings
from deepembed.viz.html import data_uri, esc
from deepembed.viz.report_data import Retrieval

THUMB = 72  # px, the longer side of a grid thumbnail


class Thumbnails:
    """Item id -> a small PIL image or an inlined PNG of it; None when there is no picture.

    Each item is decoded once (a report shows an item in several grids and on the map)."""

    def __init__(self, images: DatasetImages | None, size: int = THUMB) -> None:
        self.images, self.size = images, size
        self._cache: dict[int, Image.Image | None] = {}
        self._uris: dict[int, str | None] = {}

    def image(self, item_id: int) -> Image.Image | None:
        if item_id not in self._cache:
            picture = None if self.images is None else self.images(int(item_id))
            if picture is not None:
                picture = convert_image(picture, 3)
                picture.thumbnail((self.size, self.size))
            self._cache[item_id] = picture
        return self._cache[item_id]

    def uri(self, item_id: int) -> str | None:
        if item_id not in self._uris:
            picture = self.image(item_id)
            if picture is None:
                self._uris[item_id] = None
            else:
                out = io.BytesIO()
                picture.save(out, "PNG", optimize=True)
                self._uris[item_id] = data_uri(out.getvalue())
        return self._uris[item_id]

    def any_available(self, item_ids: Sequence[int]) -> bool:
        """Whether any of these items has a picture (the dataset is opened on first use)."""
        return any(self.image(int(i)) is not None for i in item_ids[:3])


def class_name(embeddings: Embeddings, row: int) -> str:
    """The class of one item as text: its name where the run recorded one."""
    label = embeddings.labels[row]
    if np.ndim(label):  # multi-label: the classes it has
        return "+".join(embeddings.class_names.get(int(c), str(c)) for c in np.flatnonzero(label))
    return embeddings.class_names.get(int(label), str(int(label)))


def _cell(css: str, item_id: int, uri: str | None, title: str, caption: str) -> str:
    tile = (
        f'<img src="{uri}" alt="{esc(title)}">' if uri else f'<div class="tile">{esc(title)}</div>'
    )
    attrs = f'class="{css}" data-item="{item_id}" title="{esc(title)}"'
    return f"<td {attrs}>{tile}<div>{esc(caption)}</div></td>"


def retrieval_grid(
    rows: Sequence[int] | np.ndarray,
    retrieval: Retrieval,
    query: Embeddings,
    gallery: Embeddings,
    query_thumbs: Thumbnails,
    gallery_thumbs: Thumbnails,
) -> str:
    """An HTML table, one line per query row: the query (blue), then its neighbours framed
    green (relevant) or red, each with its distance; the line starts with the query's class
    and MAP@R."""
    lines = []
    for r in rows:
        r = int(r)
        ap = retrieval.ap[r]
        head = esc(class_name(query, r)) + (f"<br>MAP@R {ap:.2f}" if np.isfinite(ap) else "")
        q_id = int(query.ids[r])
        cells = [
            _cell("query", q_id, query_thumbs.uri(q_id), class_name(query, r), f"query {q_id}")
        ]
        for j, g in enumerate(retrieval.neighbours[r]):
            g_id = int(gallery.ids[g])
            css = "hit" if retrieval.hits[r, j] else "miss"
            title = f"{class_name(gallery, int(g))} (item {g_id})"
            dist = f"{retrieval.distances[r, j]:.3g}"
            cells.append(_cell(css, g_id, gallery_thumbs.uri(g_id), title, dist))
        lines.append(f"<tr><th>{head}</th>{''.join(cells)}</tr>")
    return f'<table class="grid">{"".join(lines)}</table>'
