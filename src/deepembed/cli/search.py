"""deepembed index build / search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from deepembed import index as index_lib
from deepembed.cli.common import handle_errors, run_dir_of
from deepembed.data.images import load_image
from deepembed.errors import DataError
from deepembed.inference import Embeddings
from deepembed.models.embedder import Embedder

index_app = typer.Typer(help="Build and inspect search indexes.", no_args_is_help=True)


@index_app.command("build")
@handle_errors
def build(
    embeddings: Annotated[Path, typer.Argument(help="Gallery embeddings (.npz from `embed`).")],
    out: Annotated[Path | None, typer.Option(help="Index directory; default <run>/index")] = None,
    metric: Annotated[str, typer.Option(help="cosine or euclidean.")] = "cosine",
) -> None:
    """Build an exact faiss index over a gallery of embeddings and save it."""
    gallery = Embeddings.load(embeddings)
    index = index_lib.build(gallery, metric)
    path = index.save(out or run_dir_of(embeddings) / "index")
    typer.echo(f"indexed {len(index)} items ({index.dim}-d, {metric}) -> {path}")


@handle_errors
def search(
    index: Annotated[Path, typer.Argument(help="Index directory from `index build`.")],
    image: Annotated[Path | None, typer.Option(help="Query image file (PNG or JPEG).")] = None,
    item: Annotated[int | None, typer.Option("--id", help="Query by an indexed item's id.")] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Model directory for --image; default <run>/model beside the index."),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 5,
) -> None:
    """Nearest items to an image file or to an indexed item: rank, id, label, distance."""
    if (image is None) == (item is None):
        raise DataError("give exactly one of --image FILE or --id N")
    if k < 1:
        raise DataError(f"-k must be at least 1, got {k}")
    opened = index_lib.open(index)
    if image is not None:
        if not image.is_file():
            raise DataError(f"query image not found: {image}")
        picture = load_image(image)  # the one image loader: size guard, EXIF, any mode
        embedder = Embedder.load(model or run_dir_of(index) / "model")
        query = embedder.embed(embedder.preprocess(picture)).numpy()
        distances, ids = opened.search(query, k)
        typer.echo(f"query: {image}")
    else:
        query = opened.vector(int(item))[None]  # type: ignore[arg-type]
        distances, ids = opened.search(query, k + 1)
        keep = ids[0] != item  # the item itself is not a result
        distances, ids = distances[:, keep][:, :k], ids[:, keep][:, :k]
        label = opened.labels[int(item)]  # type: ignore[arg-type]
        typer.echo(f"query: item {item} ({opened.class_names.get(label, label)})")
    typer.echo(f"{'rank':>4}  {'id':>8}  {'label':<28} distance")
    for rank, (d, i) in enumerate(zip(distances[0], ids[0], strict=True), 1):
        label = opened.labels.get(int(i), -1)
        name = f"{label} {opened.class_names.get(label, '')}".strip()
        typer.echo(f"{rank:>4}  {int(i):>8}  {name:<28} {float(np.float32(d)):.4f}")
