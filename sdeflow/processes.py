"""The forward SDE and reverse-time SDE as torchsde modules, the probability-flow ODE as a torchdiffeq module.

    reverse SDE:  dx = [f(x,t) - g(t)^2 s(x,t)] dt + g(t) dw_bar        (t runs from T down to eps)
    PF-ODE:       dx/dt = F(x,t) = f(x,t) - 1/2 g(t)^2 s(x,t)             (same marginals p_t as the SDE)

torchsde integrates forward in time only, so ``ReverseSDE`` works in s = T - t: y(s) = x(T - s) solves
    dy = -[f(y, T-s) - g(T-s)^2 s(y, T-s)] ds + g(T-s) dW_s.
torchsde states are 2-D (batch, D): the modules take ``sample_shape`` and reshape at the boundary, so score
networks always see [B, *sample_shape]. torchdiffeq accepts any shape and decreasing time directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._utils import append_dims, batch_time
from .parametrization import ScoreModel, as_score_model
from .sde import SDE

__all__ = ["ForwardSDE", "ReverseSDE", "ProbabilityFlowODE"]


def _sample_shape(sample_shape: tuple[int, ...] | torch.Size | None) -> tuple[int, ...] | None:
    if sample_shape is None:
        return None
    shape = tuple(int(s) for s in sample_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"`sample_shape` must be a non-empty tuple of positive sizes, e.g. (1, 8, 8); got {shape}.")
    return shape


class _TorchsdeModule(nn.Module):
    """Shared torchsde plumbing: Ito, diagonal noise, 2-D states (B, D) reshaped to [B, *sample_shape]."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde: SDE, sample_shape: tuple[int, ...] | torch.Size | None = None) -> None:
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be an sdeflow SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}.")
        self.sde = sde
        self.sample_shape = _sample_shape(sample_shape)

    def _unflatten(self, y: Tensor) -> Tensor:
        if y.ndim != 2:
            raise ValueError(
                f"torchsde states must be 2-D (batch, D); got shape {tuple(y.shape)}. Flatten with x.flatten(1)."
            )
        if self.sample_shape is None:
            return y
        if math.prod(self.sample_shape) != y.shape[1]:
            raise ValueError(
                f"State of width {y.shape[1]} does not match sample_shape {self.sample_shape} "
                f"({math.prod(self.sample_shape)} values)."
            )
        return y.reshape(y.shape[0], *self.sample_shape)


class ForwardSDE(_TorchsdeModule):
    """The forward SDE dx = f(t) x dt + g(t) dw as a torchsde module in t (for simulation and tests)."""

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.drift_coef(batch_time(t, y)).unsqueeze(1) * y

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.diffusion(batch_time(t, y)).unsqueeze(1).expand_as(y)


class ReverseSDE(_TorchsdeModule):
    """The reverse-time SDE as a torchsde module in s = T - t, with an NFE counter.

    Integrate with ``torchsde.sdeint(rsde, x_T.flatten(1), rsde.s_of_t(ts))`` for t-grid ``ts`` decreasing from T to
    eps, and reshape the result with ``rsde.unflatten``. Every method of torchsde for Ito diagonal noise applies
    ('euler', 'milstein', 'srk'), with fixed ``dt`` or ``adaptive=True``.
    """

    def __init__(
        self,
        sde: SDE,
        score: ScoreModel | Callable[[Tensor, Tensor], Tensor],
        sample_shape: tuple[int, ...] | torch.Size | None = None,
    ) -> None:
        super().__init__(sde, sample_shape)
        self.score = as_score_model(score, sde)
        self.nfe = 0

    def s_of_t(self, t: Tensor) -> Tensor:
        """Map model time t to solver time s = T - t."""
        return self.sde.T - t

    def unflatten(self, y: Tensor) -> Tensor:
        """Restore [..., B, D] solver output to [..., B, *sample_shape]."""
        if self.sample_shape is None:
            return y
        return y.reshape(*y.shape[:-1], *self.sample_shape)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        x = self._unflatten(y)
        t = batch_time(self.sde.T - s, y)
        self.nfe += 1
        score = self.score.score(x, t).reshape_as(y)
        # -[f(y, T-s) - g^2 s(y, T-s)]
        return -(self.sde.drift_coef(t).unsqueeze(1) * y - self.sde.g2(t).unsqueeze(1) * score)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        t = batch_time(self.sde.T - s, y)
        return self.sde.diffusion(t).unsqueeze(1).expand_as(y)


class ProbabilityFlowODE(nn.Module):
    """The probability-flow ODE dx/dt = f(x,t) - 1/2 g(t)^2 s(x,t) as a torchdiffeq module ``forward(t, x)``.

    Works for any state shape [B, ...] and for decreasing or increasing time grids; ``nfe`` counts score
    evaluations (reset it with ``ode.nfe = 0``).
    """

    def __init__(self, sde: SDE, score: ScoreModel | Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be an sdeflow SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}.")
        self.sde = sde
        self.score = as_score_model(score, sde)
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tb = batch_time(t, x)
        self.nfe += 1
        f = append_dims(self.sde.drift_coef(tb), x.ndim)
        g2 = append_dims(self.sde.g2(tb), x.ndim)
        return f * x - 0.5 * g2 * self.score.score(x, tb)
