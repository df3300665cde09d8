"""deepembed report: one self-contained HTML page of a run (the trainer writes it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors, progress_enabled
from deepembed.errors import UserError


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (from `train`).")],
    out: Annotated[Path | None, typer.Option(help="HTML file; default <run>/report.html.")] = None,
    queries: Annotated[int, typer.Option(help="Queries in the retrieval grid.")] = 12,
    map_points: Annotated[int, typer.Option(help="Points on the embedding map.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the query and map samples.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Write the run's report: metrics beside baselines, curves, retrieval grids, the worst
    queries, per-class MAP@R, the embedding map and the config, images inlined."""
    from deepembed.viz.report import ReportOptions, write_report  # plotting loads slowly

    if queries < 0 or map_points < 5:
        raise UserError("--queries must be >= 0 and --map-points >= 5")
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out: folder {out.parent} does not exist")
    if out is not None and out.is_dir():
        raise UserError(f"--out: {out} is a folder; give an .html file path")
    options = ReportOptions(grid_queries=queries, map_points=map_points, seed=seed)
    path = write_report(run_dir, out, options, progress=progress_enabled(quiet))
    typer.echo(f"report -> {path}")
