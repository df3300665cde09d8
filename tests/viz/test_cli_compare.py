"""`deepembed compare` end to end: two real tiny training runs, hand-made runs, and every bad
input giving one line, exit code 2 and no file written or changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepembed.cli.main import app
from tests.conftest import TINY_RUN
from tests.viz.test_compare import DAMAGES, damage, make_run, markdown_rows

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["compare", *(str(a) for a in args)])
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(code: int, stdout: str, stderr: str, *needles: str) -> None:
    """Exit code 2, nothing on stdout, one line of error naming the problem."""
    assert code == 2, (stdout, stderr)
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny triplet runs on mnist30 that differ only in the margin (~5 s each)."""
    from deepembed.config import load_config
    from deepembed.training.pipeline import train

    out = tmp_path_factory.mktemp("runs")
    runs = []
    for margin in ("0.1", "0.3"):
        overrides = [f"output_dir={out}", f"name=margin{margin}", *TINY_RUN, "train.epochs=1"]
        overrides += ["loss.name=triplet", f"loss.params.margin={margin}"]
        overrides += ["eval.metrics=[map@r,recall@1]"]
        train(load_config("configs/mnist30.yaml", overrides), progress=False)
        runs.append(out / f"margin{margin}")
    return runs


def test_compare_real_runs(real_runs: list[Path], tmp_path: Path) -> None:
    code, stdout, stderr = invoke(*real_runs, "--out", tmp_path / "losses")
    assert code == 0, stderr
    md_path, html_path = tmp_path / "losses.md", tmp_path / "losses.html"
    assert stdout == f"{md_path.read_text()}HTML -> {html_path}\nMarkdown -> {md_path}\n"
    rows = markdown_rows(md_path.read_text())
    assert rows[0] == ["run", "loss.params.margin", "map@r", "recall@1", "train+eval time"]
    for row, run in zip(rows[2:], real_runs, strict=True):
        metrics = json.loads((run / "metrics.json").read_text())
        assert row[:2] == [run.name, run.name.removeprefix("margin")]
        for cell, name in zip(row[2:4], ["map@r", "recall@1"], strict=True):
            assert cell.strip("*") == f"{metrics[name]:.4f}"
        assert row[4].endswith(" s")
    assert "<table>" in html_path.read_text()


def test_default_prefix_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b", {"train.epochs": 4})]
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke(*runs, "--metrics", "recall@1, val map@r", "--all-keys")
    assert code == 0, stderr
    rows = markdown_rows(Path("comparison.md").read_text())
    assert rows[0] == ["run", "name", "train.epochs", "recall@1", "val map@r", "train+eval time"]
    assert "HTML -> comparison.html" in stdout and Path("comparison.html").is_file()


def test_one_run_is_enough(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(make_run(tmp_path, "only"), "--out", tmp_path / "one")
    assert code == 0, stderr
    assert markdown_rows(stdout.split("\n\n")[0])[2][:3] == ["only", "0.4000", "0.9000"]


@pytest.fixture
def old_outputs(tmp_path: Path) -> Path:
    """An earlier comparison at tmp_path/out/cmp.*, which failed commands must not touch."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "cmp.md").write_text("old markdown")
    (out / "cmp.html").write_text("old html")
    return out


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["cmp.html", "cmp.md"]
    assert (out / "cmp.md").read_text() == "old markdown"
    assert (out / "cmp.html").read_text() == "old html"


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_run(tmp_path: Path, old_outputs: Path, how: str) -> None:
    good, bad = make_run(tmp_path, "good"), make_run(tmp_path, "bad")
    needle = damage(bad, how)
    assert_user_error(*invoke(good, bad, "--out", old_outputs / "cmp"), needle, str(bad))
    assert_untouched(old_outputs)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{run}", "{tmp}/nothing"], "nothing: not a run directory (not a folder)"),
        (["{run}", "{tmp}"], "not a run directory (no metrics.json)"),
        (["{run}", "{run}"], "run directory given twice"),
        (["{run}", "--metrics", "ndcg,map@r"], "--metrics: no run has 'ndcg'; available: map@r"),
        (["{run}", "--metrics", " , "], "--metrics: give metric names"),
        (["{run}", "--out", "{tmp}/missing/cmp"], "--out: folder {tmp}/missing does not exist"),
        (["{run}", "--out", "{tmp}/out/cmp.md/x"], "--out: {tmp}/out/cmp.md is not a folder"),
    ],
)
def test_bad_input(tmp_path: Path, old_outputs: Path, args: list[str], needle: str) -> None:
    run = make_run(tmp_path, "run")
    fill = {"run": str(run), "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in args]
    if "--out" not in args:
        args += ["--out", str(old_outputs / "cmp")]
    assert_user_error(*invoke(*args), needle.format(**fill))
    assert_untouched(old_outputs)


def test_out_target_that_is_a_folder(tmp_path: Path, old_outputs: Path) -> None:
    (old_outputs / "cmp.md").unlink()
    (old_outputs / "cmp.md").mkdir()
    code, stdout, stderr = invoke(make_run(tmp_path, "run"), "--out", old_outputs / "cmp")
    assert_user_error(code, stdout, stderr, "cmp.md exists and is not a file")
    assert (old_outputs / "cmp.html").read_text() == "old html"


def test_no_run_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2 and "Missing argument" in result.output
    assert list(tmp_path.iterdir()) == []


def test_help() -> None:
    result = runner.invoke(app, ["compare", "--help"])
    assert result.exit_code == 0 and "--metrics" in result.output
