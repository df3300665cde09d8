"""Distributed training through the Trainer and the CLI: 2 gloo processes on the CPU.

- One Trainer step on each of 2 ranks (each on its own P x K batch of the epoch plan) equals
  one step of a single process on the two batches concatenated in rank order: the loss, the
  gradient of every model and objective parameter (learned proxies included) and the
  parameters after the optimiser step (float64, so they must agree to 1e-10).
- `torchrun --nproc-per-node 2 -m deepembed train` finishes and writes every file once.
- More ranks than P x K batches per epoch: exit code 2 and a one-line error on every rank.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from deepembed import losses, miners
from deepembed.data import PKSampler
from deepembed.inference import Embeddings
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.callbacks import Callback
from deepembed.training.distributed import DistributedStrategy, Strategy, is_main_process
from deepembed.training.objective import MetricObjective
from deepembed.training.trainer import Trainer
from tests.conftest import TINY_RUN
from tests.ranks import WORLD, free_port, run_ranks

CLASSES = np.array([3, 11, 12, 20])  # dataset labels, not 0..C-1
# 48 images, 4 batches of 3 classes x 4 per epoch (2 per rank): ranks' batches share classes
PER_CLASS, P, K, SEED = 12, 3, 4, 0
LABELS = np.repeat(CLASSES, PER_CLASS)
CASES = ("proxy_anchor", "multi_similarity", "circle")  # learned proxies / miner / demo loss


class _Images(Dataset):
    """48 random float64 12x12 grey images; records which items were loaded."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(len(LABELS), 1, 12, 12, generator=g, dtype=torch.float64)
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.loaded.append(index)
        return self.images[index], int(LABELS[index])


class _OneBatch:
    """A sampler of one epoch of one given batch (the single-process reference)."""

    def __init__(self, batch: list[int]) -> None:
        self.batch = batch

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Any:
        yield self.batch

    def __len__(self) -> int:
        return 1


class _Capture(Callback):
    """The loss, every gradient and every parameter after the first step."""

    def on_step_end(self, trainer: Trainer) -> None:
        named = [
            *trainer.model.named_parameters(),
            *trainer.objective.named_parameters(prefix="objective"),
        ]
        self.result = {
            "loss": trainer.last_loss(),
            "grads": {n: None if p.grad is None else p.grad.clone() for n, p in named},
            "params": {n: p.detach().clone() for n, p in named},
        }


def _trainer(case: str, sampler: Any, strategy: Strategy) -> tuple[Trainer, _Capture, _Images]:
    """The same model, objective and optimiser in every process (seeded), float64.

    The model is a real Embedder (small_cnn); its BatchNorm layers use their running
    statistics (freeze bn=True): batch statistics of a rank's half batch would differ from
    those of the global batch, which no gather can fix.
    """
    torch.manual_seed(0)
    spec = EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=8)
    model = Embedder(spec).double()
    model.freeze(0, bn=True)
    miner = None
    if case == "proxy_anchor":
        loss_fn = losses.create("proxy_anchor", num_classes=len(CLASSES), embedding_size=8)
    else:
        loss_fn = losses.create(case)
        miner = miners.create("multi_similarity") if case == "multi_similarity" else None
    objective = MetricObjective(loss_fn, miner, torch.as_tensor(CLASSES)).double()
    params = [*model.parameters(), *objective.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)  # keeps .grad as it was after backward
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    capture, images = _Capture(), _Images()
    trainer = Trainer(
        model,
        objective,
        images,
        sampler,
        optimizer,
        scheduler,
        epochs=1,
        max_steps=1,
        seed=SEED,
        callbacks=[capture],
        strategy=strategy,
        progress=False,
    )
    return trainer, capture, images


def _rank_steps(rank: int) -> dict[str, Any]:
    """One step of this rank's Trainer per case."""
    strategy = DistributedStrategy("cpu")
    out: dict[str, Any] = {"rank": strategy.rank}
    for case in CASES:
        sampler = PKSampler(LABELS, P, K, SEED, rank=strategy.rank, world_size=strategy.world_size)
        trainer, capture, images = _trainer(case, sampler, strategy)
        trainer.fit()
        out[case] = {**capture.result, "loaded": images.loaded}
    strategy.shutdown()
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """`_rank_steps` in 2 spawned processes (one process group); their results by rank."""
    return run_ranks(_rank_steps, tmp_path_factory.mktemp("ddp_steps"))


