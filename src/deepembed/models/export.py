"""ONNX export of a model directory, checked against torch before anything is written.

The graph takes what `Embedder.forward` takes, images (batch, C, H, W) float32 in [0, 1] at
the model's input size, and returns its embeddings (batch, D); normalisation by mean/std is
inside the graph. The resize and crop that bring a picture to that size are not: they are
described beside it, in the model's metadata ("deepembed.preprocess") and in OUT.onnx.json.

The graph is written to a temp file beside OUT and run with onnxruntime on a seeded sample
(in batches of 1 and n - 1, neither the traced batch: the batch axis is dynamic). Only when
its embeddings match torch's (max abs difference < 1e-4) and give the same top-10 cosine
neighbours is it renamed into place; otherwise OUT and its sidecar are left as they were.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn.functional as F

from deepembed.data.preprocess import Preprocess
from deepembed.errors import UserError
from deepembed.io import atomic_write, write_json
from deepembed.models.embedder import Embedder

TOLERANCE = 1e-4  # max abs difference allowed between onnxruntime and torch embeddings
TOP_K = 10
EXPORT_BATCH = 2  # the traced batch; verification runs other sizes
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
PREPROCESS_KEY, DIM_KEY = "deepembed.preprocess", "deepembed.embedding_dim"
SIDECAR_FORMAT = "deepembed.onnx/1"


class ExportVerificationError(RuntimeError):
    """onnxruntime disagrees with torch: a fault of the exporter, not of the input (exit 1)."""


@dataclass(frozen=True)
class NeighbourCheck:
    """Top-k cosine neighbours of each sample row among the others, torch vs onnxruntime."""

    identical: bool  # every row's index list identical (near-ties in either order)
    tied_rows: int  # rows whose top-k holds distances closer than the numerical error
    differing_rows: int  # rows whose lists differ beyond near-ties


@dataclass(frozen=True)
class ExportReport:
    """What was written and how well onnxruntime reproduced torch."""

    path: Path
    sidecar: Path
    input_shape: tuple[int, int, int]  # (C, H, W); the batch axis is dynamic
    embedding_dim: int
    max_abs_diff: float
    top10_identical: bool
    tied_rows: int  # rows where the top-10 order is decided by rounding, not tested
    n_sample: int
    opset: int
    seconds: float  # load + export + verification

    def summary(self) -> str:
        """One line: path, input, D, and both checks."""
        c, h, w = self.input_shape
        top = "identical" if self.top10_identical else "DIFFERENT"
        decisive = self.n_sample - self.tied_rows
        return (
            f"{self.path}: images (batch, {c}, {h}, {w}) float32 in [0, 1] -> embeddings "
            f"(batch, {self.embedding_dim}); onnxruntime vs torch on {self.n_sample} images: "
            f"max abs diff {self.max_abs_diff:.1e}, top-10 neighbours {top} "
            f"({decisive}/{self.n_sample} rows without near-ties); opset {self.opset}, "
            f"{self.seconds:.1f} s"
        )


def sidecar_path(out: Path) -> Path:
    """OUT.onnx -> OUT.onnx.json."""
    return out.with_name(out.name + ".json")


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    sample: int = 64,
    opset: int | None = None,
    seed: int = 0,
) -> ExportReport:
    """Export the model in `model_dir` to `out` (+ `out`.json), verified with onnxruntime on
    `sample` seeded images; `opset` None is the exporter's default.

    Raises ModelFormatError (a missing, incomplete or damaged model directory) and UserError
    before anything is written; ExportVerificationError when onnxruntime disagrees.
    """
    out = Path(out)
    if sample <= TOP_K:
        raise UserError(f"--sample must be > {TOP_K} (top-{TOP_K} neighbours among the others)")
    if opset is not None and opset < 1:
        raise UserError(f"--opset must be a positive ONNX opset version, got {opset}")
    if out.is_dir() or sidecar_path(out).is_dir():
        raise UserError(f"{out} (or its .json sidecar) is a directory")
    start = time.perf_counter()
    model = Embedder.load(model_dir)  # eval mode, CPU
    pre = model.preprocessing
    images = sample_images(sample, pre.shape, seed)  # (n, C, H, W) in [0, 1]
    with torch.no_grad():
        expected = model(images).numpy()  # (n, D)
    graph = to_onnx(model, images[:EXPORT_BATCH], opset)
    checked: list[tuple[float, NeighbourCheck]] = []

    def write(tmp: Path) -> None:
        tmp.write_bytes(graph.SerializeToString())
        got = run_onnx(tmp, images)
        diff = float(np.abs(got - expected).max())
        # rounding moves each distance by at most `error`, so it can only swap neighbours
        # closer than 2 * error: those rows are ties. (The other rows are then identical by
        # construction; the check says how many rows had their order tested at all.)
        error = float(np.abs(cosine_distances(got) - cosine_distances(expected)).max())
        neighbours = compare_neighbours(expected, got, tie_tol=2.0 * error + 1e-12)
        if not diff < TOLERANCE or not neighbours.identical:  # `not <`: NaN fails too
            raise ExportVerificationError(
                f"onnxruntime disagrees with torch on {sample} images: max abs diff {diff:.2e} "
                f"(limit {TOLERANCE:.0e}), top-{TOP_K} neighbours differ in "
                f"{neighbours.differing_rows} rows; nothing written"
            )
        checked.append((diff, neighbours))
        # the sidecar goes into place just before OUT: a new OUT always has its description
        write_json(sidecar_path(out), _sidecar(model, out, graph, diff, neighbours, sample))

    atomic_write(out, write, suffix=".onnx")
    (diff, neighbours), seconds = checked[0], time.perf_counter() - start
    return ExportReport(
        path=out,
        sidecar=sidecar_path(out),
        input_shape=pre.shape,
        embedding_dim=model.embedding_dim,
        max_abs_diff=diff,
        top10_identical=neighbours.identical,
        tied_rows=neighbours.tied_rows,
        n_sample=sample,
        opset=_opset(graph),
        seconds=seconds,
    )


def sample_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """`n` seeded images (n, C, H, W) in [0, 1]: smooth random fields at two scales, random
    brightness and contrast, a little pixel noise.

    Plain per-pixel noise is a poor sample: every image has the same statistics, so pooled
    features barely differ (an untrained small_cnn puts all 63 neighbours within 1e-4 of one
    another) and the neighbour check would test rounding. Coarse layouts make them differ.
    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    fields = [
        F.interpolate(torch.rand(n, c, s, s, generator=g), size=(h, w), mode="bilinear")
        for s in (3, 8)
    ]
    mix = torch.rand(n, 1, 1, 1, generator=g)
    smooth = mix * fields[0] + (1 - mix) * fields[1]  # (n, C, H, W) in [0, 1]
    low = 0.5 * torch.rand(n, 1, 1, 1, generator=g)
    span = (1 - low) * (0.3 + 0.7 * torch.rand(n, 1, 1, 1, generator=g))
    noise = 0.05 * torch.randn(n, c, h, w, generator=g)
    return (low + span * smooth + noise).clamp_(0.0, 1.0)


