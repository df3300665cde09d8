"""Pieces of self-contained HTML pages (reports, run comparisons): no script, no network.

Every function returns an HTML fragment as a string; text is escaped here, so callers pass
plain values. Images are inlined as data URIs.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
.grid .tile { display: flex; align-items: center; justify-content: center;
  width: 72px; height: 72px; background: #f4f4f6; border: 3px solid transparent;
  font-size: 10px; overflow: hidden; }
.grid .query img, .grid .query .tile { border-color: #3b6fd8; }
.grid .hit img, .grid .hit .tile { border-color: #1a9641; }
.grid .miss img, .grid .miss .tile { border-color: #d7191c; }
.grid th { background: none; border: none; font-weight: normal; text-align: right;
  font-size: 11px; padding-right: 6px; }
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


@dataclass(frozen=True)
class Cell:
    """A table cell given as is: its text, right-aligned if numeric, bold if strong."""

    text: str
    numeric: bool = False
    strong: bool = False

    def html(self) -> str:
        inner = f"<strong>{esc(self.text)}</strong>" if self.strong else esc(self.text)
        return f'<td class="num">{inner}</td>' if self.numeric else f"<td>{inner}</td>"


def table(
    headers: Sequence[str] | None, rows: Iterable[Sequence[object]], numeric_from: int = 1
) -> str:
    """A table (no header row when `headers` is None). Plain values in columns from
    `numeric_from` on are numbers (formatted by `number`, right-aligned); a `Cell` is
    rendered as it says."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers or ())
    body = []

    def cell(i: int, v: object) -> Cell:
        if isinstance(v, Cell):
            return v
        return Cell(number(v), True) if i >= numeric_from else Cell(str(v))

    for row in rows:
        cells = [
            v
            if isinstance(v, Cell)
            else Cell(number(v), True)
            if i >= numeric_from
            else Cell(str(v))
            for i, v in enumerate(row)
        ]
        body.append(f"<tr>{''.join(c.html() for c in cells)}</tr>")
    head_row = f"<tr>{head}</tr>" if head else ""
    return f"<table>{head_row}{''.join(body)}</table>"


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
