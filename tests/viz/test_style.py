"""The shared style: figure size, PNG bytes and atomic PNG files, colours, legends."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.artist import Artist
from matplotlib.colors import to_hex
from PIL import Image

from deepembed.viz.style import (
    PALETTE,
    RC,
    class_colours,
    figure,
    legend_if_labelled,
    png_bytes,
    save_png,
    styled,
)
from tests.viz.helpers import png_size


class _Broken(Artist):
    """An artist whose drawing fails, as a bug in a plot would."""

    def draw(self, renderer: object) -> None:
        raise RuntimeError("drawing failed")


@styled
def _lines() -> matplotlib.figure.Figure:
    fig = figure(4, 3)
    ax = fig.subplots()
    for i in range(3):
        ax.plot([0, 1], [i, i + 1], label=f"line {i}")
    legend_if_labelled(ax)
    return fig


def test_figure_renders_to_png_of_its_size():
    fig = figure(6, 4)
    fig.subplots().plot([1, 2, 3])
    assert png_size(fig) == (600, 400)  # 6 x 4 inches at 100 dpi
    assert png_bytes(fig).startswith(b"\x89PNG\r\n\x1a\n")


def test_style_applies_whatever_the_global_settings():
    # a caller that changed matplotlib's global settings does not change our plots
    with matplotlib.rc_context(
        {"xtick.labelsize": 30, "axes.prop_cycle": matplotlib.cycler(color=["#ff0000"] * 3)}
    ):
        fig = _lines()
        png_bytes(fig)  # tick labels are created while drawing
    ax = fig.axes[0]
    assert [to_hex(line.get_color()) for line in ax.lines] == [c.lower() for c in PALETTE[:3]]
    tick = ax.xaxis.get_major_ticks()[0]
    assert tick.label1.get_fontsize() == RC["xtick.labelsize"]
    assert ax.xaxis.get_gridlines()[0].get_alpha() == RC["grid.alpha"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["line 0", "line 1", "line 2"]


def test_legend_only_when_labelled():
    fig = figure(3, 3)
    ax = fig.subplots()
    ax.plot([0, 1])
    legend_if_labelled(ax)
    assert ax.get_legend() is None


def test_save_png_creates_parents_and_leaves_no_temp_files(tmp_path: Path):
    out = save_png(_lines(), tmp_path / "a" / "b" / "plot.png")
    assert out == tmp_path / "a" / "b" / "plot.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (400, 300)
    assert [p.name for p in out.parent.iterdir()] == ["plot.png"]


def test_save_png_keeps_the_old_file_when_drawing_fails(tmp_path: Path):
    path = tmp_path / "plot.png"
    save_png(_lines(), path)
    before = path.read_bytes()
    fig = _lines()
    fig.add_artist(_Broken())
    with pytest.raises(RuntimeError, match="drawing failed"):
        save_png(fig, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with pytest.raises(RuntimeError, match="drawing failed"):
        save_png(fig, tmp_path / "new" / "plot.png")
    assert not (tmp_path / "new" / "plot.png").exists()


@pytest.mark.parametrize("count", [1, 3, 8, 9, 20, 21, 300])
def test_class_colours_are_distinct(count: int):
    colours = class_colours(count)
    assert colours.shape == (count, 4)
    assert len({tuple(np.round(c, 6)) for c in colours}) == count
    if count <= len(PALETTE):
        assert [to_hex(c) for c in colours] == [c.lower() for c in PALETTE[:count]]


def test_png_bytes_decode_to_pixels_of_the_plot():
    fig = figure(2, 2)
    ax = fig.subplots()
    ax.set_facecolor("#00ff00")
    ax.set_axis_off()
    fig.patch.set_facecolor("#00ff00")
    with Image.open(io.BytesIO(png_bytes(fig))) as image:
        assert image.convert("RGB").getpixel((100, 100)) == (0, 255, 0)
