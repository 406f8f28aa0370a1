"""Samplers backed by general-purpose integrators: the reverse SDE with torchsde, the probability-flow ODE with
torchdiffeq. NFE is counted by the ``CountingNet`` that wraps the network.

Every torchsde method applies to the reverse SDE: its noise g(t) dw does not depend on x (additive noise), so the
Ito and Stratonovich forms of the SDE coincide and the Stratonovich methods ('midpoint', 'heun', 'euler_heun',
'reversible_heun', 'log_ode') integrate the same equation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torchdiffeq
import torchsde
from torch import Tensor
from torchsde import BaseBrownian, BrownianInterval

from ..parametrization import ScoreModel
from ..processes import ProbabilityFlowODE, ReverseSDE
from ..sde import SDE
from .methods import Sampler
from .noise import STREAM_SALT, NoiseSource

__all__ = [
    "ODESolver",
    "SDESolver",
    "SDE_SOLVERS",
    "ODE_SOLVERS",
    "FIXED_ODE_SOLVERS",
    "ADAPTIVE_ODE_SOLVERS",
    "solve_reverse_sde",
    "solve_pf_ode",
    "GridBrownian",
]

ITO_SOLVERS: tuple[str, ...] = ("euler", "milstein", "srk")
STRATONOVICH_SOLVERS: tuple[str, ...] = ("midpoint", "heun", "euler_heun", "reversible_heun", "log_ode")
SDE_SOLVERS: tuple[str, ...] = ITO_SOLVERS + STRATONOVICH_SOLVERS
FIXED_ODE_SOLVERS: tuple[str, ...] = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
)
ADAPTIVE_ODE_SOLVERS: tuple[str, ...] = (
    "dopri8",
    "dopri5",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
    "scipy_solver",
)
ODE_SOLVERS: tuple[str, ...] = ADAPTIVE_ODE_SOLVERS + FIXED_ODE_SOLVERS
# Adams methods in torchdiffeq use constant-step coefficients: on a non-uniform grid they lose their order (measured:
# order 2 instead of 4 on the quadratic grid; explicit_adams, up to order 11 by default, diverges at 20 NFE).
ADAMS_SOLVERS: tuple[str, ...] = ("explicit_adams", "implicit_adams", "fixed_adams")
# Network evaluations per step of the fixed-step methods (Adams: one new evaluation per step after its start).
ODE_EVALS_PER_STEP: dict[str, int] = {
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 1,
    "implicit_adams": 1,
    "fixed_adams": 1,
}
_LEVY = {"srk": "space-time", "log_ode": "foster"}


def _tol(name: str, value: float | None, owner: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) < 1):
        raise ValueError(f"{owner}: `{name}` must be a number in (0, 1) (e.g. 1e-5); got {value!r}.")


@dataclass(frozen=True)
class ODESolver(Sampler):
    """A torchdiffeq ``method`` on the probability-flow ODE: adaptive methods (``ADAPTIVE_ODE_SOLVERS``) with
    ``rtol``/``atol`` (default 1e-5) between T and eps; fixed-step methods (``FIXED_ODE_SOLVERS``) on the time grid.
    ``options`` go to torchdiffeq for adaptive methods (e.g. ``max_num_steps``); fixed-step methods take their steps
    from the grid. The Adams methods assume equal steps and are refused on other grids than 'uniform'."""

    method: str = "dopri5"
    rtol: float | None = None
    atol: float | None = None
    options: dict | None = None  # torchdiffeq's options (Sampler.config() reports them)
    name: ClassVar[str] = "ode"

    def __post_init__(self) -> None:
        if self.method not in ODE_SOLVERS:
            raise ValueError(f"Invalid torchdiffeq method {self.method!r} for ODESolver. Must be one of {ODE_SOLVERS}.")
        _tol("rtol", self.rtol, "ODESolver")
        _tol("atol", self.atol, "ODESolver")
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"ODESolver: `options` must be a dict; got {type(self.options).__name__}.")
        if not self.adaptive:
            for name in ("rtol", "atol", "options"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"ODESolver: `{name}` does not apply to the fixed-step method {self.method!r}: its steps are "
                        f"the grid's (set them with `steps` and `grid`); adaptive methods: {ADAPTIVE_ODE_SOLVERS}."
                    )

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_ODE_SOLVERS

    @property
    def evals_per_step(self) -> int:
        return ODE_EVALS_PER_STEP.get(self.method, 1)

    def tolerances(self) -> tuple[float, float]:
        return (self.rtol if self.rtol is not None else 1e-5, self.atol if self.atol is not None else 1e-5)


@dataclass(frozen=True)
class SDESolver(Sampler):
    """A torchsde ``method`` on the reverse SDE in s = T - t: fixed dt = (T - eps) / steps with per-sample noise, or
    ``adaptive`` with ``rtol``/``atol`` (default 1e-5)."""

    method: str = "euler"
    adaptive: bool = False
    rtol: float | None = None
    atol: float | None = None
    name: ClassVar[str] = "sde"
    deterministic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.method not in SDE_SOLVERS:
            raise ValueError(f"Invalid torchsde method {self.method!r} for SDESolver. Must be one of {SDE_SOLVERS}.")
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"SDESolver: `adaptive` must be True or False; got {self.adaptive!r}.")
        _tol("rtol", self.rtol, "SDESolver")
        _tol("atol", self.atol, "SDESolver")
        if not self.adaptive and (self.rtol is not None or self.atol is not None):
            raise ValueError("SDESolver: `rtol`/`atol` apply with adaptive=True only (fixed steps: set `steps`).")

    @property
    def evals_per_step(self) -> int:
        return 2 if self.method in ("srk", "heun", "midpoint", "log_ode") else 1

    def tolerances(self) -> tuple[float, float]:
        return (self.rtol if self.rtol is not None else 1e-5, self.atol if self.atol is not None else 1e-5)


class GridBrownian(BaseBrownian):
    """Brownian increments on the fixed-dt grid of a torchsde solve, drawn per sample from a ``NoiseSource``.

    Every fixed-step torchsde method queries bm(t_k, t_{k+1}) on its own grid, so the increments can come from the
    per-sample noise streams that make a seeded sample independent of its batch:
        W = sqrt(h) z1,   H = sqrt(h / 12) z2  (space-time Levy area, for 'srk'; U = h (W / 2 + H) as in torchsde),
    and the Levy area A (for 'log_ode') is returned as zero: it multiplies Lie brackets of the diffusion
    vector fields, which vanish for the reverse SDE's additive noise.
    """

    def __init__(self, s0: float, dt: float, source: NoiseSource, width: int, levy: str) -> None:
        self._s0, self._dt, self._source, self._levy = s0, dt, source, levy
        self._shape = (len(source.seeds), width)
        self._k = -1
        self._cache: tuple[Tensor, Tensor | None] | None = None

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None:
            raise RuntimeError("GridBrownian answers interval queries bm(ta, tb) only.")
        ta, tb = float(ta), float(tb)
        h = tb - ta
        k = round((ta - self._s0) / self._dt)
        if k == self._k + 1:
            z = self._source().reshape(self._shape)
            w = math.sqrt(h) * z
            hh = math.sqrt(h / 12) * self._source().reshape(self._shape) if self._levy == "space-time" else None
            self._k, self._cache = k, (w, hh)
        elif k != self._k:
            raise RuntimeError(f"GridBrownian: query [{ta}, {tb}] is off the fixed-dt grid (step {k}).")
        assert self._cache is not None  # step k was drawn above
        w, hh = self._cache
        out = [w]
        if return_U:
            assert hh is not None  # U is asked for by the methods that use space-time Levy area only
            out.append(h * (0.5 * w + hh))
        if return_A:
            out.append(torch.zeros(*self._shape, self._shape[1], dtype=w.dtype, device=w.device))
        return w if len(out) == 1 else tuple(out)

    def __repr__(self) -> str:
        return f"GridBrownian(batch={self._shape[0]}, width={self._shape[1]}, dt={self._dt})"

    @property
    def dtype(self) -> torch.dtype:
        return self._source.dtype

    @property
    def device(self) -> torch.device:
        return self._source.device

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def levy_area_approximation(self) -> str:
        return self._levy


class _ReverseSDE(ReverseSDE):
    """``ReverseSDE`` whose first drift evaluation is remembered until the next call.

    torchsde's ``check_contract`` evaluates the drift once at (s0, y0) to check its shape, and most methods' first step
    evaluates it again at the same point. The remembered value answers that repeat, so the solver always sees the
    true drift and the network runs once per distinct point; a method whose first step evaluates elsewhere simply
    leaves the shape check's evaluation counted (it was made). The SDE type is chosen per method (additive noise:
    same SDE).
    """

    def __init__(self, sde: SDE, score: ScoreModel, sample_shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__(sde, score, sample_shape)
        self.sde_type = sde_type
        self._first: tuple[float, Tensor, Tensor] | None = None  # (s, y, drift) of the first call
        self._calls = 0

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        self._calls += 1
        first, self._first = self._first, None
        if first is not None and first[1] is y and first[0] == float(s):
            return first[2]
        drift = super().f(s, y)
        if self._calls == 1:
            self._first = (float(s), y, drift)
        return drift


def solve_reverse_sde(
    score: ScoreModel,
    sde: SDE,
    x_T: Tensor,
    *,
    solver: str,
    eps: float,
    steps: int,
    adaptive: bool,
    rtol: float,
    atol: float,
    seeds: list[int],
    source: NoiseSource,
) -> Tensor:
    """Integrate the reverse SDE from T to eps in s = T - t: fixed dt = (T - eps) / steps with per-sample
    ``GridBrownian`` increments, or adaptive (starting from that dt) with one ``BrownianInterval`` for the batch
    (adaptive steps are chosen from the whole batch's error, so per-sample invariance is moot there)."""
    sample_shape = tuple(x_T.shape[1:])
    sde_type = "ito" if solver in ITO_SOLVERS else "stratonovich"
    rsde = _ReverseSDE(sde, score, sample_shape, sde_type)
    y0 = x_T.flatten(1)
    # float64 solver time: torchsde accumulates t += dt, and float32 sums would miss the end by a sliver step.
    ts = torch.tensor([0.0, sde.T - eps], dtype=torch.float64, device=y0.device)
    s_end = float(ts[-1])
    levy = _LEVY.get(solver, "none")
    if adaptive:
        bm = BrownianInterval(
            0.0,
            s_end,
            size=tuple(y0.shape),
            dtype=y0.dtype,
            device=y0.device,
            entropy=(seeds[0] + STREAM_SALT) % 2**31,
            levy_area_approximation=levy,
        )
    else:
        bm = GridBrownian(0.0, s_end / steps, source, y0.shape[1], levy)
    # dt a hair above the exact step, so rounding never adds a sliver of an extra step at the end.
    dt = s_end / steps * (1 + 1e-9)
    with warnings.catch_warnings():
        # torchsde warns about adaptive Euler-Maruyama for non-additive noise; this noise is additive (g(t) only).
        warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
        ys = torchsde.sdeint(rsde, y0, ts, bm=bm, method=solver, dt=dt, adaptive=adaptive, rtol=rtol, atol=atol)
    return rsde.unflatten(ys[-1])


def solve_pf_ode(
    score: ScoreModel,
    sde: SDE,
    x_T: Tensor,
    *,
    solver: str,
    times: Tensor,
    rtol: float,
    atol: float,
    options: dict | None,
) -> Tensor:
    """Integrate the PF-ODE from times[0] = T to times[-1] = eps: adaptive solvers with rtol/atol between the ends,
    fixed-step solvers exactly on the grid ``times``."""
    ode = ProbabilityFlowODE(sde, score)
    t = times.to(dtype=x_T.dtype, device=x_T.device)
    if solver in ADAPTIVE_ODE_SOLVERS:
        t = t[[0, -1]]
        out = torchdiffeq.odeint(ode, x_T, t, method=solver, rtol=rtol, atol=atol, options=options)
    else:
        out = torchdiffeq.odeint(ode, x_T, t, method=solver, options=options)
    assert isinstance(out, Tensor)  # a tensor state gives a tensor solution
    return out[-1]
