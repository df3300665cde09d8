"""viz.compare on hand-made run directories: flattening, the config keys that differ, metric
columns and their order, the best value marked, Markdown and HTML read back, bad input."""

from __future__ import annotations

import copy
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepembed.errors import UserError
from deepembed.viz import compare as compare_module
from deepembed.viz.compare import (
    MISSING,
    best_rows,
    compare_runs,
    flatten,
    to_html,
    to_markdown,
    write_comparison,
)

BASE_CONFIG: dict[str, Any] = {
    "name": "run",
    "output_dir": "runs/x",
    "data": {"name": "mnist30", "augment": True},
    "model": {"backbone": "small_cnn", "backbone_params": {"widths": [8, 16]}, "pretrained": None},
    "loss": {"name": "triplet", "params": {"margin": 0.2}},
    "miner": {"name": "", "params": {}},
    "train": {"epochs": 2, "seed": 0},
    "eval": {"metrics": ["map@r", "recall@1"], "distance": "cosine"},
}
BASE_METRICS: dict[str, Any] = {
    "map@r": 0.4,
    "recall@1": 0.9,
    "protocol": "leave-one-out",
    "distance": "cosine",
    "k": 1049,
    "num_queries": 150,
    "num_queries_excluded": 0,
    "primary_metric": "map@r",
    "dataset": "mnist30",
    "selected_epoch": 2,
    "selection": "best val map@r",
    "epochs_trained": 2,
    "world_size": 1,
    "timings": {"decode_s": 1.0, "frozen_bank_s": 0.0, "epochs_s": 100.0, "final_test_s": 20.4},
    "validation": {"map@r": 0.5, "recall@1": 0.95, "k": 99, "protocol": "leave-one-out"},
    "hashing_curves": {"pr": [[0.1, 0.9]], "bits": 16},
    "baselines": {"off-the-shelf": {"map@r": 0.2}},
}


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if value is MISSING:
        tree.pop(leaf, None)
    else:
        tree[leaf] = value


