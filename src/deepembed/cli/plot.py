"""deepembed plot tsne."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors, run_dir_of
from deepembed.inference import Embeddings
from deepembed.viz import plot_tsne

plot_app = typer.Typer(help="Plots of embeddings.", no_args_is_help=True)


@plot_app.command("tsne")
@handle_errors
def tsne(
    embeddings: Annotated[Path, typer.Argument(help="Embeddings (.npz from `embed`).")],
    out: Annotated[Path | None, typer.Option(help="PNG path; default <run>/tsne.png")] = None,
    max_points: Annotated[int, typer.Option(help="Stratified sample size.")] = 5000,
    seed: Annotated[int, typer.Option(help="Sampling and t-SNE seed.")] = 0,
) -> None:
    """A t-SNE map of embeddings coloured by class, as PNG."""
    loaded = Embeddings.load(embeddings)
    path = plot_tsne(
        loaded.vectors,
        loaded.labels,
        out or run_dir_of(embeddings) / "tsne.png",
        loaded.class_names,
        max_points,
        seed,
    )
    typer.echo(f"t-SNE plot -> {path}")
