"""The one plot style of the project, and the ways a figure leaves the process (PNG file, bytes).

No pyplot: figures are plain :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, so nothing depends on a display or on pyplot's global list of open figures.

A figure function is decorated with :func:`styled`; it builds its figure with :func:`figure`.
The style is matplotlib's rc settings in :data:`RC`, applied (with ``matplotlib.rc_context``)
while the figure is built and again while it is rendered, because matplotlib creates tick
labels lazily at draw time. ``rc_context`` changes the process-wide settings for its duration:
render figures from one thread at a time.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.colors import hsv_to_rgb, to_rgba
from matplotlib.figure import Figure

from deepembed.io import atomic_write

DPI = 100

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; every plot's lines,
# bars and (up to 8) classes take their colours in this order
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

RC: dict[str, Any] = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.grid.which": "both",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "figure.facecolor": "white",
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "image.cmap": "viridis",
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(build: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run a figure-building function under the project style (:data:`RC`)."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context(RC):
            return build(*args, **kwargs)

    return wrapper


@styled
def figure(width: float, height: float) -> Figure:
    """An empty figure of `width` x `height` inches at :data:`DPI`, laid out by matplotlib's
    constrained layout (titles, labels and legends never overlap or get cut)."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def class_colours(count: int) -> np.ndarray:
    """(count, 4) distinct RGBA colours for `count` classes: :data:`PALETTE` while it lasts,
    then tab20 (dark shades first), then hues at golden-ratio steps (classes i and i + 1
    far apart in hue) at three levels of brightness."""
    if count <= len(PALETTE):
        return np.array([to_rgba(c) for c in PALETTE[:count]]).reshape(count, 4)
    if count <= 20:
        # tab20 holds dark/light pairs of a hue: all dark ones first, then the light ones
        order = np.r_[0:20:2, 1:20:2][:count]
        return np.asarray(matplotlib.colormaps["tab20"](order))
    i = np.arange(count)
    hsv = np.stack([(i * 0.618034) % 1.0, np.full(count, 0.8), 0.95 - 0.2 * (i % 3)], axis=1)
    return np.concatenate([hsv_to_rgb(hsv), np.ones((count, 1))], axis=1)


def legend_if_labelled(ax: Axes, **kwargs: Any) -> None:
    """Add a legend to `ax` only when some artist has a label (one unnamed curve has none)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(**kwargs)


@styled
def render(fig: Figure, fmt: str = "png") -> bytes:
    """`fig` encoded as `fmt` (png, svg, pdf) at the figure's dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=fig.dpi)
    return buffer.getvalue()


def png_bytes(fig: Figure) -> bytes:
    """`fig` as PNG bytes (for a data: URI in an HTML page)."""
    return render(fig, "png")


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG file atomically: parents are created, a reader never sees half a
    file, and if drawing fails an existing file at `path` is left as it was."""
    payload = render(fig, "png")  # drawn before anything touches the disk
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(payload), suffix=".png")
