"""deepembed train / embed / evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from torch.utils.data import Dataset

from deepembed.cli.common import (
    format_metrics,
    handle_errors,
    is_main_process,
    progress_enabled,
    run_dir_of,
)
from deepembed.config import load_config
from deepembed.data.adapt import Loading
from deepembed.errors import UserError
from deepembed.inference import (
    Embeddings,
    embed_split,
    evaluate_embeddings,
    evaluate_model,
    open_split_for,
)
from deepembed.io import write_json
from deepembed.models.embedder import Embedder
from deepembed.training import train as train_run
from deepembed.training.rundir import resume_config
from deepembed.viz.curves import plot_recall_at_k

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


@handle_errors
def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="[CONFIG.yaml] then overrides such as train.epochs=1 loss.name=triplet"
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing run directory (only once the new run has finished).",
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the interrupted run RUN_DIR from its last checkpoint (its own "
            "config; a CONFIG or overrides may change only train.device, threads, workers ...).",
            metavar="RUN_DIR",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train an embedding model; everything of the run lands in <output_dir>/<name>/.

    Every input is checked before anything is written; an existing run directory is refused
    unless --overwrite, and a failed run leaves it as it was. An interrupted run (Ctrl-C,
    SIGTERM, SIGKILL, a crash) keeps its checkpoints: continue it with --resume RUN_DIR.
    Under torchrun (`torchrun --nproc-per-node N -m deepembed train ...`) it trains with
    distributed data parallelism."""
    args = list(args or [])
    config_path = args.pop(0) if args and "=" not in args[0] else None
    if resume is not None:
        if overwrite:
            raise UserError("--resume continues a run; --overwrite starts one afresh: not both")
        config = resume_config(resume, config_path, args)
    else:
        config = load_config(config_path, args)
    result = train_run(
        config, progress=progress_enabled(quiet), overwrite=overwrite, resume=resume is not None
    )
    if not is_main_process():  # the other ranks of a torchrun launch stay quiet
        return
    typer.echo(
        format_metrics({k: v for k, v in result.metrics.items() if k in config.eval.metrics})
    )
    typer.echo(f"run directory: {result.run_dir}")
    typer.echo(f"model: {result.model_dir}")


@handle_errors
def embed_command(
    model: Annotated[
        Path, typer.Argument(help="Model directory (config.json + model.safetensors).")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "mnist30",
    split: Annotated[str, typer.Option(help="Split to embed.")] = "test",
    root: Annotated[str, typer.Option(help="Dataset root; empty = default locations.")] = "",
    eval_per_source: Annotated[
        int, typer.Option(help="mnist family: test images per source.")
    ] = 5000,
    out: Annotated[
        Path | None, typer.Option(help="Output .npz; default <run>/embeddings/<split>.npz")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Embed a dataset split with a model: vectors, labels and ids to an .npz file. Images
    are preprocessed exactly as the model directory says (size, crop, channels)."""
    embedder = Embedder.load(model)
    loading = Loading(progress=progress_enabled(quiet))
    embeddings = embed_split(embedder, dataset, root, split, eval_per_source, loading)
    path = embeddings.save(out or run_dir_of(model) / "embeddings" / f"{split}.npz")
    typer.echo(f"{len(embeddings)} embeddings of {dataset}/{split} -> {path}")


@handle_errors
def evaluate(
    embeddings: Annotated[
        Path | None,
        typer.Argument(help="Query embeddings (.npz from `embed`); or use --model + --dataset."),
    ] = None,
    gallery: Annotated[
        Path | None,
        typer.Option(help="Gallery embeddings; omitted = leave-one-out on the query set."),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model directory to embed --dataset with.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset name (with --model).")] = "mnist30",
    split: Annotated[str, typer.Option(help="Split for leave-one-out (with --model).")] = "test",
    query_split: Annotated[
        str, typer.Option(help="Query split for query/gallery sets such as inshop.")
    ] = "",
    gallery_split: Annotated[str, typer.Option(help="Gallery split (with --query-split).")] = "",
    root: Annotated[str, typer.Option(help="Dataset root; empty = default locations.")] = "",
    eval_per_source: Annotated[
        int, typer.Option(help="mnist family: test images per source.")
    ] = 5000,
    metrics: Annotated[str, typer.Option(help="Comma-separated metric names.")] = (
        "recall@1,recall@2,recall@4,recall@8,map@r,r_precision,nmi"
    ),
    distance: Annotated[
        str, typer.Option(help="cosine, inner_product, euclidean, squared_euclidean, hamming.")
    ] = "cosine",
    backend: Annotated[str, typer.Option(help="k-NN backend: auto, torch or faiss.")] = "auto",
    out: Annotated[
        Path | None,
        typer.Option(
            help="JSON path; default <run>/evaluation.json (training's metrics.json is kept)."
        ),
    ] = None,
    plot: Annotated[
        bool, typer.Option("--plot", help="Also write recall_at_k.png beside the JSON.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Recall@K, MAP@R, mAP, NMI ... of embeddings (or of a model on a dataset); prints a
    table, writes evaluation.json (never the run's metrics.json, which training wrote)."""
    names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if plot and not any(n.startswith("recall@") for n in names):
        raise UserError("--plot needs recall@K metrics in --metrics")
    sources: dict[str, str] = {}
    if model is not None:
        if embeddings is not None or gallery is not None:
            raise UserError("give either embeddings files or --model, not both")
        if bool(query_split) != bool(gallery_split):
            raise UserError("--query-split and --gallery-split go together")
        embedder = Embedder.load(model)
        loading = Loading(progress=progress_enabled(quiet))

        def open_one(name: str) -> Dataset:
            return open_split_for(embedder, dataset, root, name, eval_per_source, loading)

        query_set = open_one(query_split or split)
        gallery_set = open_one(gallery_split) if gallery_split else None
        if gallery_set is not None and len(gallery_set) == 0:  # type: ignore[arg-type]
            raise UserError(f"empty gallery: split {gallery_split} holds no images")
        # the one evaluation path of training's callback and final test
        result, *_ = evaluate_model(
            embedder,
            query_set,
            gallery_set,
            names,
            distance,
            progress=loading.progress,
            backend=backend,
        )
        sources = {"model": str(model), "dataset": dataset}
        sources |= {"query": query_split, "gallery": gallery_split} if gallery_split else {}
        sources |= {} if gallery_split else {"split": split}
        default_dir = run_dir_of(model)
    elif embeddings is not None:
        query = Embeddings.load(embeddings)
        ref = Embeddings.load(gallery) if gallery is not None else None
        if ref is not None and len(ref) == 0:
            raise UserError(f"empty gallery: {gallery} holds no embeddings")
        result = evaluate_embeddings(query, ref, names, distance, backend)
        sources = {"query": str(embeddings), "gallery": str(gallery or embeddings)}
        default_dir = run_dir_of(embeddings)
    else:
        raise UserError("nothing to evaluate: give an embeddings .npz or --model DIR")
    result = {**result, **sources}
    typer.echo(format_metrics(result))
    path = write_json(out or default_dir / "evaluation.json", result)
    typer.echo(f"metrics -> {path}")
    if plot:
        png = plot_recall_at_k(result, path.parent / "recall_at_k.png")
        typer.echo(f"Recall@K curve -> {png}")
