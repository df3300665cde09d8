"""Distributed-training primitives: real 2-process gloo runs on the CPU, checked against one
process on the global batch (float64, so gradients must agree to 1e-10)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from deepembed import losses
from deepembed.errors import ConfigError
from deepembed.training.distributed import (
    DistributedStrategy,
    Strategy,
    check_world_size,
    strategy_from_env,
)
from tests.ranks import WORLD, run_ranks

BATCH = 8  # global batch; rank r takes rows [r * 4, (r + 1) * 4)
# each rank holds one sample of each class: every positive pair crosses ranks
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
N_ROWS = 7  # gather_rows: 4 rows on rank 0, 3 on rank 1


def _inputs() -> torch.Tensor:
    return torch.randn(BATCH, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def _losses() -> tuple[nn.Module, nn.Module]:
    pair = losses.create("multi_similarity")
    proxy = losses.create("proxy_anchor", num_classes=4, embedding_size=4).double()
    with torch.no_grad():  # fixed proxies, the same in every process
        g = torch.Generator().manual_seed(2)
        proxy.proxies.copy_(torch.randn(4, 4, generator=g, dtype=torch.float64))
    return pair, proxy


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _step(
    strategy: Strategy, model: nn.Module, proxy_loss: nn.Module, pair_loss: nn.Module, gather: Any
) -> dict[str, Any]:
    """One training step of rank `strategy.rank` on its half of the global batch."""
    model.zero_grad(set_to_none=True)
    proxy_loss.zero_grad(set_to_none=True)
    rows = slice(strategy.rank * BATCH // WORLD, (strategy.rank + 1) * BATCH // WORLD)
    # the wrapper must outlive backward(): a DDP collected after its forward takes its
    # gradient hooks with it, and the gradients are silently left un-averaged
    wrapped = strategy.wrap(model)
    embeddings = wrapped(_inputs()[rows])  # (B / world, 4)
    all_embeddings = gather(embeddings)  # (B, 4)
    with torch.no_grad():
        all_labels = strategy.gather(LABELS[rows])
    loss = pair_loss(all_embeddings, all_labels) + proxy_loss(all_embeddings, all_labels)
    loss.backward()
    strategy.all_reduce_mean_([p.grad for p in proxy_loss.parameters()])
    return {"loss": loss.item(), "grads": _grads(model), "proxy_grad": _grads(proxy_loss)[0]}


def _plain_gather(t: torch.Tensor) -> torch.Tensor:
    """The usual shortcut without the backward all_reduce: other ranks' rows as constants."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def _checks(rank: int) -> dict[str, Any]:
    strategy = DistributedStrategy("cpu")
    out: dict[str, Any] = {
        "flags": (strategy.rank, strategy.world_size, strategy.local_rank, strategy.is_main),
        "distributed": strategy.distributed,
        "device": str(strategy.device),
    }
    model, (pair_loss, proxy_loss) = _model(), _losses()
    out["step"] = _step(strategy, model, proxy_loss, pair_loss, strategy.gather)
    out["plain"] = _step(strategy, model, proxy_loss, pair_loss, _plain_gather)
    model[0].requires_grad_(False)  # frozen first layer: wrap again
    out["frozen"] = _step(strategy, model, proxy_loss, pair_loss, strategy.gather)
    model[0].requires_grad_(True)
    out["unfrozen"] = _step(strategy, model, proxy_loss, pair_loss, strategy.gather)
    out["frozen_wrap"] = type(strategy.wrap(nn.Linear(2, 2).requires_grad_(False))).__name__
    try:
        strategy.gather(torch.zeros(3 + rank, 2))
    except ValueError as exc:
        out["shape_error"] = str(exc)

    full = np.arange(N_ROWS * 3, dtype=np.float32).reshape(N_ROWS, 3)
    mine = strategy.shard(N_ROWS)
    out["shard"] = mine
    out["rows_f32"] = strategy.gather_rows(full[mine])
    out["rows_i64"] = strategy.gather_rows(np.arange(N_ROWS, dtype=np.int64)[mine] * 10)
    out["rows_one"] = strategy.gather_rows(full[:1][strategy.shard(1)])  # rank 1: 0 rows

    out["reduce_mean"] = strategy.reduce_mean(float(rank + 1))
    out["broadcast"] = strategy.broadcast_object({"rank": rank, "text": "from rank 0?"})
    several = [torch.full((2, 2), rank + 1.0), torch.full((3,), 10.0 * rank)]
    strategy.all_reduce_mean_(several)
    one = [torch.full((2,), 4.0 * rank)]
    strategy.all_reduce_mean_(one)
    out["means"] = [*several, *one]
    norm = nn.BatchNorm1d(2)
    norm.running_mean.fill_(rank + 1.0)
    strategy.sync_buffers(norm)
    out["buffer"] = norm.running_mean.clone()
    strategy.barrier()
    strategy.shutdown()
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run `_checks` in 2 spawned processes (one process group); their results by rank."""
    return run_ranks(_checks, tmp_path_factory.mktemp("distributed"))


def _reference(frozen: bool = False) -> dict[str, Any]:
    """One process on the global batch."""
    model, (pair_loss, proxy_loss) = _model(), _losses()
    model[0].requires_grad_(not frozen)
    embeddings = model(_inputs())
    loss = pair_loss(embeddings, LABELS) + proxy_loss(embeddings, LABELS)
    loss.backward()
    return {"loss": loss.item(), "grads": _grads(model), "proxy_grad": _grads(proxy_loss)[0]}


def _assert_close(got: list[torch.Tensor | None], want: list[torch.Tensor | None]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert g is not None
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_process_group_flags(ranks: list[dict[str, Any]]) -> None:
    for r, result in enumerate(ranks):
        assert result["flags"] == (r, WORLD, r, r == 0)
        assert result["distributed"] is True
        assert result["device"] == "cpu"


@pytest.mark.parametrize("key", ["step", "unfrozen"])
def test_gathered_loss_and_gradients_equal_one_process(
    ranks: list[dict[str, Any]], key: str
) -> None:
    want = _reference()
    assert any(g.abs().max() > 1e-3 for g in want["grads"])  # a real signal, not zeros
    for result in ranks:
        got = result[key]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-12)
        _assert_close(got["grads"], want["grads"])
        _assert_close([got["proxy_grad"]], [want["proxy_grad"]])


def test_wrap_again_after_freezing(ranks: list[dict[str, Any]]) -> None:
    want = _reference(frozen=True)
    for result in ranks:
        assert result["frozen"]["grads"][:2] == [None, None]  # frozen layer: no gradient
        _assert_close(result["frozen"]["grads"], want["grads"])


def test_gather_without_backward_all_reduce_gives_wrong_gradients(
    ranks: list[dict[str, Any]],
) -> None:
    """The control: without the summed backward DDP's average leaves 1/world of dL/dθ."""
    want = _reference()
    for result in ranks:
        got = result["plain"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-12)  # forward is the same
        for g, w in zip(got["grads"], want["grads"], strict=True):
            assert not torch.allclose(g, w, rtol=0, atol=1e-6)
            torch.testing.assert_close(g, w / WORLD, rtol=0, atol=1e-10)


