"""report.html against brute force: the grids' neighbours and frames, the worst queries and
per-class MAP@R recomputed by loops, for leave-one-out, query/gallery and hashing runs, and
for runs whose images or embeddings are gone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from deepembed.cli.main import app
from deepembed.config import load_config
from deepembed.inference import Embeddings
from deepembed.training.pipeline import train
from deepembed.viz.report import ReportOptions, write_report
from tests.viz.helpers import grid_rows, section, table_rows

SECTIONS = (
    "run",
    "metrics",
    "training-curves",
    "recall-at-k",
    "retrieval-examples",
    "worst-queries",
    "per-class-map-at-r",
    "embedding-map",
    "config",
)
HASH_QUICK = [
    "data.protocol=hashing",
    "data.hash_query_per_class=10",
    "data.hash_train_per_class=40",
    "data.hash_database_per_class=30",
    "model.backbone_params.widths=[8,8,8,16,16]",
    "train.epochs=2",
    "train.max_steps=6",
]


def distances(query: Embeddings, gallery: Embeddings, hamming: bool) -> np.ndarray:
    if hamming:
        return (query.vectors[:, None, :] != gallery.vectors[None, :, :]).sum(-1).astype(float)
    q = query.vectors / np.linalg.norm(query.vectors, axis=1, keepdims=True)
    g = gallery.vectors / np.linalg.norm(gallery.vectors, axis=1, keepdims=True)
    return 1.0 - q.astype(np.float64) @ g.T.astype(np.float64)


def loop_map_at_r(dist: np.ndarray, q_labels, g_labels, loo: bool) -> np.ndarray:
    """MAP@R of each query by its definition, in one order of the distances (float ties are
    rare; the report's tie-aware values may differ by a hair)."""
    out = np.full(len(q_labels), np.nan)
    for i in range(len(q_labels)):
        cols = [j for j in range(len(g_labels)) if not (loo and j == i)]
        order = sorted(cols, key=lambda j: dist[i, j])
        rel = np.array([g_labels[j] == q_labels[i] for j in order])
        r = int(rel.sum())
        if r:
            hits = np.cumsum(rel[:r])
            out[i] = float((hits / np.arange(1, r + 1) * rel[:r]).sum() / r)
    return out


def check_grids(run: Path, page: str, hamming: bool) -> None:
    """Every grid line is the query's true top-k, framed by label equality."""
    query = Embeddings.load(run / "embeddings" / "test.npz")
    gallery_file = run / "embeddings" / "gallery.npz"
    loo = not gallery_file.is_file()
    gallery = query if loo else Embeddings.load(gallery_file)
    dist = distances(query, gallery, hamming)
    if loo:
        np.fill_diagonal(dist, np.inf)
    q_row = {int(i): r for r, i in enumerate(query.ids)}
    g_row = {int(i): r for r, i in enumerate(gallery.ids)}
    for anchor in ("retrieval-examples", "worst-queries"):
        lines = grid_rows(section(page, anchor))
        assert lines, anchor
        for line in lines:
            (css, q_id, _), results = line[0], line[1:]
            assert css == "query" and len(results) == 8
            r = q_row[q_id]
            want = np.sort(dist[r])[:8]
            for (css, g_id, caption), d in zip(results, want, strict=True):
                g = g_row[g_id]
                assert dist[r, g] == pytest.approx(d, abs=1e-5)  # the k nearest, in order
                assert float(caption) == pytest.approx(d, rel=2e-3, abs=1e-3)
                assert css == ("hit" if gallery.labels[g] == query.labels[r] else "miss")


@pytest.fixture(scope="module")
def loo_report(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shared tiny mnist30 run (leave-one-out), copied, with its report from the CLI."""
    run = tmp_path_factory.mktemp("report") / "tiny"
    shutil.copytree(trained_run, run)
    result = CliRunner().invoke(app, ["report", str(run), "-q"])
    assert result.exit_code == 0, result.output
    return run, (run / "report.html").read_text()


def test_report_is_complete_and_self_contained(loo_report: tuple[Path, str]) -> None:
    run, page = loo_report
    for anchor in SECTIONS:
        section(page, anchor)
    assert "could not be drawn" not in page and '<section id="hashing">' not in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: all inlined
    # training curves, Recall@K, t-SNE map; 20 grid lines of a query and its top 8
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 3 + 9 * (12 + 8)
    metrics = json.loads((run / "metrics.json").read_text())
    shown = {r[0]: r[1] for r in table_rows(section(page, "metrics")) if len(r) >= 2}
    for name in ("recall@1", "map@r", "nmi"):
        assert shown[name] == f"{metrics[name]:.4f}"


def test_grids_worst_queries_and_classes_match_brute_force(loo_report: tuple[Path, str]) -> None:
    run, page = loo_report
    check_grids(run, page, hamming=False)
    query = Embeddings.load(run / "embeddings" / "test.npz")
    dist = distances(query, query, False)
    ap = loop_map_at_r(dist, query.labels, query.labels, loo=True)
    worst = [line[0][1] for line in grid_rows(section(page, "worst-queries"))]
    rows = [int(np.flatnonzero(query.ids == i)[0]) for i in worst]
    assert len(rows) == 8 and list(ap[rows]) == sorted(ap[rows])
    others = np.setdiff1d(np.arange(len(ap)), rows)
    assert ap[rows].max() <= np.nanmin(ap[others]) + 1e-9  # no lower MAP@R left out
    table = table_rows(section(page, "per-class-map-at-r"))[1:]
    assert len(table) == len(np.unique(query.labels))  # 15 classes: all shown
    by_name = {query.class_names.get(int(c), str(c)): c for c in np.unique(query.labels)}
    for name, count, value in table:
        members = query.labels == by_name[name]
        assert int(count) == members.sum()
        # 4 decimals shown; float32 search against float64 loops may swap near-equal items
        assert float(value) == pytest.approx(ap[members].mean(), abs=5e-4)
    assert [float(v) for _, _, v in table] == sorted(float(v) for _, _, v in table)


def test_report_without_the_images_shows_classes_not_pictures(
    loo_report: tuple[Path, str], tmp_path: Path
) -> None:
    run = tmp_path / "moved"
    shutil.copytree(loo_report[0], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = str(tmp_path / "gone")  # the dataset is not on this machine
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page = write_report(run, options=ReportOptions(map_points=200), progress=False).read_text()
    grid = section(page, "retrieval-examples")
    assert "are not readable here" in grid and "<img" not in grid
    assert len(re.findall(r'<div class="tile">', grid)) == 12 * 9
    check_grids(run, page, hamming=False)  # the same results, drawn as class tiles


def test_report_without_embeddings_is_notes_not_a_crash(
    loo_report: tuple[Path, str], tmp_path: Path
) -> None:
    run = tmp_path / "bare"
    shutil.copytree(loo_report[0], run, ignore=shutil.ignore_patterns("embeddings"))
    page = write_report(run, progress=False).read_text()
    for anchor in ("retrieval-examples", "worst-queries", "per-class-map-at-r", "embedding-map"):
        assert "embeddings are not in its directory" in section(page, anchor)
    assert "could not be drawn" not in page
    assert "0.4" in section(page, "recall-at-k") or "<img" in section(page, "recall-at-k")


def test_query_gallery_run_writes_its_report_with_raw_pixel_baseline(tmp_path: Path) -> None:
    config = load_config(
        "configs/mnist30.yaml",
        [f"output_dir={tmp_path}", "name=qg", *HASH_QUICK, "model.embedding_dim=16",
         "eval.baselines=[raw_pixels]", "eval.metrics=[recall@1,map@r]"],
    )  # fmt: skip
    run = train(config, progress=False).run_dir
    page = (run / "report.html").read_text()  # written by the trainer itself
    assert "<title>deepembed run report: qg</title>" in page  # not its .qg.partial folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "query-gallery" and (run / "embeddings/gallery.npz").is_file()
    check_grids(run, page, hamming=False)
    # the baseline by the plain computation: 28 x 28 pixels (under 32: not pooled), cosine
    from deepembed.evaluation import evaluate
    from deepembed.training.build import open_eval_splits

    query, database = open_eval_splits(config)
    assert database is not None
    flat = [
        np.stack([np.asarray(s[i][0]).ravel() for i in range(len(s))]) for s in (query, database)
    ]
    want = evaluate(flat[0], query.labels, flat[1], database.labels, metrics=("recall@1", "map@r"))
    got = metrics["baselines"]["raw_pixels"]
    assert got["map@r"] == pytest.approx(want["map@r"], abs=1e-6)
    shown = table_rows(section(page, "metrics"))
    header = re.findall(r"<th>(.*?)</th>", section(page, "metrics"))
    assert header[-1] == "baseline: raw_pixels"
    assert {r[0]: r[-1] for r in shown if r}["map@r"] == f"{want['map@r']:.4f}"


def test_hashing_run_report_has_curves_and_hamming_histograms(tmp_path: Path) -> None:
    config = load_config(
        "configs/hashing.yaml", [f"output_dir={tmp_path}", "name=h", *HASH_QUICK, "model.bits=16"]
    )
    run = train(config, progress=False).run_dir
    page = (run / "report.html").read_text()
    hashing = section(page, "hashing")
    assert hashing.count("<img") == 2  # precision-recall + P@N, and the distance histograms
    curves = json.loads((run / "metrics.json").read_text())["hashing_curves"]
    hist = curves["distance_histogram"]
    query = Embeddings.load(run / "embeddings" / "test.npz")
    database = Embeddings.load(run / "embeddings" / "gallery.npz")
    dist = distances(query, database, hamming=True)
    same = query.labels[:, None] == database.labels[None, :]
    assert hist["relevant"] == np.bincount(dist[same].astype(int), minlength=17).tolist()
    assert hist["irrelevant"] == np.bincount(dist[~same].astype(int), minlength=17).tolist()
    check_grids(run, page, hamming=True)


def test_pretrained_baseline_needs_pretrained_weights(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "configs/mnist30.yaml", f"output_dir={tmp_path}", "eval.baselines=[pretrained]"],
    )
    assert result.exit_code == 2 and "needs pretrained backbone weights" in result.output
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_report_cli_refuses_bad_input_and_keeps_files(
    loo_report: tuple[Path, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    cases = {
        "not a run directory": [str(tmp_path)],
        "run directory not found": [str(tmp_path / "nope")],
        "does not exist": [str(loo_report[0]), "--out", str(tmp_path / "no" / "r.html")],
        "is a folder": [str(loo_report[0]), "--out", str(tmp_path)],
    }
    for message, args in cases.items():
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2 and message in result.output, (message, result.output)
    damaged = tmp_path / "damaged"
    shutil.copytree(loo_report[0], damaged)
    before = (damaged / "report.html").read_bytes()
    (damaged / "metrics.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(damaged)])
    assert result.exit_code == 2 and "metrics.json is not readable" in result.output
    assert (damaged / "report.html").read_bytes() == before  # the old report is kept


def test_a_collapsed_model_gets_a_note_instead_of_a_map() -> None:
    from deepembed.viz.grids import Thumbnails
    from deepembed.viz.report_plots import embedding_maps

    same = Embeddings(np.ones((30, 8), np.float32), np.arange(30) % 3, np.arange(30))
    ((text, png),) = embedding_maps(same, Thumbnails(None), 100, 5, 0)
    assert png is None and "same point" in text
    varied = Embeddings(np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32),
                        np.arange(30) % 3, np.arange(30))  # fmt: skip
    assert embedding_maps(varied, Thumbnails(None), 100, 5, 0)[0][1] is not None
