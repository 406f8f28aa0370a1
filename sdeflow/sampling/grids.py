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

__all__ = [
    "TimeGrid",
    "GridPoint",
    "time_grid",
    "ddpm_timesteps",
    "CONTINUOUS_GRIDS",
    "DISCRETE_SPACINGS",
    "Grid",
    "Uniform",
    "Quadratic",
    "LogSNR",
    "Karras",
    "DDPMSpacing",
    "Timesteps",
    "Times",
]

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


def ddpm_timesteps(N: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
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


def _discrete_grid(sde: SDE, N: int, steps: int, spacing: str, set_alpha_to_one: bool, steps_offset: int) -> TimeGrid:
    return _discrete_from(sde, N, ddpm_timesteps(N, steps, spacing, steps_offset), set_alpha_to_one, spacing)


def _discrete_from(sde: SDE, N: int, ts: Tensor, set_alpha_to_one: bool, kind: str) -> TimeGrid:
    """The grid of the DDPM timesteps ``ts`` plus the final point (abar = 1, or timestep 0)."""
    if not isinstance(sde, VPSDE):
        raise ValueError(
            f"The discrete grid {kind!r} needs the DDPM schedule of a VPSDE; got {sde!r}. "
            f"Use a continuous grid {CONTINUOUS_GRIDS}."
        )
    abar = sde.discrete(N).alphas_cumprod
    final = -1 if set_alpha_to_one else 0
    timesteps = torch.cat([ts, torch.tensor([final])])
    ab = torch.where(timesteps >= 0, abar[timesteps.clamp(min=0)], torch.ones((), dtype=torch.float64))
    t = torch.where(timesteps >= 0, (timesteps + 1).double() / N, torch.zeros((), dtype=torch.float64))
    return TimeGrid(t=t, alpha=ab.sqrt(), sigma=(1 - ab).sqrt(), timesteps=timesteps, kind=kind)


def _continuous_times(sde: SDE, n: int, kind: str, eps: float, rho: float) -> Tensor:
    T = sde.T
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
    N: int = 1000,
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


# ----------------------------------------------------------------------------------------------------------------
# Typed grids: what users pass as ``grid=``. Each builds a ``TimeGrid`` for an SDE and a number of steps.


class Grid:
    """A time-grid recipe; ``build(sde, steps, eps=, set_alpha_to_one=, N=)`` returns the ``TimeGrid``."""

    name: str = ""

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        raise NotImplementedError

    @property
    def discrete(self) -> bool:
        """True for grids on the discrete DDPM schedule (integer timesteps)."""
        return False

    def config(self) -> dict:
        return {"type": self.name}


@dataclass(frozen=True)
class Uniform(Grid):
    """t_k = T + k/S (eps - T)."""

    name = "uniform"

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        return time_grid(sde, steps, self.name, eps=eps, set_alpha_to_one=set_alpha_to_one)


@dataclass(frozen=True)
class Quadratic(Uniform):
    """t_k = eps + (T - eps) (1 - k/S)^2 (the DDIM paper's quadratic grid, dense near eps)."""

    name = "quadratic"


@dataclass(frozen=True)
class LogSNR(Uniform):
    """Uniform in lambda = log(alpha/sigma) (DPM-Solver's grid)."""

    name = "logsnr"


@dataclass(frozen=True)
class Karras(Grid):
    """rho_k = (rho_max^(1/r) + k/S (rho_min^(1/r) - rho_max^(1/r)))^r in rho = sigma/alpha (Karras et al. 2022)."""

    rho: float = 7.0
    name = "karras"

    def __post_init__(self) -> None:
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not 0 < float(self.rho) < 1e6:
            raise ValueError(f"Karras: `rho` must be a number > 0 (7 is usual); got {self.rho!r}.")

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        return time_grid(sde, steps, "karras", eps=eps, rho=float(self.rho), set_alpha_to_one=set_alpha_to_one)

    def config(self) -> dict:
        return {"type": self.name, "rho": float(self.rho)}


@dataclass(frozen=True)
class DDPMSpacing(Grid):
    """The DDPM timestep spacings of diffusers' DDIMScheduler: 'leading' (+ ``offset``), 'trailing', 'linspace'."""

    spacing: str = "leading"
    offset: int = 0

    def __post_init__(self) -> None:
        if self.spacing not in DISCRETE_SPACINGS:
            raise ValueError(f"Invalid spacing {self.spacing!r}. Must be one of {DISCRETE_SPACINGS}.")
        if self.offset and self.spacing != "leading":
            raise ValueError(f"`offset` (steps_offset) applies to the 'leading' spacing only; got {self.spacing!r}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.spacing

    @property
    def discrete(self) -> bool:
        return True

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        return _discrete_grid(sde, N, steps, self.spacing, set_alpha_to_one, int(self.offset))

    def config(self) -> dict:
        return {"type": self.spacing, "offset": int(self.offset)}


@dataclass(frozen=True)
class Timesteps(Grid):
    """Explicit decreasing integer DDPM timesteps (e.g. any diffusers scheduler's ``timesteps`` array), followed by
    the final point abar = 1 (``set_alpha_to_one``) or timestep 0."""

    timesteps: tuple[int, ...] = ()
    name = "timesteps"

    def __post_init__(self) -> None:
        ts = tuple(int(t) for t in np.asarray(self.timesteps).reshape(-1).tolist())
        if len(ts) < 1 or any(b >= a for a, b in zip(ts, ts[1:], strict=False)) or min(ts) < 0:
            raise ValueError(f"`timesteps` must be strictly decreasing integers >= 0; got {list(ts)[:8]}.")
        object.__setattr__(self, "timesteps", ts)

    @property
    def discrete(self) -> bool:
        return True

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        if max(self.timesteps) > N - 1:
            raise ValueError(f"`timesteps` must lie in [0, N - 1] = [0, {N - 1}]; got max {max(self.timesteps)}.")
        if not set_alpha_to_one and self.timesteps[-1] == 0:
            raise ValueError("`timesteps` end at 0 and the final point is timestep 0: a zero-length last step.")
        return _discrete_from(sde, N, torch.tensor(self.timesteps, dtype=torch.int64), set_alpha_to_one, "timesteps")

    def config(self) -> dict:
        return {"type": self.name, "timesteps": list(self.timesteps)}


@dataclass(frozen=True)
class Times(Grid):
    """Explicit strictly decreasing times t_0 > ... > t_S in [0, T] (t = 0 means sigma = 0: the last step then
    returns the denoised x0_hat). ``source`` records where they came from (e.g. a tuned-grid file)."""

    times: tuple[float, ...] = ()
    source: str | None = None
    name = "times"

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", tuple(float(v) for v in np.asarray(self.times, dtype=np.float64).ravel()))

    def build(self, sde: SDE, steps: int, *, eps: float, set_alpha_to_one: bool, N: int) -> TimeGrid:
        return _from_times(sde, check_times(sde, list(self.times)), "times")

    def config(self) -> dict:
        out: dict = {"type": self.name, "times": list(self.times)}
        if self.source is not None:
            out["source"] = self.source
        return out
