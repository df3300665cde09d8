"""Training binary codes end to end: a hashing loss on the hash head under the hashing
protocol, a metric loss carrying the quantization regulariser, HashNet's continuation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepembed.config import load_config
from deepembed.inference import Embeddings
from deepembed.losses.hashing import QuantizedLoss
from deepembed.models.embedder import Embedder
from deepembed.training.callbacks import Callback, HashScale
from deepembed.training.pipeline import train
from deepembed.training.trainer import Trainer

QUICK = [
    "data.hash_query_per_class=10",
    "data.hash_train_per_class=40",
    "data.hash_val_per_class=5",
    "data.hash_database_per_class=30",
    "model.backbone_params.widths=[8,8,8,16,16]",
    "model.bits=16",
    "train.epochs=2",
    "train.max_steps=6",
]


def run(tmp_path: Path, *overrides: str, callbacks: tuple[Callback, ...] = ()):
    config = load_config(
        "configs/hashing.yaml", [f"output_dir={tmp_path}", "name=h", *QUICK, *overrides]
    )
    return train(config, progress=False, callbacks=callbacks)


def test_a_hashing_run_learns_codes_and_evaluates_them_by_hamming(tmp_path: Path) -> None:
    result = run(tmp_path)
    model = Embedder.load(result.model_dir)
    assert model.produces_codes and model.embedding_dim == 16
    test = Embeddings.load(result.run_dir / "embeddings" / "test.npz")
    gallery = Embeddings.load(result.run_dir / "embeddings" / "gallery.npz")
    assert test.codes.shape == (300, 2) and gallery.codes.shape == (900, 2)
    assert set(np.unique(test.vectors)) <= {-1.0, 1.0}
    # the epoch was chosen on the validation items, and every metric is a real number
    assert result.metrics["selection"] == "best val map"
    assert 1 / 30 < result.metrics["map"] <= 1 and "val" in result.history[0]
    # the literature's curves: precision@N and precision-recall over Hamming radii 0..16
    curves = result.metrics["hashing_curves"]
    assert curves["pr_curve"]["radius"] == list(range(17))
    assert curves["pr_curve"]["recall"][-1] == pytest.approx(1.0)
    assert (result.run_dir / "hashing_curves.png").stat().st_size > 1000


@pytest.mark.parametrize("loss", ["csq", "greedy_hash", "dtsh"])
def test_other_methods_train_on_the_hash_head(tmp_path: Path, loss: str) -> None:
    result = run(tmp_path, f"loss.name={loss}", "train.epochs=1", "train.max_steps=3")
    assert np.isfinite(result.history[0]["loss"])


def test_a_metric_loss_with_quantization_ramps_its_weight(tmp_path: Path) -> None:
    weights: list[float] = []

    class Watch(Callback):
        def on_step_end(self, trainer: Trainer) -> None:
            weights.append(trainer.objective.loss_fn.current_weight())

    run(
        tmp_path,
        "loss.name=triplet",
        "miner.name=batch_hard",
        "loss.quantization_weight=0.2",
        "loss.quantization_ramp=0.5",
        callbacks=(Watch(),),
    )
    # 12 steps, ramped over the first 6: the weight after step s is 0.2 * min(s / 6, 1)
    np.testing.assert_allclose(weights, [0.2 * min(s / 6, 1) for s in range(1, 13)])


def test_hashnet_sharpens_the_relaxation_with_the_steps() -> None:
    class Fake:
        global_step = 0
        model = torch.nn.Module()

    fake = Fake()
    fake.model.head = torch.nn.Module()
    fake.model.head.register_buffer("scale", torch.ones(()))
    scale = HashScale()
    for step, expected in ((0, 1.0), (199, 1.0), (200, math.sqrt(2)), (1000, math.sqrt(6))):
        fake.global_step = step
        scale.on_step_start(fake)  # type: ignore[arg-type]
        assert float(fake.model.head.scale) == pytest.approx(expected)


def test_quantized_loss_is_what_the_objective_holds(tmp_path: Path) -> None:
    from deepembed.training.objective import build_objective

    config = load_config(
        "configs/hashing.yaml", [*QUICK, "loss.name=triplet", "loss.quantization_weight=0.1"]
    )
    loss_fn, _ = build_objective(config, 30, 16, total_steps=40)
    assert isinstance(loss_fn, QuantizedLoss) and loss_fn.ramp_steps == 20