def make_run(
    root: Path,
    name: str,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A run directory with config.yaml and metrics.json: BASE_* with dotted-key changes
    (a MISSING value deletes the key)."""
    run = root / name
    run.mkdir(parents=True)
    tree = copy.deepcopy(BASE_CONFIG)
    tree["name"], tree["output_dir"] = name, str(root)
    for key, value in (config or {}).items():
        set_dotted(tree, key, value)
    data = copy.deepcopy(BASE_METRICS)
    for key, value in (metrics or {}).items():
        set_dotted(data, key, value)
    (run / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    (run / "metrics.json").write_text(json.dumps(data))
    return run


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of a Markdown table, one list per line (the alignment line included)."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        for line in text.splitlines()
    ]


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path, "triplet"),
        make_run(
            tmp_path,
            "circle",
            {"loss.name": "circle", "loss.params.margin": MISSING, "loss.params.gamma": 80},
            {"map@r": 0.45, "recall@1": 0.9, "nmi": 0.7, "validation.map@r": 0.55},
        ),
        make_run(
            tmp_path,
            "triplet_m1",
            {"loss.params.margin": 0.1, "model.backbone_params.widths": [8, 32]},
            {"map@r": 0.45004, "timings": MISSING, "validation": MISSING},
        ),
    ]


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}, "f": {}}})
    assert flat == {"a": 1, "b.c": [1, 2], "b.d.e": None}


def test_only_differing_keys_with_missing_ones(three_runs: list[Path]) -> None:
    comparison = compare_runs(three_runs)
    assert comparison.runs == ["triplet", "circle", "triplet_m1"]
    assert comparison.differences == {
        "model.backbone_params.widths": [[8, 16], [8, 16], [8, 32]],
        "loss.name": ["triplet", "circle", "triplet"],
        "loss.params.margin": [0.2, MISSING, 0.1],
        "loss.params.gamma": [MISSING, 80, MISSING],
    }
    assert comparison.shared["data.name"] == "mnist30"
    assert comparison.shared["model.pretrained"] is None
    assert "name" not in comparison.shared  # it differs, but is left out unless asked
    assert comparison.shared["output_dir"] == str(three_runs[0].parent)
    everything = compare_runs(three_runs, ignore=())
    assert everything.differences["name"] == ["triplet", "circle", "triplet_m1"]
    assert list(everything.differences)[1:] == list(comparison.differences)


def test_metric_columns_order_and_values(three_runs: list[Path]) -> None:
    comparison = compare_runs(three_runs)
    # the first run's order, then the new one; bookkeeping numbers and nested dicts left out
    assert list(comparison.metrics) == ["map@r", "recall@1", "nmi", "val map@r", "val recall@1"]
    assert comparison.metrics["nmi"] == [None, 0.7, None]
    assert comparison.metrics["val map@r"] == [0.5, 0.55, None]
    assert comparison.times == [pytest.approx(121.4), pytest.approx(121.4), None]
    assert comparison.details[0]["selection"] == "best val map@r"


def test_chosen_metrics(three_runs: list[Path]) -> None:
    comparison = compare_runs(three_runs, metrics=["recall@1", "val map@r"])
    assert list(comparison.metrics) == ["recall@1", "val map@r"]
    with pytest.raises(UserError, match="no run has 'ndcg'"):
        compare_runs(three_runs, metrics=["ndcg"])


def test_best_rows() -> None:
    assert best_rows([0.4, 0.45, 0.45004]) == {1, 2}  # equal as shown (4 decimals)
    assert best_rows([0.4, math.nan, None, 0.3]) == {0}
    assert best_rows([0.4, None]) == set()  # a single value is best of nothing
    assert best_rows([0.3, 0.3, 0.3]) == set()  # nor are equal ones
    assert best_rows([0.1, 0.2, 0.7], digits=0) == {2}
    assert best_rows([0.1, 0.2, 0.4], digits=0) == set()


def test_markdown_read_back(three_runs: list[Path]) -> None:
    rows = markdown_rows(to_markdown(compare_runs(three_runs)))
    assert rows[0] == [
        "run",
        "model.backbone_params.widths",
        "loss.name",
        "loss.params.margin",
        "loss.params.gamma",
        "map@r",
        "recall@1",
        "nmi",
        "val map@r",
        "val recall@1",
        "train+eval time",
    ]
    assert rows[1] == ["---"] * 5 + ["---:"] * 6
    assert rows[2] == [
        "triplet", "[8, 16]", "triplet", "0.2", "-",
        "0.4000", "0.9000", "-", "0.5000", "0.9500", "121 s",
    ]  # fmt: skip
    assert rows[3] == [
        "circle", "[8, 16]", "circle", "-", "80",
        "**0.4500**", "0.9000", "0.7000", "**0.5500**", "0.9500", "121 s",
    ]  # fmt: skip
    assert rows[4] == [
        "triplet_m1", "[8, 32]", "triplet", "0.1", "-",
        "**0.4500**", "0.9000", "-", "-", "-", "-",
    ]  # fmt: skip
    assert len(rows) == 5


def test_single_run_shows_its_metrics_unmarked(tmp_path: Path) -> None:
    rows = markdown_rows(to_markdown(compare_runs([make_run(tmp_path, "only")])))
    assert rows[0] == ["run", "map@r", "recall@1", "val map@r", "val recall@1", "train+eval time"]
    assert rows[2] == ["only", "0.4000", "0.9000", "0.5000", "0.9500", "121 s"]


def test_markdown_escapes_pipes_and_shows_yaml_scalars(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "a", {"miner.name": "", "data.augment": True}),
        make_run(tmp_path, "b", {"miner.name": "a|b", "data.augment": False}),
    ]
    text = to_markdown(compare_runs(runs))
    assert "| b | false | a\\|b |" in text
    assert "| a | true | '' |" in text


class TableReader(HTMLParser):
    """The cells of the first <table>, with whether each was inside <strong>."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, bool]]] = []
        self.tables = 0
        self.cell: list[str] | None = None
        self.strong = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables += 1
        elif self.tables == 1 and tag == "tr":
            self.rows.append([])
        elif self.tables == 1 and tag in ("td", "th"):
            self.cell, self.strong = [], False
        elif tag == "strong":
            self.strong = True

    def handle_endtag(self, tag: str) -> None:
        if self.tables == 1 and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(("".join(self.cell), self.strong))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def test_html_table_matches_markdown(three_runs: list[Path]) -> None:
    comparison = compare_runs(three_runs)
    reader = TableReader()
    reader.feed(to_html(comparison))
    md = markdown_rows(to_markdown(comparison))
    html_rows = [[text for text, _ in row] for row in reader.rows]
    assert html_rows[0] == md[0]
    for html_row, md_row in zip(reader.rows[1:], md[2:], strict=True):
        assert [f"**{t}**" if strong else t for t, strong in html_row] == md_row


def test_html_escapes_text(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b", {"loss.name": "<script>"})]
    page = to_html(compare_runs(runs))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.startswith("<!DOCTYPE html>")


def test_write_comparison(three_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    html_path, md_path = write_comparison(three_runs, out / "losses")
    assert (html_path, md_path) == (out / "losses.html", out / "losses.md")
    assert md_path.read_text() == to_markdown(compare_runs(three_runs))
    assert "<strong>0.4500</strong>" in html_path.read_text()
    # an existing folder as the prefix: <folder>/comparison.*
    assert write_comparison(three_runs, out)[1] == out / "comparison.md"
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.html", "comparison.md", "losses.html", "losses.md",
    ]  # fmt: skip


def damage(run: Path, how: str) -> str:
    """Damage `run` as named; returns a text the error must contain."""
    if how == "no metrics.json":
        (run / "metrics.json").unlink()
        return "no metrics.json"
    if how == "truncated metrics.json":
        (run / "metrics.json").write_text('{"map@r": 0.')
        return "metrics.json: truncated or not JSON"
    if how == "metrics.json a list":
        (run / "metrics.json").write_text("[1, 2]")
        return "metrics.json: expected a mapping at the top, got list"
    if how == "binary metrics.json":
        (run / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
        return "metrics.json: truncated or not JSON"
    if how == "empty config.yaml":
        (run / "config.yaml").write_text("")
        return "config.yaml: file is empty"
    if how == "garbage config.yaml":
        (run / "config.yaml").write_text("loss: [unclosed\n  - : :")
        return "config.yaml: truncated or not YAML"
    if how == "no config.yaml":
        (run / "config.yaml").unlink()
        return "config.yaml: not found"
    raise AssertionError(how)


DAMAGES = [
    "no metrics.json",
    "truncated metrics.json",
    "metrics.json a list",
    "binary metrics.json",
    "empty config.yaml",
    "garbage config.yaml",
    "no config.yaml",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_run_is_a_user_error(tmp_path: Path, how: str) -> None:
    good, bad = make_run(tmp_path, "good"), make_run(tmp_path, "bad")
    needle = damage(bad, how)
    with pytest.raises(UserError, match="bad") as info:
        compare_runs([good, bad])
    assert needle in str(info.value)


def test_other_bad_runs(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a")
    with pytest.raises(UserError, match="at least one run"):
        compare_runs([])
    with pytest.raises(UserError, match="not a folder"):
        compare_runs([run / "metrics.json"])
    with pytest.raises(UserError, match="given twice"):
        compare_runs([run, tmp_path / "." / "a"])


def test_bad_out_writes_nothing(
    three_runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match="does not exist"):
        write_comparison(three_runs, tmp_path / "missing" / "cmp")
    (tmp_path / "cmp.md").mkdir()
    with pytest.raises(UserError, match="exists and is not a file"):
        write_comparison(three_runs, tmp_path / "cmp")
    monkeypatch.setattr(compare_module.os, "access", lambda *args: False)
    with pytest.raises(UserError, match="is not writable"):
        write_comparison(three_runs, tmp_path / "other")
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "cmp.md"])