def to_onnx(model: Embedder, example: torch.Tensor, opset: int | None = None) -> onnx.ModelProto:
    """Trace `model` (eval mode) on `example` into an ONNX model with a dynamic batch axis and
    the preprocessing in its metadata."""
    buffer = io.BytesIO()
    model.eval()
    try:
        with warnings.catch_warnings(), _stdout_fd_silenced():
            # the legacy exporter's deprecation notice and tracer warnings (shape arithmetic
            # traced as constants: right here, only the batch axis varies); the result is
            # checked against torch instead
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        if opset is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--opset {opset}: this model cannot be exported ({first})") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(
        proto,
        {
            PREPROCESS_KEY: json.dumps(model.preprocessing.to_dict()),
            DIM_KEY: str(model.embedding_dim),
        },
    )
    proto.doc_string = feeding_note(model.preprocessing, model.embedding_dim, model.spec.normalize)
    onnx.checker.check_model(proto)
    return proto


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    """Embeddings (n, D) of `images` by onnxruntime on the CPU, in batches of 1 and n - 1."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on the CLI's stderr
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batches = [images[:1], images[1:]]  # sizes 1 and n - 1, never EXPORT_BATCH (n > 10)
    outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: b.numpy()})[0] for b in batches]
    for batch, output in zip(batches, outputs, strict=True):
        if output.ndim != 2 or output.shape[0] != len(batch):
            raise ExportVerificationError(
                f"onnxruntime returned shape {output.shape} for a batch of {len(batch)}"
            )
    return np.concatenate(outputs)


def cosine_distances(vectors: np.ndarray) -> np.ndarray:
    """(n, n) cosine distances between the rows, in float64."""
    v = vectors.astype(np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return 1.0 - v @ v.T


def compare_neighbours(
    expected: np.ndarray, got: np.ndarray, tie_tol: float = 0.0, k: int = TOP_K
) -> NeighbourCheck:
    """Top-k cosine neighbours of each row among the others: `got` against `expected`.

    The index lists must be identical, except in rows where `expected` has a near-tie (two
    of its k + 1 nearest distances within `tie_tol`), which rounding may order either way:
    there `got`'s j-th neighbour must be as close as `expected`'s j-th, by `expected`'s
    distances, within `tie_tol`.
    """
    want, have = cosine_distances(expected), cosine_distances(got)  # (n, n) each
    np.fill_diagonal(want, np.inf)  # a row is not its own neighbour
    np.fill_diagonal(have, np.inf)
    order_want = np.argsort(want, axis=1, kind="stable")[:, : k + 1]  # (n, k+1)
    order_have = np.argsort(have, axis=1, kind="stable")[:, :k]  # (n, k)
    sorted_want = np.take_along_axis(want, order_want, axis=1)  # (n, k+1) ascending
    tied = (np.diff(sorted_want, axis=1) <= tie_tol).any(axis=1)  # incl. the k / k+1 gap
    same = (order_want[:, :k] == order_have).all(axis=1)
    gap = np.abs(np.take_along_axis(want, order_have, axis=1) - sorted_want[:, :k])  # (n, k)
    ok = same | (tied & (gap <= tie_tol).all(axis=1))
    return NeighbourCheck(bool(ok.all()), int(tied.sum()), int((~ok).sum()))


def feeding_note(pre: Preprocess, embedding_dim: int, normalised: bool = True) -> str:
    """How to turn a picture into this graph's input, in one paragraph."""
    c, h, w = pre.shape
    colour = "RGB" if c == 3 else "greyscale (PIL mode 'L', ITU-R 601-2 luma)"
    if pre.resize:
        geometry = (
            f"resize its shorter side to {pre.resize} pixels ({pre.interpolation}, "
            f"antialiased), centre-crop {h}x{w}"
        )
    else:
        geometry = f"resize it to {h}x{w} ({pre.interpolation}, antialiased; no crop)"
    output = "L2-normalised (compare by dot product)" if normalised else "not normalised"
    return (
        f"Convert the image to {colour}, {geometry}, scale the pixel values to [0, 1] "
        f"(uint8 / 255) and feed float32 NCHW batches '{INPUT_NAME}' of shape "
        f"(batch, {c}, {h}, {w}). Do not subtract the mean or divide by the std: "
        f"normalisation (mean {list(pre.mean)}, std {list(pre.std)}) is inside the graph. "
        f"The output '{OUTPUT_NAME}' (batch, {embedding_dim}) is {output}."
    )


