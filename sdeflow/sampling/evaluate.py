"""Network evaluation for the samplers: NFE counted by wrapping the network, and (eps_hat, x0_hat) at a grid point.

Every sampler reaches the network through ``CountingNet``, so ``nfe`` is the number of network calls actually made
(EDM's counting: a step that reuses an evaluation, or a final step to sigma = 0 that needs none, costs nothing).

At a point of the discrete DDPM schedule the network is called with the integer timestep itself and its output is
converted with that point's alpha = sqrt(abar_i), sigma = sqrt(1 - abar_i) - exactly what DDPM/DDIM implementations
do. At a continuous point the ``ScoreModel`` does the conversion with alpha(t), sigma(t) (equal to the grid's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..parametrization import DDPMTimesteps, ScoreModel
from .grids import GridPoint

__all__ = ["CountingNet", "Denoiser", "counted"]


class CountingNet:
    """Wraps ``net(x, label)``; ``calls`` counts evaluations and ``on_call()`` is called after counting each one."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], on_call: Callable[[], None] | None = None) -> None:
        self.net = net
        self.calls = 0
        self.on_call = on_call

    def __call__(self, x: Tensor, label: Tensor) -> Tensor:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return self.net(x, label)


def counted(model: ScoreModel, on_call: Callable[[], None] | None = None) -> tuple[ScoreModel, CountingNet]:
    """A copy of ``model`` whose network calls are counted (the network itself is shared, not copied)."""
    counter = CountingNet(model.net, on_call)
    wrapped = ScoreModel(counter, model.sde, model.prediction, model.time_label, model.t_min)
    return wrapped, counter


class Denoiser:
    """(eps_hat, x0_hat) and the score at a grid point, from one network call each."""

    def __init__(self, model: ScoreModel, counter: CountingNet) -> None:
        self.model = model
        self.counter = counter

    @property
    def nfe(self) -> int:
        return self.counter.calls

    def __call__(self, x: Tensor, p: GridPoint) -> tuple[Tensor, Tensor]:
        """Return (eps_hat, x0_hat) with x = alpha x0_hat + sigma eps_hat at point ``p`` (sigma > 0)."""
        a, s = p.alpha, p.sigma
        m = self.model
        if p.timestep is not None and isinstance(m.time_label, DDPMTimesteps):
            out = self._discrete_net(x, p.timestep)
            pred = m.prediction
            if pred == "eps":
                return out, (x - s * out) / a
            if pred == "x0":
                return (x - a * out) / s, out
            if pred == "v":
                n = a * a + s * s
                return (a * out + s * x) / n, (a * x - s * out) / n
            return -s * out, (x + s * s * out) / a
        t = torch.full((x.shape[0],), p.t, dtype=x.dtype, device=x.device)
        if m.prediction == "x0":
            x0 = m.x0(x, t)
            return (x - a * x0) / s, x0
        eps = m.eps(x, t)
        return eps, (x - s * eps) / a

    def score(self, x: Tensor, p: GridPoint) -> Tensor:
        """s(x, t) = -eps_hat / sigma."""
        eps, _ = self(x, p)
        return -eps / p.sigma

    def _discrete_net(self, x: Tensor, timestep: int) -> Tensor:
        label_dtype = torch.long if self.model.time_label.integer else x.dtype
        label = torch.full((x.shape[0],), timestep, dtype=label_dtype, device=x.device)
        out = self.model.net(x, label)
        if out.shape != x.shape:
            raise ValueError(
                f"The network returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; a score network "
                "must return a tensor of the input's shape."
            )
        return out
