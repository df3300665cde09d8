"""Device strategies: one process (`Strategy`) or one of N torchrun processes (DDP).

The trainer talks to a strategy only, so the same loop runs alone or under torchrun:

- `wrap` the model (DDP averages parameter gradients over ranks),
- `gather` the embeddings and labels of every rank, so the metric loss sees the global
  batch of P x K samples (pairs across ranks count), with gradients routed back exactly,
- `all_reduce_mean_` the gradients of learned loss parameters (proxies), which DDP does
  not see because the loss is not part of the wrapped model,
- `shard` evaluation items over ranks and `gather_rows` the results back in item order.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deepembed.errors import ConfigError
from deepembed.training.build import resolve_device


class Strategy:
    """A single process on one device: every collective is the identity."""

    distributed = False

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train; returned unchanged."""
        return model

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ...) of every rank concatenated in rank order: (world * B, ...)."""
        return t

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average the tensors over ranks, in place."""

    def reduce_mean(self, value: float) -> float:
        """The mean of `value` over ranks."""
        return value

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable), on every rank."""
        return obj

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank, in place."""

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def shutdown(self) -> None:
        """Leave the process group."""

    def shard(self, n: int) -> np.ndarray:
        """Indices (n_r,) of this rank's share of n items: every world_size-th from rank."""
        return np.arange(self.rank, n, self.world_size)

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        """The inverse of `shard`: this rank's rows (n_r, ...) -> all n rows in item order."""
        return array


