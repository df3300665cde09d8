"""deepembed export onnx: onnxruntime reproduces torch on fresh batches of other sizes than
the traced one, the preprocessing travels in the metadata and the sidecar, a graph that
disagrees is refused, and bad model directories give one line, exit 2, nothing written."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepembed import Embedder, EmbedderSpec
from deepembed.cli.main import app
from deepembed.errors import ModelFormatError
from deepembed.models import export
from deepembed.models.export import (
    ExportVerificationError,
    compare_neighbours,
    export_onnx,
    sample_images,
)

runner = CliRunner()
TINY = EmbedderSpec(backbone_params={"widths": [4, 4, 8, 8, 8]}, embedding_dim=16)
LITE = EmbedderSpec(
    backbone="efficientnet_lite0", pretrained=False, image_size=64, embedding_dim=32
)
SPECS = {
    "small_cnn": TINY,
    "efficientnet_lite0": LITE,
    "efficientnet_lite0_gem_bn": replace(LITE, pool="gem", pool_params={"p": 2.5}, head_bn=True),
}


def save_model(path: Path, spec: EmbedderSpec, seed: int = 0) -> Path:
    """A model directory whose BatchNorm statistics come from a few sample batches.

    Untrained BatchNorm (mean 0, var 1) makes a random EfficientNet map every image to the
    same embedding; calibrated statistics give distinct neighbours, as a trained model does.
    """
    torch.manual_seed(seed)
    model = Embedder(spec)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in range(2):
            model(sample_images(16, model.preprocessing.shape, seed=100 + batch))
    model.eval().save(path)
    return path


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --- export and verification -------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(SPECS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Embedder, export.ExportReport]:
    tmp = tmp_path_factory.mktemp(request.param)
    model_dir = save_model(tmp / "model", SPECS[request.param])
    start = time.perf_counter()
    report = export_onnx(model_dir, tmp / "model.onnx")
    elapsed = time.perf_counter() - start
    print(f"\n{request.param}: max abs diff {report.max_abs_diff:.1e}, {elapsed:.1f} s")
    return Embedder.load(model_dir), report


def test_onnxruntime_matches_torch_on_fresh_batches(
    exported: tuple[Embedder, export.ExportReport],
) -> None:
    model, report = exported
    assert report.max_abs_diff < 1e-4 and report.top10_identical
    # a calibrated model: almost every row's top-10 order is tested, not left to rounding
    assert report.tied_rows <= report.n_sample // 8
    assert report.input_shape == model.preprocessing.shape
    assert report.embedding_dim == model.embedding_dim and report.n_sample == 64
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(123)
    for batch in (1, 7):  # the trace used 2: the batch axis is dynamic
        images = torch.rand(batch, *model.preprocessing.shape, generator=generator)
        (got,) = session.run(["embeddings"], {"images": images.numpy()})
        with torch.no_grad():
            want = model(images).numpy()
        assert got.shape == (batch, model.embedding_dim)
        assert np.abs(got - want).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_preprocessing_travels_in_metadata_and_sidecar(
    exported: tuple[Embedder, export.ExportReport],
) -> None:
    model, report = exported
    proto = onnx.load(str(report.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["deepembed.preprocess"]) == model.preprocessing.to_dict()
    assert meta["deepembed.embedding_dim"] == str(model.embedding_dim)
    (graph_input,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "images" and dims == ["batch", *model.preprocessing.shape]
    assert [o.name for o in proto.graph.output] == ["embeddings"]
    sidecar = json.loads(report.sidecar.read_text())
    assert report.sidecar == report.path.with_name("model.onnx.json")
    assert sidecar["preprocess"] == model.preprocessing.to_dict()
    assert sidecar["input"]["shape"] == ["batch", *model.preprocessing.shape]
    assert sidecar["output"]["shape"] == ["batch", model.embedding_dim]
    assert sidecar["verification"]["max_abs_diff"] == report.max_abs_diff
    note = sidecar["how_to_feed"]
    assert note == proto.doc_string and "[0, 1]" in note and "inside the graph" in note
    pre = model.preprocessing
    if pre.resize:
        assert f"shorter side to {pre.resize}" in note and pre.interpolation in note
    assert sorted(p.name for p in report.path.parent.iterdir()) == [
        "model",
        "model.onnx",
        "model.onnx.json",
    ]  # no temp files left


def test_graph_without_normalisation_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deliberate break: trace a graph that skips (x - mean) / std. Verification must
    catch it: exit 1, one line, OUT and its sidecar as they were."""
    model_dir = save_model(tmp_path / "model", TINY)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    real_export = torch.onnx.export

    def export_unnormalised(model: Embedder, *args: object, **kwargs: object) -> object:
        mean, std = model.mean.clone(), model.std.clone()
        model.mean.zero_()
        model.std.fill_(1.0)
        try:
            return real_export(model, *args, **kwargs)
        finally:
            model.mean.copy_(mean)
            model.std.copy_(std)

    monkeypatch.setattr(torch.onnx, "export", export_unnormalised)
    with pytest.raises(ExportVerificationError, match="max abs diff"):
        export_onnx(model_dir, out)
    code, output = invoke("export", "onnx", model_dir, out)
    assert code == 1 and one_line(output).startswith("failed: ExportVerificationError")
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.onnx"]


