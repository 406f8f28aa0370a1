"""A compact UNet for small images (8x8, 28x28, any H, W divisible by 2^(levels-1)).

Layout (DDPM-style, Ho et al. 2020, without attention): a 3x3 input convolution; per resolution level
``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, plus a projection of the time embedding added
per channel) and a stride-2 downsampling convolution; two residual blocks in the middle; the mirrored decoder with
skip connections (concatenation), nearest-neighbour upsampling and a final GroupNorm-SiLU-conv. The output
convolution starts at zero, so an untrained network predicts 0. Shapes are static and there is no data-dependent
control flow, so the network traces and exports to ONNX.

The default configuration for 8x8 images (channels 20, mults (1, 2), one block per level) has about 250k parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .embeddings import class_conditioned, class_embedding
from .embeddings import time_embedding as make_time_embedding

__all__ = ["UNet"]


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """net(x [B, C, H, W], label [B], cond [B] (class-conditional only)) -> [B, C, H, W].

    Args:
        image_size: H = W of the images (the stored sample shape is (in_channels, image_size, image_size)).
        in_channels: C.
        channels: width of the first level; level i has ``channels * mults[i]``.
        mults: channel multipliers per resolution level (len(mults) - 1 downsamplings).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        time_embedding: 'sinusoidal' or 'fourier'; ``label_scale`` multiplies the label (1000 for continuous t).
        dropout: dropout rate inside residual blocks.
        num_classes: K for a class-conditional network ``net(x, label, cond)``: the embedding of the class
            cond in 0..K (K = no label, also used when cond is None) is added to the time embedding
            (``sdeflow.conditioning``). None: unconditional.
    """

    def __init__(
        self,
        image_size: int = 8,
        in_channels: int = 1,
        channels: int = 20,
        mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        time_embedding: str = "sinusoidal",
        label_scale: float = 1000.0,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        mults = tuple(int(m) for m in mults)
        if not mults or min(mults) < 1:
            raise ValueError(f"`mults` must be a non-empty sequence of positive integers; got {mults}.")
        factor = 2 ** (len(mults) - 1)
        if image_size % factor:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by 2^(len(mults) - 1) = {factor}; use fewer levels."
            )
        self.sample_shape = (int(in_channels), int(image_size), int(image_size))
        emb_dim = 4 * channels
        self.embed = nn.Sequential(
            make_time_embedding(time_embedding, channels, label_scale),
            nn.Linear(channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.num_classes, self.cond_embed = class_embedding(num_classes, emb_dim)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]
        ch = channels
        for i, m in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(ch, channels * m, emb_dim, dropout))
                ch = channels * m
                skips.append(ch)
            if i < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, emb_dim, dropout), _ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), channels * m, emb_dim, dropout))
                ch = channels * m
            if i > 0:
                upsample = nn.Upsample(scale_factor=2, mode="nearest")
                self.up.append(nn.Sequential(upsample, nn.Conv2d(ch, ch, 3, padding=1)))
        last = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), last)

    def forward(self, x: Tensor, label: Tensor, cond: Tensor | None = None) -> Tensor:
        emb = class_conditioned(self, self.embed(label), cond)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)