def test_gather_refuses_unequal_batches_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert "same shape on every rank" in result["shape_error"]
        assert "(3, 2), (4, 2)" in result["shape_error"]


def test_unwrapped_when_nothing_trains(ranks: list[dict[str, Any]]) -> None:
    assert [result["frozen_wrap"] for result in ranks] == ["Linear", "Linear"]


def test_gather_rows_restores_item_order(ranks: list[dict[str, Any]]) -> None:
    full = np.arange(N_ROWS * 3, dtype=np.float32).reshape(N_ROWS, 3)
    np.testing.assert_array_equal(ranks[0]["shard"], [0, 2, 4, 6])
    np.testing.assert_array_equal(ranks[1]["shard"], [1, 3, 5])
    for result in ranks:
        assert result["rows_f32"].dtype == np.float32
        np.testing.assert_array_equal(result["rows_f32"], full)
        assert result["rows_i64"].dtype == np.int64
        np.testing.assert_array_equal(result["rows_i64"], np.arange(N_ROWS) * 10)
        np.testing.assert_array_equal(result["rows_one"], full[:1])


def test_reductions_and_broadcast(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["reduce_mean"] == 1.5
        assert result["broadcast"] == {"rank": 0, "text": "from rank 0?"}
        two_by_two, three, two = result["means"]
        torch.testing.assert_close(two_by_two, torch.full((2, 2), 1.5))
        torch.testing.assert_close(three, torch.full((3,), 5.0))
        torch.testing.assert_close(two, torch.full((2,), 2.0))
        torch.testing.assert_close(result["buffer"], torch.full((2,), 1.0))


def test_single_process_strategy_is_identity() -> None:
    strategy = Strategy("cpu")
    assert (strategy.rank, strategy.world_size, strategy.local_rank) == (0, 1, 0)
    assert strategy.is_main and not strategy.distributed
    assert strategy.device == torch.device("cpu")
    model = nn.Linear(2, 2)
    assert strategy.wrap(model) is model
    t = torch.randn(3, 2)
    assert strategy.gather(t) is t
    tensors = [t.clone()]
    strategy.all_reduce_mean_(tensors)
    torch.testing.assert_close(tensors[0], t)
    assert strategy.reduce_mean(2.5) == 2.5
    obj = {"a": 1}
    assert strategy.broadcast_object(obj) is obj
    strategy.barrier()
    strategy.sync_buffers(model)
    np.testing.assert_array_equal(strategy.shard(5), np.arange(5))
    rows = np.arange(6).reshape(3, 2)
    assert strategy.gather_rows(rows) is rows
    strategy.shutdown()


@pytest.mark.parametrize("world_size", [None, "1"])
def test_strategy_from_env_without_torchrun(
    monkeypatch: pytest.MonkeyPatch, world_size: str | None
) -> None:
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    strategy = strategy_from_env("cpu")
    assert type(strategy) is Strategy
    assert strategy.device == torch.device("cpu")
    assert type(strategy_from_env()) is Strategy  # "auto"


def test_strategy_from_env_refuses_bad_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        strategy_from_env("cpu")


def test_check_world_size() -> None:
    check_world_size(5, 5)
    check_world_size(5, 1)
    with pytest.raises(ConfigError) as info:
        check_world_size(5, 8)
    assert str(info.value) == (
        "torchrun world size 8 but the training set makes only 5 P x K batches per epoch "
        "(sampler.classes_per_batch x sampler.images_per_class); use at most 5 processes "
        "or smaller batches"
    )
    assert "\n" not in str(info.value)


def test_python_m_deepembed_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deepembed", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "python -m deepembed" in result.stdout
