"""Time grids for the samplers: continuous grids in t and the discrete DDPM timestep spacings.

A grid is a decreasing sequence of S + 1 points p_0 > p_1 > ... > p_S (S = ``steps``), each with its time t,
alpha(t), sigma(t) and, on the discrete DDPM schedule, its integer timestep. Samplers step p_k -> p_{k+1}.

Continuous kinds on [eps, T] (k = 0..S, u = k / S):
    'uniform'    t_k = T + u (eps - T)
    'quadratic'  t_k = eps + (T - eps) (1 - u)^2                      (DDIM paper's quadratic: dense near eps)
    'logsnr'     lambda_k = lambda(T) + u (lambda(eps) - lambda(T)),  t_k = t(lambda_k)      (DPM-Solver)
    'karras'     s_k = (s_max^(1/rho) + u (s_min^(1/rho) - s_max^(1/rho)))^rho with s = sigma/alpha = e^-lambda
                 (Karras et al. 2022, rho = 7), t_k = t(-log s_k)
Discrete DDPM spacings (N training timesteps, S sampling steps; MATH.md section 4, diffusers' DDIMScheduler):
    'leading'    arange(0, S) * (N // S), reversed           (+ steps_offset)
    'trailing'   round(arange(N, 0, -N / S)) - 1
    'linspace'   round(linspace(0, N - 1, S)), reversed
followed by the final point: abar = 1 (``set_alpha_to_one=True``: sigma = 0, the sample is the denoised x0_hat)
or abar_0 (timestep 0). Timestep i is continuous time t = (i + 1) / N and alpha = sqrt(abar_i),
sigma = sqrt(1 - abar_i). With ``set_alpha_to_one=True`` a continuous grid likewise ends with a jump from its S
points on [eps, T] to t = 0 (sigma = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..sde import SDE, VPSDE

__all__ = ["TimeGrid", "GridPoint", "time_grid", "ddpm_timesteps", "CONTINUOUS_GRIDS", "DISCRETE_SPACINGS"]

CONTINUOUS_GRIDS: tuple[str, ...] = ("uniform", "quadratic", "logsnr", "karras")
DISCRETE_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: its time t, alpha, sigma, log-SNR lambda = log(alpha/sigma) (+inf where sigma = 0) and
    DDPM ``timestep`` (None on continuous grids and for the final abar = 1 point)."""

    t: float
    alpha: float
    sigma: float
    lam: float
    timestep: int | None


