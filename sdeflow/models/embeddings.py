"""Time embeddings: the network's time label (continuous t or a DDPM timestep) -> a feature vector.

Both are plain tensor arithmetic on the label with no data-dependent control flow, so they export to ONNX.

    sinusoidal (Vaswani et al. 2017; DDPM):  e(l) = [sin(s l w_j), cos(s l w_j)]_j,  w_j = 10000^(-j / (dim/2 - 1))
    Fourier (Tancik et al. 2020; score_sde's GaussianFourierProjection):
                                               e(l) = [sin(2 pi s l W_j), cos(2 pi s l W_j)]_j,  W_j ~ N(0, scale^2)
with s = ``label_scale`` (1000 suits continuous t in [0, 1] for the sinusoidal case, 1 suits DDPM timesteps).
The Fourier frequencies W are a fixed (non-trainable) buffer drawn from a seeded generator and stored with the
weights.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "time_embedding", "class_embedding", "class_conditioned"]


class SinusoidalEmbedding(nn.Module):
    """[sin(s l w_j), cos(s l w_j)] with geometric frequencies w_j = 10000^(-j / (dim/2 - 1)), j < dim/2."""

    def __init__(self, dim: int, label_scale: float = 1.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"`dim` of a time embedding must be an even integer >= 4; got {dim}.")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs * float(label_scale), persistent=False)

    freqs: Tensor  # a buffer

    def forward(self, label: Tensor) -> Tensor:
        arg = label.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class FourierEmbedding(nn.Module):
    """[sin(2 pi s l W_j), cos(2 pi s l W_j)] with fixed random W_j ~ N(0, scale^2), j < dim/2."""

    def __init__(self, dim: int, label_scale: float = 1.0, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"`dim` of a time embedding must be an even integer >= 4; got {dim}.")
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim // 2, generator=g) * scale
        self.register_buffer("W", 2 * math.pi * w * float(label_scale))

    W: Tensor  # a buffer

    def forward(self, label: Tensor) -> Tensor:
        arg = label.to(self.W.dtype)[:, None] * self.W[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


EMBEDDINGS = ("sinusoidal", "fourier")


def time_embedding(kind: str, dim: int, label_scale: float) -> nn.Module:
    """Build the embedding named ``kind`` ('sinusoidal' or 'fourier')."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, label_scale)
    if kind == "fourier":
        return FourierEmbedding(dim, label_scale)
    raise ValueError(f"Invalid time_embedding {kind!r}. Must be one of {EMBEDDINGS}.")


def class_embedding(num_classes: int | None, dim: int) -> tuple[int | None, nn.Module | None]:
    """(K, an embedding table of K + 1 rows of size ``dim``: classes 0..K-1 and the null class K), or (None, None).

    The table is the default condition embedding; any module mapping a condition [B, ...] to [B, dim] can replace
    a network's ``cond_embed`` (docs: ``sdeflow.conditioning``)."""
    if num_classes is None:
        return None, None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer or None; got {num_classes!r}.")
    return int(num_classes), nn.Embedding(int(num_classes) + 1, dim)


def class_conditioned(net: nn.Module, emb: Tensor, cond: Tensor | None) -> Tensor:
    """emb + cond_embed(cond) for a conditional network (cond None = the null class K); ``emb`` for an unconditional
    one, which refuses a condition."""
    cond_embed = cast("nn.Module | None", net.cond_embed)
    if cond_embed is None:
        if cond is not None:
            raise ValueError("This network is unconditional (num_classes=None) but received a condition `cond`.")
        return emb
    if cond is None:  # the null class's row, broadcast (no batch-size-dependent op: traces and exports cleanly)
        return emb + cond_embed(torch.tensor([net.num_classes], device=emb.device)).to(emb.dtype)
    return emb + cond_embed(cond).to(emb.dtype)
