"""Pieces of self-contained HTML pages (reports, run comparisons): no script, no network.

Every function returns an HTML fragment as a string; text is escaped here, so callers pass
plain values. Images are inlined as data URIs.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from deepembed.io import atomic_write

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d1d1f; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-style: italic; } .muted { color: #777; font-size: 12px; }
pre { background: #f7f7f9; padding: 8px; overflow-x: auto; font-size: 12px; }
img.plot { max-width: 100%; height: auto; }
.grid { border-collapse: separate; border-spacing: 4px; }
.grid td { border: none; padding: 0; text-align: center; font-size: 11px; }
.grid img { display: block; width: 72px; height: 72px; object-fit: contain;
            background: #fff; border: 3px solid transparent; }
.grid .query img { border-color: #3b6fd8; } .grid .hit img { border-color: #1a9641; }
.grid .miss img { border-color: #d7191c; } .grid th { background: none; border: none;
  font-weight: normal; text-align: right; font-size: 11px; padding-right: 6px; }
"""


def esc(value: object) -> str:
    """Text escaped for HTML."""
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 4) -> str:
    """A table cell's text for a value: floats to `digits` decimals, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric_from: int = 1) -> str:
    """A table; cells from column `numeric_from` on are numbers (right-aligned)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [
            f'<td class="num">{esc(number(v))}</td>' if i >= numeric_from else f"<td>{esc(v)}</td>"
            for i, v in enumerate(row)
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def data_uri(payload: bytes, mime: str = "image/png") -> str:
    """`payload` as a data: URI."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def image(payload: bytes, alt: str, css: str = "plot", mime: str = "image/png") -> str:
    """An inlined image."""
    return f'<img class="{css}" alt="{esc(alt)}" src="{data_uri(payload, mime)}">'


def folded(summary: str, content_html: str) -> str:
    """A section closed until clicked."""
    return f"<details><summary>{esc(summary)}</summary>{content_html}</details>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(title: str, content_html: str, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{content_html}</section>"


def page(title: str, body_html: str) -> str:
    """A whole HTML document with the shared style."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{esc(title)}</h1>{body_html}</body></html>\n"
    )


def write_page(path: str | Path, title: str, body_html: str) -> Path:
    """Write `page(title, body_html)` to `path` atomically (a reader never sees half)."""
    text = page(title, body_html)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"), ".html")
