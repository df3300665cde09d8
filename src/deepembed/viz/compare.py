"""Side-by-side tables of training runs: the config keys that differ, then the metrics.

One row per run, as in the loss tables of docs/BENCHMARKS.md: columns are the dotted config
keys whose values differ between the runs, the test metrics, the validation metrics of the
kept epoch ("val " + name) and the run's time. The best value of each metric is marked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepembed.errors import UserError
from deepembed.io import atomic_write, reading
from deepembed.viz.html import Cell, esc, folded, note, number, page, section, table, write_page
from deepembed.viz.report_data import is_metric

# Keys that differ between any two runs without saying anything about the recipe.
IGNORED_KEYS = ("name", "output_dir")
VAL_PREFIX = "val "
TIME_COLUMN = "train+eval time"
DETAIL_KEYS = ("dataset", "protocol", "distance", "selection", "selected_epoch", "epochs_trained")


class _Missing:
    """A config key that a run does not have; shown as "-"."""

    def __repr__(self) -> str:
        return "-"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Comparison:
    """What `compare_runs` found; every per-run list is in the order of `runs`.

    Attributes:
        runs: row labels (the run directory names; the paths where two names clash).
        paths: the run directories.
        differences: dotted config key -> each run's value (MISSING where a run lacks it),
            only for keys whose values are not the same in every run.
        shared: dotted config key -> the value every run has.
        metrics: metric column -> each run's value (None where a run lacks it); validation
            columns are named "val <metric>".
        times: each run's total of metrics.json "timings" in seconds (None without timings).
        details: each run's evaluation facts (dataset, protocol, distance, selection, ...).
    """

    runs: list[str]
    paths: list[Path]
    differences: dict[str, list[Any]]
    shared: dict[str, Any]
    metrics: dict[str, list[float | None]]
    times: list[float | None]
    details: list[dict[str, Any]]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (loss.params.margin); lists are values, and an empty
    mapping gives no key, so `params: {}` against `params: {margin: 0.2}` reads as missing."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, metrics) of a run directory, or a UserError naming what is wrong."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run directory (not a folder)")
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (no metrics.json)")
    loaded = []
    for name, what, parse in (
        ("metrics.json", "JSON", json.loads),
        ("config.yaml", "YAML", yaml.safe_load),
    ):
        with reading(run_dir / name, what, UserError) as path:
            data = parse(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
        loaded.append(data)
    return loaded[0], loaded[1]


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [path.resolve().name for path in paths]
    return names if len(set(names)) == len(names) else [str(path) for path in paths]


def _time(metrics: Mapping[str, Any]) -> float | None:
    timings = metrics.get("timings")
    if not isinstance(timings, Mapping):
        return None
    seconds = [v for v in timings.values() if is_metric("", v)]
    return float(sum(seconds)) if seconds else None


def _metric_columns(
    metrics: Sequence[Mapping[str, Any]], wanted: Sequence[str] | None
) -> dict[str, list[float | None]]:
    columns: dict[str, list[float | None]] = {}
    for prefix, of_run in (("", lambda m: m), (VAL_PREFIX, lambda m: m.get("validation"))):
        for i, run in enumerate(metrics):
            values = of_run(run)
            if not isinstance(values, Mapping):
                continue
            for name, value in values.items():
                if is_metric(name, value):
                    column = columns.setdefault(prefix + name, [None] * len(metrics))
                    column[i] = float(value)
    if wanted is None:
        return columns
    unknown = [name for name in wanted if name not in columns]
    if unknown:
        raise UserError(
            f"--metrics: no run has {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(columns) or 'none'}"
        )
    return {name: columns[name] for name in dict.fromkeys(wanted)}


def compare_runs(
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    ignore: Collection[str] = IGNORED_KEYS,
) -> Comparison:
    """Read the runs' config.yaml and metrics.json and line them up.

    Args:
        run_dirs: one or more run directories (as written by `deepembed train`).
        metrics: the metric columns to keep, in this order ("val map@r" for a validation
            one); default all, in the first run's order, then new ones.
        ignore: dotted config keys never shown as differences (default: name, output_dir).

    Raises:
        UserError: no run, a run given twice, a folder without metrics.json, a damaged
            metrics.json or config.yaml, or a wanted metric that no run has.
    """
    paths = [Path(run_dir) for run_dir in run_dirs]
    if not paths:
        raise UserError("give at least one run directory")
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise UserError(f"{path}: run directory given twice")
        seen.add(path.resolve())
    runs = [_read_run(path) for path in paths]
    configs = [flatten(config) for _, config in runs]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    differences: dict[str, list[Any]] = {}
    shared: dict[str, Any] = {}
    for key in keys:
        values = [config.get(key, MISSING) for config in configs]
        if all(v is not MISSING and v == values[0] for v in values):
            shared[key] = values[0]
        elif key not in ignore:
            differences[key] = values
    run_metrics = [m for m, _ in runs]
    return Comparison(
        runs=_labels(paths),
        paths=paths,
        differences=differences,
        shared=shared,
        metrics=_metric_columns(run_metrics, metrics),
        times=[_time(m) for m in run_metrics],
        details=[{k: m[k] for k in DETAIL_KEYS if k in m} for m in run_metrics],
    )


def best_rows(values: Sequence[float | None], digits: int = 4) -> set[int]:
    """Rows holding the highest value as shown (to `digits` decimals); none when all shown
    values are equal (one run included). Every metric deepembed writes is higher-is-better."""
    shown = {
        i: round(v, digits) for i, v in enumerate(values) if v is not None and not math.isnan(v)
    }
    if len(set(shown.values())) < 2:
        return set()
    top = max(shown.values())
    return {i for i, v in shown.items() if v == top}


def config_text(value: Any) -> str:
    """A config value as a cell: YAML-like scalars, flow-style lists."""
    if value is MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(config_text(v) for v in value) + "]"
    return str(value)


def time_text(seconds: float | None) -> str:
    """Seconds as a cell: whole seconds, one decimal under 10 s."""
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _cells(comparison: Comparison) -> tuple[list[str], list[list[tuple[str, bool, bool]]]]:
    """Headers and rows of (text, numeric, best) cells, shared by Markdown and HTML."""
    headers = ["run", *comparison.differences, *comparison.metrics, TIME_COLUMN]
    best = {name: best_rows(values) for name, values in comparison.metrics.items()}
    rows = []
    for i, run in enumerate(comparison.runs):
        row = [(run, False, False)]
        row += [(config_text(v[i]), False, False) for v in comparison.differences.values()]
        row += [(number(v[i]), True, i in best[n]) for n, v in comparison.metrics.items()]
        row.append((time_text(comparison.times[i]), True, False))
        rows.append(row)
    return headers, rows


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(comparison: Comparison) -> str:
    """A Markdown table, one row per run; the best value of each metric in bold."""
    headers, rows = _cells(comparison)
    numeric = [cell[1] for cell in rows[0]]
    lines = [
        "| " + " | ".join(_md(h) for h in headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        cells = [f"**{_md(text)}**" if best else _md(text) for text, _, best in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell_table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, bool, bool]]]) -> str:
    """viz.html.table of (text, numeric, best) cells, the best in bold."""
    return table(headers, [[Cell(*cell) for cell in row] for row in rows])


def _title(comparison: Comparison) -> str:
    count = len(comparison.runs)
    return f"Comparison of {count} run{'s' * (count != 1)}"


def _body(comparison: Comparison) -> str:
    headers, rows = _cells(comparison)
    explained = (
        "One row per run: the config keys whose values differ, the test metrics, the metrics "
        f"of the kept epoch on the validation split ({VAL_PREFIX!r} prefix) and the total of "
        "the run's timings (data, epochs with their evaluations, final test). "
        "The best value of each metric is in bold; '-' where a run has no value."
    )
    runs_table = _cell_table(
        ["run", "path", *DETAIL_KEYS],
        [
            [(run, False, False), (str(path), False, False)]
            + [(str(details.get(k, "-")), False, False) for k in DETAIL_KEYS]
            for run, path, details in zip(
                comparison.runs, comparison.paths, comparison.details, strict=True
            )
        ],
    )
    shared = "\n".join(f"{k}: {config_text(v)}" for k, v in comparison.shared.items())
    return (
        section("Runs side by side", note(explained) + _cell_table(headers, rows), "table")
        + section("Evaluation", runs_table, "evaluation")
        + folded(
            f"Config shared by every run ({len(comparison.shared)} keys)",
            f"<pre>{esc(shared)}</pre>",
        )
    )


def to_html(comparison: Comparison) -> str:
    """A whole self-contained HTML page: the table, the runs' evaluation facts and the
    config they share."""
    return page(_title(comparison), _body(comparison))


def output_paths(out_prefix: str | Path) -> tuple[Path, Path]:
    """(<prefix>.html, <prefix>.md); an existing folder gets <folder>/comparison.*.

    Raises:
        UserError: the folder does not exist or is not writable, or a target is a folder.
    """
    prefix = Path(out_prefix)
    if prefix.is_dir():
        prefix = prefix / "comparison"
    folder = prefix.parent
    if not folder.exists():
        raise UserError(f"--out: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"--out: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out: folder {folder} is not writable")
    targets = (prefix.with_name(prefix.name + ".html"), prefix.with_name(prefix.name + ".md"))
    for target in targets:
        if target.exists() and not target.is_file():
            raise UserError(f"--out: {target} exists and is not a file")
    return targets


def save_comparison(comparison: Comparison, out_prefix: str | Path) -> tuple[Path, Path]:
    """Write <out_prefix>.html and <out_prefix>.md, each atomically; the output folder is
    checked before either is written. Returns (html path, markdown path)."""
    html_path, md_path = output_paths(out_prefix)
    markdown = to_markdown(comparison)
    write_page(html_path, _title(comparison), _body(comparison))
    atomic_write(md_path, lambda tmp: tmp.write_text(markdown, encoding="utf-8"), ".md")
    return html_path, md_path


def write_comparison(
    run_dirs: Sequence[str | Path],
    out_prefix: str | Path,
    metrics: Sequence[str] | None = None,
    ignore: Collection[str] = IGNORED_KEYS,
) -> tuple[Path, Path]:
    """Compare the runs and write <out_prefix>.html and <out_prefix>.md.

    Everything is read and checked before anything is written, so bad input leaves existing
    files as they were. Returns (html path, markdown path).
    """
    return save_comparison(compare_runs(run_dirs, metrics, ignore), out_prefix)