@dataclass(frozen=True)
class TimeGrid:
    """S + 1 decreasing points (float64 tensors of shape [S + 1]) and how they were made."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    timesteps: Tensor | None  # int64 [S + 1], -1 marks the final abar = 1 point; None for continuous grids
    kind: str

    @property
    def steps(self) -> int:
        return int(self.t.shape[0]) - 1

    def point(self, k: int) -> GridPoint:
        a, s = float(self.alpha[k]), float(self.sigma[k])
        lam = float("inf") if s == 0 else float(np.log(a) - np.log(s))
        ts = None
        if self.timesteps is not None and int(self.timesteps[k]) >= 0:
            ts = int(self.timesteps[k])
        return GridPoint(t=float(self.t[k]), alpha=a, sigma=s, lam=lam, timestep=ts)


def ddpm_timesteps(N: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:  # noqa: N803
    """The S = ``steps`` decreasing DDPM timesteps of a spacing (see the module docstring), as int64 [S]."""
    if spacing not in DISCRETE_SPACINGS:
        raise ValueError(f"Invalid spacing {spacing!r}. Must be one of {DISCRETE_SPACINGS}.")
    if not 1 <= steps <= N:
        raise ValueError(f"`steps` must lie in [1, N] = [1, {N}] on the discrete schedule; got {steps}.")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (N // steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(N, 0, -N / steps)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, N - 1, steps).round()[::-1].astype(np.int64)
    if ts.max() > N - 1 or ts.min() < 0:
        raise ValueError(f"`steps_offset` {steps_offset} moves timesteps outside [0, {N - 1}].")
    return torch.from_numpy(ts.copy())


def _discrete_grid(sde: SDE, N: int, steps: int, spacing: str, set_alpha_to_one: bool, steps_offset: int) -> TimeGrid:  # noqa: N803
    if not isinstance(sde, VPSDE):
        raise ValueError(
            f"The discrete spacing {spacing!r} needs the DDPM schedule of a VPSDE; got {sde!r}. "
            f"Use a continuous grid {CONTINUOUS_GRIDS}."
        )
    abar = sde.discrete(N).alphas_cumprod
    ts = ddpm_timesteps(N, steps, spacing, steps_offset)
    final = -1 if set_alpha_to_one else 0
    timesteps = torch.cat([ts, torch.tensor([final])])
    ab = torch.where(timesteps >= 0, abar[timesteps.clamp(min=0)], torch.ones((), dtype=torch.float64))
    t = torch.where(timesteps >= 0, (timesteps + 1).double() / N, torch.zeros((), dtype=torch.float64))
    return TimeGrid(t=t, alpha=ab.sqrt(), sigma=(1 - ab).sqrt(), timesteps=timesteps, kind=spacing)


def _continuous_times(sde: SDE, n: int, kind: str, eps: float, rho: float) -> Tensor:
    T = sde.T  # noqa: N806
    u = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    ends = torch.tensor([T, eps], dtype=torch.float64)
    if kind == "uniform":
        t = T + u * (eps - T)
    elif kind == "quadratic":
        t = eps + (T - eps) * (1 - u) ** 2
    elif kind == "logsnr":
        lam = sde.log_snr(ends)
        t = sde.t_from_log_snr(lam[0] + u * (lam[1] - lam[0]))
    else:
        s_max, s_min = torch.exp(-sde.log_snr(ends))
        s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = sde.t_from_log_snr(-torch.log(s))
    t[0] = T  # pin the ends exactly (the inverse maps round)
    if n > 1:
        t[-1] = eps
    return t


def _from_times(sde: SDE, t: Tensor, kind: str) -> TimeGrid:
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    sigma = torch.where(t == 0, torch.zeros_like(sigma), sigma)
    return TimeGrid(t=t, alpha=alpha, sigma=sigma, timesteps=None, kind=kind)


def check_times(sde: SDE, times: Tensor | list[float]) -> Tensor:
    """Validate a user grid: 1-D, at least 2 points, strictly decreasing, inside [0, T]; float64 copy."""
    t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().clone()
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(f"`grid` must be a 1-D tensor of at least 2 times; got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all() or not bool((t[1:] < t[:-1]).all()):
        raise ValueError(
            "`grid` must be strictly decreasing (from T towards eps), i.e. monotone; got "
            f"{t.tolist()[:8]}{'...' if t.shape[0] > 8 else ''}. Sort it with grid.sort(descending=True)."
        )
    if t[0] > sde.T * (1 + 1e-9) or t[-1] < 0:
        raise ValueError(f"`grid` times must lie in [0, T] = [0, {sde.T}]; got [{t[-1]:.6g}, {t[0]:.6g}].")
    return t


def time_grid(
    sde: SDE,
    steps: int,
    kind: str | Tensor = "uniform",
    *,
    eps: float = 1e-3,
    rho: float = 7.0,
    set_alpha_to_one: bool = False,
    N: int = 1000,  # noqa: N803
    steps_offset: int = 0,
) -> TimeGrid:
    """Build the S = ``steps`` step grid of ``kind`` (a name from the module docstring, or a decreasing tensor of
    times, in which case ``steps`` is ignored)."""
    if isinstance(kind, (Tensor, list, tuple)):
        return _from_times(sde, check_times(sde, kind), "custom")
    if kind in DISCRETE_SPACINGS:
        return _discrete_grid(sde, N, steps, kind, set_alpha_to_one, steps_offset)
    if kind not in CONTINUOUS_GRIDS:
        raise ValueError(
            f"Invalid grid {kind!r}. Must be one of {CONTINUOUS_GRIDS + DISCRETE_SPACINGS} or a decreasing tensor."
        )
    if not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps}.")
    if kind == "karras" and not rho > 0:
        raise ValueError(f"`rho` must be > 0; got {rho}.")
    if set_alpha_to_one:
        t = torch.cat([_continuous_times(sde, steps, kind, eps, rho), torch.zeros(1, dtype=torch.float64)])
    else:
        t = _continuous_times(sde, steps + 1, kind, eps, rho)
    return _from_times(sde, t, kind)