def _plan() -> list[list[int]]:
    """Epoch 0's batches for all ranks: rank r trains on batch r at its first step."""
    return PKSampler(LABELS, P, K, SEED, rank=0, world_size=WORLD).plan(0)


def test_each_rank_trains_on_its_own_batch_of_the_plan(ranks: list[dict[str, Any]]) -> None:
    plan = _plan()
    for r, result in enumerate(ranks):
        assert result["rank"] == r
        for case in CASES:
            assert sorted(result[case]["loaded"]) == sorted(plan[r])
    assert not set(plan[0]) & set(plan[1])  # distinct images ...
    assert set(LABELS[plan[0]]) & set(LABELS[plan[1]])  # ... with positive pairs across ranks


@pytest.mark.parametrize("case", CASES)
def test_first_step_equals_one_process_on_the_global_batch(
    ranks: list[dict[str, Any]], case: str
) -> None:
    plan = _plan()
    trainer, capture, _ = _trainer(case, _OneBatch(plan[0] + plan[1]), Strategy("cpu"))
    trainer.fit()
    want = capture.result
    assert all(g is not None for g in want["grads"].values())  # everything trains
    assert max(g.abs().max().item() for g in want["grads"].values()) > 1e-5  # a real signal
    if case == "proxy_anchor":
        assert want["grads"]["objective.loss_fn.proxies"].abs().max() > 1e-3
    for result in ranks:
        got = result[case]
        assert got["loss"] == pytest.approx(want["loss"], rel=0, abs=1e-12)
        assert got["grads"].keys() == want["grads"].keys()
        for name, grad in want["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=0, atol=1e-10, msg=name)
        for name, value in want["params"].items():
            torch.testing.assert_close(got["params"][name], value, rtol=0, atol=1e-10, msg=name)


def _env(**extra: str) -> dict[str, str]:
    """This environment with one thread per process and no torchrun banner."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_torchrun_two_processes_write_each_file_once(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(WORLD),
        "-m",
        "deepembed",
        "train",
        "configs/mnist30.yaml",
        *TINY_RUN,
        f"output_dir={tmp_path}",
        "name=ddp",
        "train.device=cpu",
        "train.threads=1",
        "-q",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=_env(), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "ddp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no .ddp.partial left
    for name in ("config.yaml", "history.jsonl", "history.csv", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # one line per epoch, not one per rank
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD
    assert metrics["epochs_trained"] == 2
    assert all(math.isfinite(h["loss"]) for h in history)
    for name in ("recall@1", "map@r", "nmi"):
        assert 0.0 <= metrics[name] <= 1.0, name
    test = Embeddings.load(run / "embeddings" / "test.npz")
    assert len(test) == metrics["num_queries"]  # every test image, in one file
    assert np.isfinite(test.vectors).all()
    Embedder.load(run / "model")
    assert "Traceback" not in result.stderr


def test_world_size_the_sampler_cannot_serve_is_a_one_line_error(tmp_path: Path) -> None:
    """Each rank as torchrun starts it (its environment), so that every rank's own exit code
    and output can be read: torchrun itself exits 1 whenever a worker fails, with a
    ChildFailedError traceback naming the worker's exit code."""
    one_batch = [
        *TINY_RUN,
        "data.train_per_class=8",  # 15 classes x 8 images: one batch of 15 x 8
        "sampler.classes_per_batch=15",
        "sampler.images_per_class=8",
    ]
    command = [sys.executable, "-m", "deepembed", "train", "configs/mnist30.yaml", *one_batch]
    command += [f"output_dir={tmp_path}", "name=ddp", "train.device=cpu", "-q"]
    port = str(free_port())
    procs = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                WORLD_SIZE=str(WORLD),
                RANK=str(r),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(WORLD),
            ),
        )
        for r in range(WORLD)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2] * WORLD, outputs
    error = outputs[0][1].splitlines()
    assert len(error) == 1 and error[0].startswith("error: torchrun world size 2 "), outputs
    assert "1 P x K batches per epoch" in error[0]
    for out, err in outputs:
        assert "Traceback" not in out + err
    assert outputs[1] == ("", "")  # the other ranks fail alike and say nothing
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize(("rank", "main"), [(None, True), ("0", True), ("1", False)])
def test_is_main_process_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, rank: str | None, main: bool
) -> None:
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert is_main_process() is main