# --- the neighbour check against the obvious computation ---------------------------------------


def brute_force_top_k(vectors: np.ndarray, k: int = 10) -> list[list[int]]:
    """Each row's k nearest other rows by cosine distance, one row at a time."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for i, u in enumerate(unit):
        others = sorted((1.0 - float(u @ v), j) for j, v in enumerate(unit) if j != i)
        rows.append([j for _, j in others[:k]])
    return rows


def test_neighbour_check_against_brute_force(rng: np.random.Generator) -> None:
    expected = rng.normal(size=(40, 8)).astype(np.float32)
    noisy = expected + rng.normal(scale=1e-7, size=expected.shape).astype(np.float32)
    assert brute_force_top_k(expected) == brute_force_top_k(noisy)
    check = compare_neighbours(expected, noisy)
    assert check.identical and check.tied_rows == 0 and check.differing_rows == 0
    # rows 0 and 1 exchanged: both, and every row that has either among its top-10, change
    swapped = expected.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    want, have = brute_force_top_k(expected), brute_force_top_k(swapped)
    changed = sum(a != b for a, b in zip(want, have, strict=True))
    check = compare_neighbours(expected, swapped)
    assert not check.identical and check.differing_rows == changed > 2


def brute_force_check(
    expected: np.ndarray, got: np.ndarray, tol: float, k: int = 10
) -> tuple[int, int]:
    """(tied rows, differing rows), one row at a time: a row is tied when two of its k + 1
    nearest distances are within `tol`; a tied row may differ only by neighbours as close."""
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    tied = differing = 0
    for i, (want, have) in enumerate(
        zip(brute_force_top_k(expected, k + 1), brute_force_top_k(got, k), strict=True)
    ):
        dist = {j: 1.0 - float(unit[i] @ unit[j]) for j in range(len(unit)) if j != i}
        row_tied = any(dist[b] - dist[a] <= tol for a, b in itertools.pairwise(want))
        as_close = all(abs(dist[h] - dist[w]) <= tol for h, w in zip(have, want, strict=False))
        tied += row_tied
        differing += not (want[:k] == have or (row_tied and as_close))
    return tied, differing


def near_tie_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """30 vectors where rows 1 and 2 are a near-tie for row 0 (and for many others); `ties`
    swaps them, as rounding might; `ties_and_more` also swaps row 0's 5th and 8th
    neighbours, a difference no tie explains."""
    expected = rng.normal(size=(30, 6))
    expected[2] = expected[1] + 1e-9 * rng.normal(size=6)
    expected[0] = expected[1] + 0.05 * rng.normal(size=6)
    ties = expected.copy()
    ties[[1, 2]] = ties[[2, 1]]
    a, b = brute_force_top_k(expected)[0][4], brute_force_top_k(expected)[0][7]
    more = ties.copy()
    more[[a, b]] = more[[b, a]]
    return expected, ties, more


def test_neighbour_check_lets_near_ties_go_either_way(rng: np.random.Generator) -> None:
    expected, ties, more = near_tie_case(rng)
    assert brute_force_top_k(expected) != brute_force_top_k(ties)
    assert not compare_neighbours(expected, ties).identical  # no tolerance: a difference
    check = compare_neighbours(expected, ties, tie_tol=1e-6)
    assert check.identical and check.tied_rows >= 2 and check.differing_rows == 0
    assert not compare_neighbours(expected, more, tie_tol=1e-6).identical


@pytest.mark.parametrize("tol", [0.0, 1e-6, 1e-2])
def test_neighbour_check_counts_match_brute_force(rng: np.random.Generator, tol: float) -> None:
    expected, ties, more = near_tie_case(rng)
    noisy = expected + rng.normal(scale=1e-4, size=expected.shape)
    for got in (expected, ties, more, noisy):
        check = compare_neighbours(expected, got, tie_tol=tol)
        assert (check.tied_rows, check.differing_rows) == brute_force_check(expected, got, tol)
    # row 0 is tied and differs beyond its tie: the case a lax check would let through
    assert brute_force_check(expected, more, 1e-6)[1] >= 1


def test_sample_images_are_seeded_distinct_and_in_range() -> None:
    images = sample_images(64, (3, 32, 24), seed=5)
    assert images.shape == (64, 3, 32, 24) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert torch.equal(images, sample_images(64, (3, 32, 24), seed=5))
    assert not torch.equal(images, sample_images(64, (3, 32, 24), seed=6))
    means = images.mean((1, 2, 3))
    assert means.std() > 0.05  # brightness and layout vary: not 64 copies of one noise


def test_collapsed_model_ties_everything_and_says_so(tmp_path: Path) -> None:
    """A model that maps every image to one embedding (as an untrained EfficientNet nearly
    does: `model create efficientnet_lite0 --pretrained false`) leaves no neighbour order to
    test. The export passes, and its line says that no row was tested."""
    model = Embedder(TINY)
    with torch.no_grad():
        model.head.linear.weight.zero_()  # embedding = normalize(bias) for every image
    model.save(tmp_path / "model")
    code, output = invoke("export", "onnx", tmp_path / "model", tmp_path / "m.onnx")
    line = one_line(output)
    assert code == 0 and "top-10 neighbours identical (0/64 rows without near-ties)" in line


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_prints_one_line(tmp_path: Path) -> None:
    model_dir = save_model(tmp_path / "model", TINY)
    out = tmp_path / "sub" / "tiny.onnx"
    code, output = invoke("export", "onnx", model_dir, out, "--sample", "20", "--opset", "17")
    line = one_line(output)
    assert code == 0, output
    assert line.startswith(f"{out}: images (batch, 1, 28, 28) float32 in [0, 1]")
    assert "embeddings (batch, 16)" in line and "max abs diff" in line
    assert "top-10 neighbours identical (20/20 rows" in line and "opset 17" in line
    assert onnx.load(str(out)).opset_import[0].version == 17


def test_console_script(tmp_path: Path) -> None:
    model_dir = save_model(tmp_path / "model", TINY)
    script = Path(sys.executable).parent / "deepembed"
    run = subprocess.run(
        [script, "export", "onnx", model_dir, tmp_path / "m.onnx", "--sample", "16"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # the legacy exporter's warnings stay out of the user's way
    assert one_line(run.stdout).startswith(f"{tmp_path / 'm.onnx'}: images (batch, 1, 28, 28)")
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.onnx.json").is_file()


def _no_weights(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()


def _garbage_config(model_dir: Path) -> None:
    (model_dir / "config.json").write_bytes(b'{"kind": "deepembed.Emb\x00\xff')


def _truncated_weights(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _missing_dir(model_dir: Path) -> None:
    for path in model_dir.iterdir():
        path.unlink()
    model_dir.rmdir()


@pytest.mark.parametrize("previous", [None, b"an earlier export"], ids=["new", "existing"])
@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_missing_dir, "model directory not found"),
        (_no_weights, "incomplete: no model.safetensors"),
        (_garbage_config, "config.json: truncated or not a model config.json"),
        (_truncated_weights, "model.safetensors: truncated"),
    ],
    ids=["missing", "no_weights", "garbage_config", "truncated_weights"],
)
def test_bad_model_dir_is_one_line_exit_2_nothing_written(
    tmp_path: Path, damage: Callable[[Path], None], needle: str, previous: bytes | None
) -> None:
    model_dir = tmp_path / "model"
    Embedder(TINY).save(model_dir)
    damage(model_dir)
    out = tmp_path / "out" / "m.onnx"
    if previous is not None:
        out.parent.mkdir()
        out.write_bytes(previous)
        out.with_name("m.onnx.json").write_bytes(previous)
    with pytest.raises(ModelFormatError):
        export_onnx(model_dir, out)
    code, output = invoke("export", "onnx", model_dir, out)
    line = one_line(output)
    assert code == 2 and line.startswith("error: ") and needle in line, line
    if previous is None:
        assert not out.parent.exists()
    else:
        assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.json"]
        assert out.read_bytes() == previous
        assert out.with_name("m.onnx.json").read_bytes() == previous


@pytest.mark.parametrize(
    ("option", "needle"), [(["--sample", "10"], "--sample"), (["--opset", "99"], "--opset 99")]
)
def test_bad_options_exit_2(tmp_path: Path, option: list[str], needle: str) -> None:
    model_dir = Embedder(TINY).save(tmp_path / "model")
    code, output = invoke("export", "onnx", model_dir, tmp_path / "m.onnx", *option)
    line = one_line(output)
    assert code == 2 and line.startswith("error: ") and needle in line, line
    assert not (tmp_path / "m.onnx").exists()
