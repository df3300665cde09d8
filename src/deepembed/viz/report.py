"""`write_report(run_dir)`: one self-contained report.html per run (images inlined).

Sections: the run, its metrics beside validation and baselines, training curves, Recall@K,
hashing curves and Hamming histograms (hash models), a retrieval grid of seeded queries,
the worst queries, per-class MAP@R, the embedding map, the resolved config. A section that
cannot be drawn (no embeddings, no images on disk) says why in a note instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from deepembed.data.item_images import DatasetImages
from deepembed.viz import html as h
from deepembed.viz.grids import Thumbnails, retrieval_grid
from deepembed.viz.report_data import (
    Retrieval,
    RunRecord,
    analyse,
    hamming_curves,
    is_metric,
    per_class_ap,
    sample_queries,
    worst_queries,
)
from deepembed.viz.report_plots import (
    embedding_maps,
    hashing_figures,
    recall_figure_png,
    training_figure_png,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    """How much a report shows (each part's cost is bounded by these)."""

    grid_queries: int = 12  # seeded sample of queries in the retrieval grid
    worst: int = 8  # worst queries shown with their results
    top_k: int = 8  # results per query in the grids
    classes: int = 10  # best and worst classes listed
    map_points: int = 2000  # stratified sample drawn on the embedding map
    map_thumbnails: int = 40  # points of the map drawn as their image
    seed: int = 0


@dataclass
class _Context:
    record: RunRecord
    options: ReportOptions
    retrieval: Retrieval | None = None
    query_thumbs: Thumbnails | None = None
    gallery_thumbs: Thumbnails | None = None
    images_note: str = ""


def _run_table(record: RunRecord) -> str:
    """The run at a glance: data, model, objective, schedule and time."""
    m, data = record.metrics, record.section("data")
    model = {**record.section("model"), **record.model}  # the saved model's resolved values
    loss, miner, sampler = (
        record.section("loss"),
        record.section("miner"),
        record.section("sampler"),
    )
    train = record.section("train")
    rows: list[tuple[str, Any]] = [
        ("run", record.name),
        ("dataset", m.get("dataset", data.get("name", "-"))),
    ]
    if data.get("root"):
        rows.append(("data root", data["root"]))
    q, g = record.query, record.gallery
    rows.append(("protocol", m.get("protocol", "-")))
    if q is not None:
        classes = len(np.unique(q.labels)) if q.labels.ndim == 1 else q.labels.shape[1]
        rows.append(("test queries", f"{len(q)} items, {classes} classes"))
    if g is not None:
        rows.append(("gallery", f"{len(g)} items"))
    for key, value in (m.get("split_sizes") or {}).items():
        rows.append((f"{key} split", value))
    if model:
        dim = model.get("embedding_dim")
        head = f"{dim}-d embedding" if dim else "pooled features"
        if model.get("head") == "hash":
            head = f"{model.get('bits')}-bit hash codes"
        size, pool = model.get("image_size") or "its own", model.get("pool") or "its own"
        text = f"{model.get('backbone')} (pretrained: {model.get('pretrained')}), {size} px"
        rows.append(("model", f"{text}, pool {pool}, {head}"))
    if loss:
        params = ", ".join(f"{k}={v}" for k, v in (loss.get("params") or {}).items())
        rows.append(("loss", f"{loss.get('name')}" + (f" ({params})" if params else "")))
    rows.append(("miner", miner.get("name") or "none"))
    if sampler:
        rows.append(("sampler", ", ".join(f"{k}={v}" for k, v in sampler.items())))
    epochs = m.get("epochs_trained", len(record.history) or "-")
    rows.append(("epochs", f"{epochs} of {train.get('epochs', '-')}"))
    if "selected_epoch" in m:
        rows.append(("kept epoch", f"{m['selected_epoch']} ({m.get('selection', '')})"))
    timings = m.get("timings") or {}
    if timings:
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items())
        rows.append(("time", f"{sum(timings.values()):.1f} s ({parts})"))
    return h.table(None, rows, numeric_from=2)


