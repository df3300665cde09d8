"""deepembed index build | add | remove | info | tune, and deepembed search: thin layers over
`deepembed.index` and its Searcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from tqdm.auto import tqdm

from deepembed import index as index_lib
from deepembed.cli.common import handle_errors, progress_enabled, run_dir_of
from deepembed.data.images import check_image
from deepembed.errors import DataError
from deepembed.index.filters import merge_filters, parse_filter
from deepembed.index.images import label_numbers, list_images
from deepembed.index.searcher import Hit, Searcher, default_model_dir
from deepembed.inference import Embeddings

index_app = typer.Typer(help="Build, grow, inspect and tune search indexes.", no_args_is_help=True)

ModelOption = Annotated[
    Path | None, typer.Option(help="Model directory; default <run>/model beside the index.")
]
FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", help="key=value on label or metadata; repeat a key for any-of."),
]
ParamOption = Annotated[
    list[str] | None, typer.Option("--param", help="Search parameter name=value (nprobe, ...).")
]
IndexArg = Annotated[
    str,
    typer.Argument(
        help="Index directory, or a Milvus URI: a milvus-lite .db file or "
        "http://host:port, either optionally with #collection."
    ),
]
ADD_CHUNK = 256  # images embedded and committed at a time


def _gallery_file(source: Path) -> Path:
    """An embeddings .npz, or the gallery (else test) embeddings of a run directory."""
    if source.is_dir():
        for name in ("gallery.npz", "test.npz"):
            if (source / "embeddings" / name).is_file():
                return source / "embeddings" / name
        raise DataError(f"no embeddings/gallery.npz or embeddings/test.npz in run {source}")
    return source


def _params(pairs: list[str] | None) -> dict[str, Any]:
    params = {}
    for text in pairs or []:
        key, value = parse_filter(text)
        params[key] = value
    return params


@index_app.command("build")
@handle_errors
def build(
    source: Annotated[
        Path, typer.Argument(help="A run directory, or gallery embeddings (.npz from `embed`).")
    ],
    spec: Annotated[
        str | None,
        typer.Option(
            help="faiss factory string: Flat, IVF1024,Flat, HNSW32, BFlat, ...; with --uri a "
            "Milvus index type: FLAT, IVF_FLAT:nlist=1024, HNSW:M=32, BIN_FLAT, ..."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="cosine, inner_product, euclidean or hamming; hamming for codes."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Index directory; default <run>/index")] = None,
    uri: Annotated[str | None, typer.Option(help="Milvus URI (.db file or http://...).")] = None,
) -> None:
    """Build an index over a gallery of embeddings (trained on it where the spec needs it)."""
    embeddings = _gallery_file(source)
    gallery = Embeddings.load(embeddings)
    if uri is not None and out is not None:
        raise DataError("give --out (a faiss index directory) or --uri (Milvus), not both")
    index = index_lib.build(gallery, metric, spec, uri)
    path = uri or index.save(
        out or (source if source.is_dir() else run_dir_of(embeddings)) / "index"
    )
    kind = f"{index.dim} bits" if index.binary else f"{index.dim}-d"
    typer.echo(f"indexed {len(index)} items ({kind}, {index.metric}, {index.spec}) -> {path}")


@index_app.command("add")
@handle_errors
def add(
    index: IndexArg,
    images: Annotated[Path, typer.Argument(help="A folder of images or a CSV of image paths.")],
    model: ModelOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Embed images with the model and add them, recording sources and labels. Images already
    indexed (same source path) are skipped, so an interrupted add can be run again."""
    found = list_images(images)
    searcher = Searcher.open(index, model or default_model_dir(index))
    opened = searcher.index
    known = opened.sources()
    listing = found.keep([i for i, p in enumerate(found.paths) if str(p) not in known])
    skipped = len(found) - len(listing)
    problems = [(p, why) for p in listing.paths if (why := check_image(p))]
    if problems:
        path, why = problems[0]
        raise DataError(f"{len(problems)} unusable images, e.g. {path}: {why}; nothing added")
    labels, names = label_numbers(listing.names, opened.class_names)
    start = opened.next_id()
    free = iter(range(start, start + len(listing)))
    ids = [i if i is not None else next(free) for i in listing.ids]
    if len(listing):
        searcher.model  # noqa: B018  (load and check the model before the first chunk)
        if names != opened.class_names:
            opened.class_names = names
    bar = tqdm(
        total=len(listing), desc="index add", unit="img", disable=not progress_enabled(quiet)
    )
    with bar:
        for lo in range(0, len(listing), ADD_CHUNK):
            rows = slice(lo, lo + ADD_CHUNK)
            searcher.add_images(
                listing.paths[rows], ids[rows], labels[rows], listing.metadata[rows]
            )
            bar.update(len(listing.paths[rows]))
    opened.save()
    typer.echo(
        f"added {len(listing)} images ({skipped} already indexed); {len(opened)} items in {index}"
    )


