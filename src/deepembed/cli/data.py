"""deepembed data prepare / info."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors
from deepembed.data import ROOTLESS
from deepembed.data.prepare import info as dataset_info
from deepembed.data.prepare import prepare as prepare_dataset
from deepembed.errors import UserError

data_app = typer.Typer(help="Fetch datasets and inspect them.", no_args_is_help=True)

Root = Annotated[str, typer.Option("--root", help="Dataset directory.")]


@data_app.command("prepare")
@handle_errors
def prepare(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. cifar10, cub200, sop.")],
    root: Root = "",
) -> None:
    """Download NAME from its official source (MD5-checked) into --root, or say what to place
    where (licensed datasets, offline machines); exit 1 when the data is not in place."""
    if not root and name not in ROOTLESS:
        raise UserError("data prepare needs --root DIR (where the dataset goes)")
    result = prepare_dataset(name, root)
    typer.echo("\n".join(result.lines))
    if not result.ready:
        raise typer.Exit(1)


@data_app.command("info")
@handle_errors
def info(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    root: Root = "",
    full: Annotated[bool, typer.Option(help="Decode every image, not just its header.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts per split, classes, images per class, and problems found."""
    result = dataset_info(name, root, full=full)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for split, s in result.items():
        per = s["images_per_class"]
        extra = f", {s['super_classes']} super-classes" if "super_classes" in s else ""
        typer.echo(
            f"{split}: {s['images']} images, {s['classes']} classes{extra}; images per class "
            f"min {per['min']} median {per['median']:g} max {per['max']}"
        )
        if s["singleton_classes"]:
            typer.echo(
                f"  {s['singleton_classes']} classes with a single image (their queries are "
                "excluded from retrieval averages)"
            )
        problems = s["problems"]
        if problems:
            typer.echo(f"  {len(problems)} problems:")
            for line in problems[:20]:
                typer.echo(f"    {line}")
            if len(problems) > 20:
                typer.echo(f"    ... and {len(problems) - 20} more (--json lists all)")