def _metrics_section(record: RunRecord) -> str:
    """Test metrics of the kept model beside its validation metrics and the baselines."""
    m = record.metrics
    columns: dict[str, dict[str, Any]] = {"test (kept model)": m}
    if isinstance(m.get("validation"), dict):
        columns["validation"] = m["validation"]
    for name, values in (m.get("baselines") or {}).items():
        if isinstance(values, dict):
            columns[f"baseline: {name}"] = values
    names = [k for k, v in m.items() if is_metric(k, v)]
    rows = [(n, *(c.get(n) for c in columns.values())) for n in names]
    body = h.table(("metric", *columns), rows)
    if "baselines" not in m:
        body += h.note(
            "No baselines in this run: set eval.baselines (raw_pixels, pretrained) to compare "
            "with raw pixels or the backbone's off-the-shelf features."
        )
    primary = m.get("primary_metric")
    if primary:
        body += (
            f'<p class="muted">Primary metric: {h.esc(primary)}; {h.esc(m.get("protocol", ""))}, '
            f"{h.esc(m.get('distance', ''))} distance, tie-aware ({h.esc(m.get('ties', ''))}).</p>"
        )
    return body


def _curves_section(ctx: _Context) -> str:
    record = ctx.record
    primary = str(record.metrics.get("primary_metric", "map@r"))
    kept = record.metrics.get("selected_epoch")
    png = training_figure_png(record.history, kept if isinstance(kept, int) else None, primary)
    if png is None:
        return h.note("No per-epoch history in this run (history.jsonl).")
    return h.image(png, "training curves")


def _recall_section(ctx: _Context) -> str:
    recall = ctx.retrieval.recall if ctx.retrieval is not None else {}
    png = recall_figure_png(recall or ctx.record.metrics)
    return h.note("No Recall@K values.") if png is None else h.image(png, "Recall@K")


def _hashing_section(ctx: _Context) -> str:
    curves = hamming_curves(ctx.record)
    if curves is None:
        return h.note("No hashing curves: the run's embeddings are not in this directory.")
    return "".join(h.image(png, alt) for alt, png in hashing_figures(curves))


def _need_retrieval(ctx: _Context) -> str | None:
    if ctx.retrieval is None:
        return "This run's embeddings are not in its directory (embeddings/test.npz): " + (
            "; ".join(ctx.record.problems) or "nothing to search"
        )
    return None


def _grid_section(
    ctx: _Context, pick: Callable[[Retrieval], np.ndarray], describe: Callable[[int], str]
) -> str:
    """A retrieval grid of the query rows `pick` chooses, introduced by `describe(count)`."""
    missing = _need_retrieval(ctx)
    if missing:
        return h.note(missing)
    record, r = ctx.record, ctx.retrieval
    assert r is not None and record.query is not None and ctx.query_thumbs and ctx.gallery_thumbs
    gallery = record.query if r.leave_one_out else record.gallery
    assert gallery is not None
    rows = pick(r)
    grid = retrieval_grid(rows, r, record.query, gallery, ctx.query_thumbs, ctx.gallery_thumbs)
    intro = f"<p>{h.esc(describe(len(rows)))}</p>"
    return intro + (h.note(ctx.images_note) if ctx.images_note else "") + grid


def _sample_section(ctx: _Context) -> str:
    o = ctx.options
    return _grid_section(
        ctx,
        lambda r: sample_queries(r, o.grid_queries, o.seed),
        lambda n: (
            f"{n} queries drawn with seed {o.seed}, each with its top {o.top_k}: "
            "green frames are correct results, red ones wrong; numbers are distances."
        ),
    )


def _worst_section(ctx: _Context) -> str:
    return _grid_section(
        ctx,
        lambda r: worst_queries(r, ctx.options.worst),
        lambda n: f"The {n} queries of lowest MAP@R: what the model confuses.",
    )


def _classes_section(ctx: _Context) -> str:
    missing = _need_retrieval(ctx)
    if missing:
        return h.note(missing)
    assert ctx.retrieval is not None and ctx.record.query is not None
    q = ctx.record.query
    per_class = per_class_ap(ctx.retrieval, q.labels)
    if not per_class:
        return h.note("Per-class MAP@R needs single labels; this run's items have several.")
    n = ctx.options.classes
    headers = ("class", "queries", "MAP@R")

    def rows(part: list[tuple[int, int, float]]) -> list[tuple[str, int, float]]:
        return [(q.class_names.get(c, str(c)), k, v) for c, k, v in part]

    intro = f"<p>Mean MAP@R of each class's queries ({len(per_class)} classes).</p>"
    if len(per_class) <= 2 * n:  # few classes: all of them, worst first
        return intro + h.table(headers, rows(per_class))
    worst, best = h.table(headers, rows(per_class[:n])), h.table(headers, rows(per_class[::-1][:n]))
    return (
        f'{intro}<div style="display:flex;gap:32px"><div><h3>Worst {n} classes</h3>{worst}</div>'
        f"<div><h3>Best {n} classes</h3>{best}</div></div>"
    )


