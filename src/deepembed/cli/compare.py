"""deepembed compare: runs side by side, as HTML and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors
from deepembed.errors import UserError
from deepembed.viz.compare import IGNORED_KEYS, compare_runs, save_comparison, to_markdown


def _metric_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("--metrics: give metric names separated by commas")
    return names


@handle_errors
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (from `train`).")],
    out: Annotated[
        Path, typer.Option(help="Output prefix: writes PREFIX.html and PREFIX.md.")
    ] = Path("comparison"),
    metrics: Annotated[
        str | None,
        typer.Option(help='Metric columns, comma-separated, e.g. "map@r,recall@1,val map@r".'),
    ] = None,
    all_keys: Annotated[
        bool, typer.Option(help=f"Also show {', '.join(IGNORED_KEYS)} when they differ.")
    ] = False,
) -> None:
    """A table of runs: the config keys that differ, metrics (best in bold) and time."""
    comparison = compare_runs(
        run_dirs, _metric_list(metrics), ignore=() if all_keys else IGNORED_KEYS
    )
    html_path, md_path = save_comparison(comparison, out)
    typer.echo(to_markdown(comparison).rstrip("\n"))
    typer.echo(f"HTML -> {html_path}")
    typer.echo(f"Markdown -> {md_path}")