@contextmanager
def _stdout_fd_silenced() -> Iterator[None]:
    """File descriptor 1 goes to /dev/null for the block.

    The legacy exporter turns its C++ log on whatever the user asked (torch tests the
    function `_C._jit_is_onnx_log_enabled` instead of calling it), so a failed export dumps
    its whole TorchScript graph on stdout. C++ writes bypass sys.stdout: redirect the fd.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _sidecar(
    model: Embedder,
    out: Path,
    proto: onnx.ModelProto,
    max_abs_diff: float,
    neighbours: NeighbourCheck,
    sample: int,
) -> dict:
    pre = model.preprocessing
    return {
        "format": SIDECAR_FORMAT,
        "onnx": out.name,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *pre.shape],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "layout": "NCHW",
            "mode": pre.mode,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", model.embedding_dim],
            "dtype": "float32",
            "l2_normalised": model.spec.normalize,
        },
        "preprocess": pre.to_dict(),
        "how_to_feed": proto.doc_string,
        "verification": {
            "n_sample": sample,
            "batch_sizes": [1, sample - 1],
            "max_abs_diff": max_abs_diff,
            "tolerance": TOLERANCE,
            "top10_identical": neighbours.identical,
            "top10_tied_rows": neighbours.tied_rows,
            "opset": _opset(proto),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "model": asdict(model.spec),
    }
