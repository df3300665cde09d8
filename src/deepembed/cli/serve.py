"""`deepembed serve RUN_DIR`: the HTTP search service and its web page (uvicorn)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from deepembed.cli.common import handle_errors
from deepembed.errors import DataError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _index_of(run_dir: Path) -> str:
    for name in ("index", "index.db"):
        if (run_dir / name).exists():
            return str(run_dir / name)
    raise DataError(f"no index in {run_dir}: run `deepembed index build {run_dir}` first")


@handle_errors
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (its model/ and index).")],
    index: Annotated[
        str | None, typer.Option(help="Index directory or Milvus URI; default <run>/index.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Key every change must carry (X-API-Key); or $DEEPEMBED_API_KEY."),
    ] = None,
    public_without_key: Annotated[
        bool,
        typer.Option("--public-without-key", help="Allow a non-loopback --host with no API key."),
    ] = False,
    max_batch: Annotated[int, typer.Option(help="Images embedded together (1: off).")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="Wait for more images (ms).")] = 5.0,
    max_passes: Annotated[
        int, typer.Option(help="Model passes at once with --max-batch 1 (0: twice the cores).")
    ] = 0,
    max_upload_mb: Annotated[float, typer.Option(help="Request body limit (MiB).")] = 20.0,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow this origin (CORS; repeatable).")
    ] = None,
) -> None:
    """Serve search, add and remove over HTTP, with the web page at /."""
    import faiss
    import torch
    import uvicorn

    from deepembed.data.item_images import DatasetImages
    from deepembed.index.searcher import Searcher
    from deepembed.service import ServiceSettings, create_app

    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    key = api_key or os.environ.get("DEEPEMBED_API_KEY") or None
    if not _loopback(host) and key is None and not public_without_key:
        raise DataError(
            f"refusing to serve on {host} without an API key: give --api-key "
            "(or --public-without-key to allow anyone to change the index)"
        )
    if not 1 <= port <= 65535:
        raise DataError(f"--port must be 1-65535, got {port}")
    if max_batch < 1 or max_passes < 0:
        raise DataError(
            f"--max-batch must be >= 1 and --max-passes >= 0, got {max_batch} / {max_passes}"
        )
    searcher = Searcher.open(index or _index_of(run_dir), run_dir / "model")
    searcher.model  # load and check the model now, not at the first request  # noqa: B018
    settings = ServiceSettings(
        api_key=key,
        images_dir=run_dir / "uploads",
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_passes=max_passes,
        cors_origins=tuple(cors_origin or ()),
        model_name=str(run_dir / "model"),
    )
    gallery = DatasetImages.of_run(run_dir)
    if gallery is not None:
        gallery.warm()
    app = create_app(searcher, settings, gallery)
    typer.echo(
        f"serving {len(searcher.index)} items of {run_dir} at http://{host}:{port}/ "
        f"(API docs at /docs)",
        err=True,
    )
    # Thread counts are process-wide: set only here, when serving starts (a refused call
    # leaves them alone). faiss: one thread per search, as concurrency comes from
    # concurrent requests and the OpenMP threads of simultaneous searches would fight.
    faiss.omp_set_num_threads(1)
    # torch: half the cores for the (micro-batched) forward passes, the rest for HTTP,
    # decoding and searches; measured on 2 cores under load, one small forward pass took
    # 2.5 ms with 1 thread and 26-54 ms with 2 threads fighting the server's other work
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
