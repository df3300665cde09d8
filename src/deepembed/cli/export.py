"""deepembed export onnx: a model directory as one ONNX file, verified with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors
from deepembed.models.export import export_onnx

export_app = typer.Typer(help="Export model directories to other runtimes.", no_args_is_help=True)


@export_app.command("onnx")
@handle_errors
def onnx_command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (config.json + weights).")],
    out: Annotated[Path, typer.Argument(help="ONNX file to write; OUT.json describes its input.")],
    sample: Annotated[
        int, typer.Option(help="Seeded images on which onnxruntime must reproduce torch.")
    ] = 64,
    opset: Annotated[int, typer.Option(help="ONNX opset version; 0: the exporter's.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the verification sample.")] = 0,
) -> None:
    """Export a model directory to one ONNX file, checked with onnxruntime first.

    The graph takes images (batch, C, H, W) float32 in [0, 1] at the model's input size and
    returns embeddings (batch, D); normalisation is inside it. It is written only once
    onnxruntime matches torch (max abs diff < 1e-4, same top-10 neighbours). The resize and
    crop to apply first are in its metadata and in OUT.json.
    """
    report = export_onnx(model_dir, out, sample, opset or None, seed)
    typer.echo(report.summary())