class _GatherRows(torch.autograd.Function):
    """Differentiable all_gather along dim 0: (B, ...) per rank -> (world * B, ...)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        # every rank's shape first: all_gather needs equal shapes, and a mismatch must raise
        # the same error on every rank instead of hanging or failing inside the backend
        shape = torch.tensor(t.shape, dtype=torch.int64, device=t.device)
        shapes = [torch.empty_like(shape) for _ in range(world)]
        dist.all_gather(shapes, shape)
        if any(not torch.equal(s, shape) for s in shapes):
            found = ", ".join(str(tuple(s.tolist())) for s in shapes)
            raise ValueError(f"gather needs the same shape on every rank, got {found}")
        parts = [torch.empty_like(t) for _ in range(world)]  # world x (B, ...)
        dist.all_gather(parts, t.contiguous())
        ctx.rows = slice(rank * t.shape[0], (rank + 1) * t.shape[0])
        return torch.cat(parts)  # (world * B, ...), rank order

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computes the same global loss L on the gathered batch, but only its own
        # rows are connected to its graph. Summing the gathered gradient dL/dG (world * B, ...)
        # over ranks gives rank r's rows N * dL/de_r (N = world size); DDP then averages
        # parameter gradients over the N ranks: (1/N) sum_r N * dL/de_r * de_r/dθ = dL/dθ,
        # exactly the gradient of one process on the global batch. (all_reduce, not
        # reduce_scatter: gloo has no reduce_scatter.) The clone keeps autograd's buffer intact.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows]  # (B, ...)


class DistributedStrategy(Strategy):
    """One of `WORLD_SIZE` processes started by torchrun; device cuda:LOCAL_RANK or cpu.

    `device_type` is "auto", "cuda" or "cpu" (a device index is ignored: each process
    uses cuda:LOCAL_RANK). The backend is nccl on CUDA, gloo on the CPU.
    """

    distributed = True

    def __init__(self, device_type: str = "auto") -> None:
        kind = resolve_device(device_type).type  # "auto" -> cuda when available, else cpu
        if kind not in ("cuda", "cpu"):
            raise ConfigError(f"distributed training runs on cuda or cpu, not {device_type!r}")
        try:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise ConfigError(f"LOCAL_RANK: {exc}") from exc
        device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
        if kind == "cuda":
            torch.cuda.set_device(device)  # nccl and new CUDA tensors use this GPU
        if not dist.is_initialized():
            # env:// reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (set by torchrun)
            dist.init_process_group("nccl" if kind == "cuda" else "gloo")
            # left at exit rather than after each run: a group destroyed and initialised
            # again in one process fails now and then (gloo reads a stale peer address)
            atexit.register(self.shutdown)
        super().__init__(device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = local_rank

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged over ranks).

        DDP registers only the parameters that require grad when it is built, so after
        changing `requires_grad` (head-only warm-up, frozen stages) wrap the plain module
        again and drop the old wrapper: an old wrapper fails at its next step after a
        freeze, and after an unfreeze it silently leaves the newly trainable parameters'
        gradients un-averaged. Wrapping is repeatable: a new DDP broadcasts rank 0's
        parameters and buffers (identical on all ranks anyway) and hooks the current set of
        trainable parameters; a DDP passed in is unwrapped first. A model without trainable
        parameters is returned unwrapped (DDP refuses it).

        Keep the returned wrapper referenced until backward() has run: a DDP collected
        right after its forward (`strategy.wrap(m)(x)`) removes its gradient hooks, and the
        gradients are silently not averaged.
        """
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not any(p.requires_grad for p in model.parameters()):
            return model
        # Buffers (BatchNorm statistics) keep DDP's default: rank 0's copy is broadcast at
        # wrap time and before every training forward, so ranks stay identical. The keyword
        # is left out: torch 2.14 deprecates broadcast_buffers for forward_sync_buffers,
        # which torch 2.4 lacks; both default to True.
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ...) of every rank -> (world * B, ...) in rank order; gradients flow back.

        Every rank must pass the same shape (ValueError on all ranks otherwise).
        """
        return _GatherRows.apply(t)

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average over ranks in place; several tensors travel in one flat buffer.

        For learned loss parameters (proxies): every rank already has dL/dp of the same
        global loss, and averaging keeps them bit-identical despite nondeterministic kernels.
        """
        if not tensors:
            return
        if len(tensors) == 1 and tensors[0].is_contiguous():
            dist.all_reduce(tensors[0], op=dist.ReduceOp.SUM)
            tensors[0].div_(self.world_size)
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])  # (sum of numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(part.view_as(t))

    def reduce_mean(self, value: float) -> float:
        """The mean of `value` over ranks (float64)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world_size

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (pickled), on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers to every rank, in place.

        DDP broadcasts buffers at the start of each training forward, after which each rank
        updates its BatchNorm statistics from its own batch: call this before sharded
        evaluation so that every rank embeds with the same model.
        """
        if isinstance(model, DistributedDataParallel):
            model = model.module
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        """Wait until every rank is here."""
        dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def shutdown(self) -> None:
        """Destroy the default process group (once; also done at exit when this strategy
        initialised it)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        """Rows (n_r, ...) of `shard(n)` on each rank -> all rows (n, ...) in item order.

        Later ranks may hold one row fewer; rows are padded to equal length for the
        collective, then interleaved back (item i came from rank i % world_size).
        """
        world = self.world_size
        count = torch.tensor([len(array)], dtype=torch.int64, device=self.device)
        counts_t = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts_t, count)
        counts = [int(c.item()) for c in counts_t]  # (world,) rows per rank
        n = sum(counts)
        expected = [len(range(r, n, world)) for r in range(world)]
        if counts != expected:
            raise ValueError(f"gather_rows needs the rows of shard({n}): {expected}, got {counts}")
        out = np.empty((n, *array.shape[1:]), dtype=array.dtype)
        if n == 0:
            return out
        padded = np.zeros((counts[0], *array.shape[1:]), dtype=array.dtype)  # rank 0 has most
        padded[: len(array)] = array
        local = torch.from_numpy(padded).to(self.device)
        parts = [torch.empty_like(local) for _ in range(world)]  # world x (max n_r, ...)
        dist.all_gather(parts, local)
        for r, part in enumerate(parts):
            out[r::world] = part[: counts[r]].cpu().numpy()
        return out


def strategy_from_env(device: str = "auto") -> Strategy:
    """DistributedStrategy under torchrun (WORLD_SIZE > 1), else one process on `device`."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE: {exc}") from exc
    if world_size > 1:
        return DistributedStrategy(device)
    return Strategy(resolve_device(device))


def is_main_process() -> bool:
    """Whether this process prints (rank 0 under torchrun, or not under torchrun), from the
    environment alone: also for messages before or without a process group."""
    return os.environ.get("RANK", "0") == "0"


def check_world_size(batches_per_epoch: int, world_size: int) -> None:
    """ConfigError when there are more ranks than P x K batches per epoch."""
    if world_size > batches_per_epoch:
        raise ConfigError(
            f"torchrun world size {world_size} but the training set makes only "
            f"{batches_per_epoch} P x K batches per epoch (sampler.classes_per_batch x "
            f"sampler.images_per_class); use at most {batches_per_epoch} processes or "
            "smaller batches"
        )
