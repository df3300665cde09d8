"""deepembed model create: a model directory from pretrained weights, with no training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
import yaml

from deepembed.cli.common import handle_errors
from deepembed.errors import UserError
from deepembed.models.backbones import Pretrained
from deepembed.models.embedder import Embedder, EmbedderSpec

model_app = typer.Typer(help="Create and inspect model directories.", no_args_is_help=True)


def parse_pretrained(value: str) -> Pretrained | None:
    """ "" -> the backbone's default; true/false; anything else is a weights file path."""
    if not value:
        return None
    parsed = yaml.safe_load(value) if value.lower() in ("true", "false", "yes", "no") else value
    return parsed if isinstance(parsed, bool) else str(value)


def create_model(
    backbone: str,
    out: Path,
    embedding_dim: int = 0,
    pretrained: Pretrained | None = None,
    pool: str = "",
    image_size: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    center_crop: bool = True,
) -> Embedder:
    """Build `backbone` with its weights (a random seeded projection when embedding_dim > 0)
    and save it to `out`; an existing directory is refused unless `overwrite`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    torch.manual_seed(seed)
    spec = EmbedderSpec(
        backbone=backbone,
        pretrained=pretrained,
        pool=pool,
        embedding_dim=embedding_dim,
        image_size=image_size,
        center_crop=center_crop,
    )
    model = Embedder(spec).eval()
    model.check_input()
    model.save(out)
    return model


@model_app.command("create")
@handle_errors
def create(
    backbone: Annotated[
        str,
        typer.Argument(help="small_cnn, efficientnet_lite0, timm/<arch> or torchvision/<arch>."),
    ],
    out_dir: Annotated[Path, typer.Argument(help="Model directory to write.")],
    embedding_dim: Annotated[
        int, typer.Option(help="0: the pooled features themselves; >0: a random projection.")
    ] = 0,
    pretrained: Annotated[
        str, typer.Option(help="true, false or a weights file; default: the backbone's own.")
    ] = "",
    pool: Annotated[str, typer.Option(help="avg, max, avgmax, gem; default the backbone's.")] = "",
    image_size: Annotated[int, typer.Option(help="Square input size; 0: the backbone's.")] = 0,
    center_crop: Annotated[
        bool, typer.Option(help="The backbone's centre crop; --no-center-crop: whole image.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of any randomly initialised part.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
) -> None:
    """A model directory straight from pretrained weights: the off-the-shelf baseline that
    every command (embed, evaluate --model, index, search, export) takes like a trained one."""
    if embedding_dim < 0 or image_size < 0:
        raise UserError("--embedding-dim and --image-size must be >= 0")
    model = create_model(
        backbone,
        out_dir,
        embedding_dim,
        parse_pretrained(pretrained),
        pool,
        image_size,
        seed,
        overwrite,
        center_crop,
    )
    pre = model.preprocessing
    typer.echo(
        f"{backbone}: {model.embedding_dim}-d embeddings of {pre.shape[1]}x{pre.shape[2]} "
        f"{'RGB' if pre.channels == 3 else 'grey'} input -> {out_dir}"
    )