@index_app.command("remove")
@handle_errors
def remove(
    index: IndexArg,
    ids: Annotated[list[int], typer.Argument(help="Ids of the items to remove.")],
) -> None:
    """Remove items by id (an unknown id removes nothing)."""
    opened = index_lib.open(index)
    opened.remove(np.array(ids, np.int64))
    opened.save()
    typer.echo(f"removed {len(set(ids))} items; {len(opened)} left in {index}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@index_app.command("info")
@handle_errors
def info(index: IndexArg) -> None:
    """Type, item count, memory, search parameters and the catalogue's state."""
    facts = index_lib.open(index).info()
    if "catalogue" not in facts:  # Milvus: the server holds items and settings
        where = f"{facts['uri']} collection {facts['collection']}"
        keys = ", ".join(facts["metadata_keys"]) or "none"
        typer.echo(
            f"index       {facts['backend']} {facts['spec']} ({facts['metric']})\n"
            f"dimension   {facts['dim']}{' bits' if facts['metric'] == 'hamming' else ''}\n"
            f"items       {facts['items']}\n"
            f"parameters  {json.dumps(facts['params']) if facts['params'] else 'none'}\n"
            f"metadata    {keys}\n"
            f"location    {where}"
        )
        return
    cat = facts["catalogue"]
    pending = cat["last_seq"] - (facts["snapshot_seq"] or 0)
    rows = [
        ("index", f"{facts['backend']} {facts['spec']} ({facts['metric']})"),
        ("dimension", f"{facts['dim']} bits" if "code_bytes" in facts else str(facts["dim"])),
        ("items", str(facts["items"])),
        ("tombstones", str(facts["tombstones"])),
        ("memory", _size(facts["memory_bytes"])),
        ("parameters", json.dumps(facts["params"]) if facts["params"] else "none (exact)"),
        ("catalogue", f"{cat['items']} items, change {cat['last_seq']}, {cat['journal_mode']}"),
        ("snapshot", f"change {facts['snapshot_seq']} ({pending} changes replayed at open)"),
        ("files", ", ".join(f"{k} {_size(v)}" for k, v in cat["files"].items())),
    ]
    if "code_bytes" in facts:
        rows.insert(
            2, ("codes", f"{facts['code_bytes']} bytes, stored in {facts['stored_code_bytes']}")
        )
    width = max(len(k) for k, _ in rows)
    typer.echo("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


@index_app.command("tune")
@handle_errors
def tune(
    index: IndexArg,
    recall: Annotated[float, typer.Option(help="recall@10 target.")] = 0.95,
    sample: Annotated[int, typer.Option(help="Gallery items used as held-out queries.")] = 500,
    queries: Annotated[
        Path | None,
        typer.Option(
            help="Embeddings (.npz from `embed`) of queries from outside the gallery, instead "
            "of a gallery sample (which overestimates HNSW's recall)."
        ),
    ] = None,
) -> None:
    """Find and store the fastest search parameters reaching the recall@10 target."""
    from deepembed.index.tune import tune as run_tune

    opened = index_lib.open(index)
    if not isinstance(opened, index_lib.FaissIndex):
        raise DataError(
            f"index tune measures faiss indexes; set a Milvus index's search parameters "
            f"(nprobe, ef) with --param on each search, or set_params in Python ({index})"
        )
    held_out = None
    if queries is not None:
        loaded = Embeddings.load(queries)
        held_out = loaded.codes if opened.binary else loaded.vectors
        if held_out is None:
            raise DataError(f"{queries} holds no {'codes' if opened.binary else 'vectors'}")
    result = run_tune(opened, recall, 10, sample, queries=held_out)
    if not result.trials:
        typer.echo(f"{opened.spec} has no search parameters to tune (exact or fixed)")
        return
    for t in result.trials:
        typer.echo(
            f"{json.dumps(t.params):<40} recall@10 {t.recall:.4f}  {t.queries_per_second:,.0f} q/s"
        )
    if result.best is None:
        best = max(result.trials, key=lambda t: t.recall)
        typer.echo(
            f"failed: no setting reaches recall@10 {recall} (best {best.recall:.4f} with "
            f"{json.dumps(best.params)}); parameters unchanged",
            err=True,
        )
        raise typer.Exit(1)
    opened.save()
    typer.echo(f"stored {json.dumps(result.best.params)}: recall@10 {result.best.recall:.4f}")


def _print_hits(hits: list[Hit]) -> None:
    typer.echo(f"{'rank':>4}  {'id':>8}  {'label':<28} distance")
    for rank, hit in enumerate(hits, 1):
        name = f"{hit.label} {hit.label_name or ''}".strip()
        typer.echo(f"{rank:>4}  {hit.id:>8}  {name:<28} {hit.distance:.4f}")


@handle_errors
def search(
    index: IndexArg,
    image: Annotated[Path | None, typer.Option(help="Query image file (PNG or JPEG).")] = None,
    item: Annotated[int | None, typer.Option("--id", help="Query by an indexed item's id.")] = None,
    model: ModelOption = None,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 5,
    filters: FilterOption = None,
    params: ParamOption = None,
) -> None:
    """Nearest items to an image file or to an indexed item: rank, id, label, distance."""
    if (image is None) == (item is None):
        raise DataError("give exactly one of --image FILE or --id N")
    if k < 1:
        raise DataError(f"-k must be at least 1, got {k}")
    wanted = merge_filters([parse_filter(f) for f in filters or []]) or None
    searcher = Searcher.open(index, model)
    if image is not None:
        hits = searcher.by_image(image, k, wanted, _params(params))
        typer.echo(f"query: {image}")
    else:
        assert item is not None
        hits = searcher.by_id(item, k, wanted, _params(params))
        query = searcher.index.get([item])[0]
        typer.echo(
            f"query: item {item} ({searcher.index.class_names.get(query.label, query.label)})"
        )
    _print_hits(hits)
