"""A time-conditioned residual MLP for vector data [B, D]."""

from __future__ import annotations

from torch import Tensor, nn

from .embeddings import class_conditioned, class_embedding
from .embeddings import time_embedding as make_time_embedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.lin1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.lin2(self.act(z))


class MLP(nn.Module):
    """out = W x + MLP(x, embed(label)): ``depth`` pre-norm residual blocks of ``width`` units conditioned on the time
    embedding, plus a linear skip W x from input to output.

    Args:
        dim: D, the data dimension; input and output have shape [B, D].
        width, depth: hidden width and number of residual blocks.
        time_embedding: 'sinusoidal' or 'fourier'; ``emb_dim`` its size; ``label_scale`` multiplies the label
            (1000 for continuous t in [0, 1], 1 for DDPM timesteps).
        num_classes: K for a class-conditional network ``net(x, label, cond)``: the embedding of the class
            cond in 0..K (K = no label, also used when cond is None) is added to the time embedding
            (``sdeflow.conditioning``). None: unconditional.
    """

    def __init__(
        self,
        dim: int,
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        time_embedding: str = "sinusoidal",
        label_scale: float = 1000.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("width", width), ("depth", depth)):
            if int(v) != v or v < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {v}.")
        self.sample_shape = (int(dim),)
        self.embed = nn.Sequential(
            make_time_embedding(time_embedding, emb_dim, label_scale),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        self.num_classes, self.cond_embed = class_embedding(num_classes, emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_Block(width, emb_dim) for _ in range(depth)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))
        # a linear path from input to output: without it the normalised blocks cap |out| and the network cannot
        # follow the linear growth of the score (~ -x / sigma^2) far out in the tails, where sampling trajectories
        # that start in the prior's tails then run away.
        self.skip = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, label: Tensor, cond: Tensor | None = None) -> Tensor:
        emb = class_conditioned(self, self.embed(label), cond)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h) + self.skip(x)
