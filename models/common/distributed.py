"""Data-parallel training under PyTorch's own launcher (``torchrun``), shared by every trainer.

A trainer runs as one process, or as one of W processes that ``torchrun`` started (on one or several nodes; the
rendezvous is torchrun's, from its environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``).
The rules every trainer follows, so that W processes with 1/W of the batch each compute the same update as one
process with the whole batch (the tests compare the loss curves of 1 and 2 processes):

* **Order**: the epoch's order is seeded from (seed, epoch) and is the same on every rank; each global batch is
  split by :func:`shard` into W contiguous parts, rank r taking part r.
* **Normalisers**: a loss that is a sum over the batch divided by a count (targets, boxes, tokens) divides by the
  GLOBAL count (:func:`global_sum` before the backward pass) times ``1 / world``, because DDP averages gradients over
  ranks: mean over ranks of (local sum / (global count / W)) = global sum / global count.
* **Side effects**: rank 0 alone writes checkpoints, best weights, metrics files and logs to MLflow
  (:func:`is_main`; :mod:`models.common.tracking` mutes itself on other ranks); :func:`barrier` after a write, so
  every rank reads the same files when it resumes. Several nodes need a shared file system for the checkpoints.
* **Backend**: gloo on CPU, NCCL on CUDA; each process takes the CUDA device ``LOCAL_RANK``.

Single-process use needs nothing: every function here is the identity (or a no-op) when ``WORLD_SIZE`` is unset.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's global rank from torchrun's environment (0 outside torchrun); no process group needed."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return env_rank() == 0


def init(device: torch.device | str = "cpu") -> Dist:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) once; single process when ``WORLD_SIZE`` <= 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def current() -> Dist:
    """The process group this process joined (:func:`init`), else the single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def device_for(spec: torch.device | str) -> torch.device:
    """Under torchrun a CUDA spec means this process's GPU (``cuda:LOCAL_RANK``); anything else as given."""
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory with a non-blocking copy on CUDA, unchanged on the CPU."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def shard(items: Sequence[T], d: Dist | None = None) -> Sequence[T]:
    """Rank r's contiguous part of one global batch (parts differ in length by at most one)."""
    d = d or current()
    if d.world == 1:
        return items
    n = len(items)
    lo, hi = n * d.rank // d.world, n * (d.rank + 1) // d.world
    return items[lo:hi]


def _comm_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, d: Dist | None = None) -> torch.Tensor:
    """``t`` summed over ranks (in place where ``t`` lives on the backend's device: CPU for gloo, CUDA for NCCL)."""
    d = d or current()
    if d.world > 1:
        import torch.distributed as dist

        comm = _comm_device()
        if t.device == comm:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            moved = t.to(comm)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved)
    return t


def global_sum(value: float | torch.Tensor, d: Dist | None = None) -> float:
    """The sum of ``value`` over all ranks (float64; the value itself for one process)."""
    d = d or current()
    if d.world == 1:
        return float(value)
    return float(all_reduce_sum(torch.tensor(float(value), dtype=torch.float64), d))


def sum_dict(values: dict[str, float], d: Dist | None = None) -> dict[str, float]:
    """Each entry summed over ranks; the keys are the union of every rank's (a key a rank lacks counts 0 there,
    e.g. a rank that had no batch to score)."""
    d = d or current()
    if d.world == 1:
        return dict(values)
    keys = sorted(set().union(*gather_objects(sorted(values), d)))
    t = all_reduce_sum(torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64), d)
    return dict(zip(keys, t.tolist()))


def gather_objects(obj: T, d: Dist | None = None) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    d = d or current()
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist | None = None) -> None:
    d = d or current()
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: torch.nn.Module, d: Dist | None = None, **kwargs) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` under torchrun (rank 0's weights are broadcast to all), else ``model``."""
    d = d or current()
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


def no_sync(model: torch.nn.Module, last: bool):
    """DDP's ``no_sync()`` for every micro-batch but the last of an accumulated step (gradients all-reduced once)."""
    if last or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
