"""Many samples in fixed chunks, optionally sharded over torchrun processes (``sdeflow.distributed``).

Sample i is drawn with seed ``seed + i`` in chunk i // batch_size; chunks are dealt round-robin to ranks and
gathered on rank 0 in index order. Per-sample seeds make every sample independent of the chunk it is drawn in, so
the gathered tensor is exactly that of one process (for every fixed-grid and torchsde sampler; adaptive ODE solvers
choose steps per chunk, and PC normalises over its chunk, so those agree only with the same ``batch_size``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import distributed as D
from ..progress import Progress
from ..status import worst_status
from .api import sample

__all__ = ["sample_many"]


def sample_many(
    model: Any,
    sde: Any,
    n: int,
    sample_shape: Sequence[int],
    *,
    batch_size: int = 256,
    seed: int = 0,
    ctx: D.DistContext | None = None,
    progress: Callable[[Progress], None] | None = None,
    cond: Tensor | int | None = None,
    **sample_kwargs: Any,
) -> tuple[Tensor | None, dict]:
    """Draw samples 0..n-1 (seed + i each) in chunks of ``batch_size``: this rank's chunks, gathered on rank 0.

    Returns (samples [n, *sample_shape] on rank 0, None elsewhere; a summary with ``nfe`` (all chunks), the status and
    the world size). ``sample_kwargs`` go to ``sdeflow.sample`` (sampler, steps, grid, options...).
    ``progress`` gets ``Progress('sample', chunks done, chunks)`` (this rank's chunks). ``cond``: the class of every
    sample or one per sample ([n]; ``sdeflow.conditioning.class_labels``), sliced with the chunks (``guidance`` goes
    to ``sample``)."""
    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    if "seed" in sample_kwargs or "shape" in sample_kwargs or "x_T" in sample_kwargs:
        raise ValueError("sample_many draws x_T itself from `seed` + i; do not pass `x_T`, `shape` or a second seed.")
    ctx = ctx if ctx is not None else D.DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    chunks = math.ceil(n / batch_size)
    mine = D.shard(chunks, ctx)
    parts: list[tuple[int, Tensor, int, str]] = []
    for j, c in enumerate(mine):
        lo, hi = c * batch_size, min(n, (c + 1) * batch_size)
        part = cond[lo:hi] if isinstance(cond, Tensor) and cond.ndim == 1 else cond
        r = sample(model, sde, shape=(hi - lo, *sample_shape), seed=[seed + i for i in range(lo, hi)], cond=part,
                   **sample_kwargs)
        parts.append((c, r.samples.cpu(), r.nfe, r.status))
        if progress is not None:
            progress(Progress("sample", j + 1, len(mine)))
    gathered = D.gather_objects(parts, ctx)
    if not ctx.is_main:
        return None, {}
    flat = sorted((p for part in gathered for p in part), key=lambda p: p[0])  # type: ignore[union-attr]
    samples = torch.cat([p[1] for p in flat])
    summary = {
        "n": n,
        "chunks": chunks,
        "batch_size": batch_size,
        "nfe": sum(p[2] for p in flat),
        "status": worst_status(p[3] for p in flat),
        "world_size": ctx.world_size,
    }
    return samples, summary