def _map_section(ctx: _Context) -> str:
    missing = _need_retrieval(ctx)
    if missing:
        return h.note(missing)
    q = ctx.record.query
    assert q is not None and ctx.query_thumbs is not None
    o = ctx.options
    parts = embedding_maps(q, ctx.query_thumbs, o.map_points, o.map_thumbnails, o.seed)
    return "".join(h.image(png, alt) if png else h.note(alt) for alt, png in parts)


def _config_section(ctx: _Context) -> str:
    if not ctx.record.config:
        return h.note("No resolved config (config.yaml) in this run.")
    text = yaml.safe_dump(ctx.record.config, sort_keys=False)
    return h.folded("the run's resolved config.yaml", f"<pre>{h.esc(text)}</pre>")


def _prepare(ctx: _Context) -> None:
    """The one search of the report and the item pictures, when the embeddings exist."""
    record = ctx.record
    if record.query is None:
        return
    ctx.retrieval = analyse(record.query, record.gallery, record.distance, ctx.options.top_k)
    q_images = DatasetImages.of_run(record.path, "query")
    g_images = (
        DatasetImages.of_run(record.path, "gallery") if record.gallery is not None else q_images
    )
    ctx.query_thumbs = Thumbnails(q_images)
    ctx.gallery_thumbs = ctx.query_thumbs if g_images is q_images else Thumbnails(g_images)
    if not ctx.query_thumbs.any_available(record.query.ids.tolist()):
        data = record.section("data")
        ctx.images_note = (
            f"The images of dataset {data.get('name', '?')!r} (root "
            f"{data.get('root') or 'default'!r}) are not readable here: tiles show each item's "
            "class instead of its picture."
        )


def _safe(title: str, build: Callable[[_Context], str], ctx: _Context) -> str:
    """A section's HTML; if drawing it fails, a note with the error instead of no report."""
    try:
        return build(ctx)
    except Exception as exc:  # one broken section must not cost the whole report
        log.warning("report section %r failed: %s", title, exc)
        return h.note(f"This section could not be drawn: {type(exc).__name__}: {exc}")


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    options: ReportOptions | None = None,
    progress: bool = True,
) -> Path:
    """Write `<run_dir>/report.html` (or `out`) atomically and return its path.

    Raises:
        DataError: `run_dir` is not a run directory (no readable metrics.json).
    """
    start = time.perf_counter()
    record = RunRecord.load(run_dir)
    ctx = _Context(record, options or ReportOptions())
    sections: list[tuple[str, Callable[[_Context], str]]] = [
        ("Run", lambda c: _run_table(c.record)),
        ("Metrics", lambda c: _metrics_section(c.record)),
        ("Training curves", _curves_section),
        ("Recall@K", _recall_section),
    ]
    if record.is_hashing:
        sections.append(
            ("Hashing: precision-recall, precision@N, Hamming distances", _hashing_section)
        )
    sections += [
        ("Retrieval examples", _sample_section),
        ("Worst queries", _worst_section),
        ("Per-class MAP@R", _classes_section),
        ("Embedding map", _map_section),
        ("Config", _config_section),
    ]
    body = []
    with tqdm(
        total=len(sections) + 1, desc="report", unit="part", disable=not progress, leave=False
    ) as bar:
        _prepare(ctx)
        bar.update()
        for title, build in sections:
            anchor = title.split(":")[0].lower().replace(" ", "-").replace("@", "-at-")
            body.append(h.section(title, _safe(title, build, ctx), anchor))
            bar.update()
    problems = "".join(h.note(p) for p in record.problems)
    footer = f'<p class="muted">Written by deepembed in {time.perf_counter() - start:.1f} s.</p>'
    path = Path(out) if out is not None else record.path / "report.html"
    return h.write_page(
        path, f"deepembed run report: {record.name}", problems + "".join(body) + footer
    )
