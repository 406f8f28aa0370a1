"""Minimal torch.distributed helpers for embarrassingly parallel evaluation (no DDP).

Launch with ``torchrun --nproc_per_node=N -m sdeflow ...``: torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT and
LOCAL_RANK. The process group uses NCCL when CUDA is available and gloo otherwise. Work is split into fixed chunks
(batches of the global index order) dealt round-robin to ranks, so a chunk is computed exactly as in a
single-process run whatever the number of processes; adaptive ODE solvers then take the same steps per chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "rank_and_world", "init_from_env", "shard", "gather_objects", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """rank, world_size and the device this process should compute on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them in the environment ((0, 1) without torchrun), without joining."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (a single process if WORLD_SIZE is unset or 1).

    ``device`` None picks cuda:LOCAL_RANK when CUDA is available, else the CPU.
    """
    rank, world = rank_and_world()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local}")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, device=dev)


def shard(n_chunks: int, ctx: DistContext) -> list[int]:
    """The chunk indices this rank computes: rank, rank + W, rank + 2W, ..."""
    return list(range(ctx.rank, n_chunks, ctx.world_size))


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj`` on every rank, in rank order (``[obj]`` in a single process)."""
    if ctx.world_size == 1 or not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
