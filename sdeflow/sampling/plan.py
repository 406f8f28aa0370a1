"""Coefficient plans: a fixed-grid sampler compiled to a float64 table, and the ONE loop that executes plans.

Once its time grid is fixed, every diffusion sampler of this package is linear in the raw network outputs: the
conversion of an output ``out`` to eps_hat, x0_hat or the score is ``p x + q out`` with (p, q) fixed by the point's
(alpha, sigma) (``parametrization.output_conversion``), and each sampler's update is a linear combination of the
current sample, earlier network inputs and outputs, and a noise draw. A plan is that table, like a Butcher tableau:

    Eval(i, k, x)        x_i  = sum_r x[r] * r        out_i = net(x_i, label at grid point k)
    Update(x, noise)     x    = sum_r x[r] * r + noise * z        (z: the next standard normal draw)
    Langevin(score, snr) one Langevin corrector step (the one nonlinear op: its step size depends on norms)

over registers ``x`` (the current sample), ``("in", i)`` and ``("out", i)`` (input and output of evaluation i).
Samplers write their formulas with ``Lin`` values (linear combinations with float64 coefficients) through a
``PlanBuilder``, so the code reads like the paper while producing the table. ``run_plan`` executes any plan; the
ONNX exporter unrolls the same plan, so an exported graph equals the library by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from ..parametrization import output_conversion
from ..progress import Progress
from .grids import GridPoint, TimeGrid

__all__ = ["Lin", "Eval", "Update", "Langevin", "Plan", "PlanBuilder", "Evaluation", "run_plan"]

Key = Union[str, tuple[str, int]]  # noqa: UP007 - a runtime alias (Python 3.10 has no `type` statement)
Terms = tuple[tuple[Key, float], ...]
STATE: Key = "x"


class Lin:
    """A linear combination sum_r c_r r of registers with float64 coefficients (immutable)."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[Key, float] | None = None) -> None:
        self.terms: dict[Key, float] = {k: float(v) for k, v in (terms or {}).items() if v != 0}

    def __add__(self, other: Lin) -> Lin:
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out.get(k, 0.0) + v
        return Lin(out)

    def __sub__(self, other: Lin) -> Lin:
        return self + (-1.0) * other

    def __neg__(self) -> Lin:
        return (-1.0) * self

    def __mul__(self, c: float) -> Lin:
        c = float(c)
        if not math.isfinite(c):
            raise ValueError(f"a plan coefficient is not finite ({c}); the grid has a zero-length or degenerate step.")
        return Lin({k: c * v for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> Lin:
        return self * (1.0 / float(c))

    def items(self) -> Terms:
        return tuple(self.terms.items())

    def __repr__(self) -> str:
        return " + ".join(f"{v:.6g}*{k}" for k, v in self.terms.items()) or "0"


@dataclass(frozen=True)
class Eval:
    """Evaluation ``index`` of the network at grid point ``point``, on input sum_r x[r] r. ``x0`` = (p, q):
    x0_hat = p x_in + q out at this point (what progress callbacks show)."""

    index: int
    point: int
    x: Terms
    x0: tuple[float, float]


@dataclass(frozen=True)
class Update:
    """x <- sum_r x[r] r + noise z. ``step`` is set on the update that completes step ``step`` (1-based)."""

    x: Terms
    noise: float
    step: int | None


@dataclass(frozen=True)
class Langevin:
    """Langevin corrector (Song et al. 2021) with the score s = sum_r score[r] r of the last evaluation:
        x <- x + e s + sqrt(2 e) z,  e = scale (snr ||z|| / ||s||)^2,
    norms per sample averaged over the batch (score_sde's rule)."""

    score: Terms
    snr: float
    scale: float
    step: int | None


Op = Union[Eval, Update, Langevin]  # noqa: UP007


@dataclass(frozen=True)
class Plan:
    """A compiled sampler: ``ops`` over the grid ``grid``; ``nfe`` network evaluations, ``noise_draws`` standard
    normal draws of the sample's shape, ``window`` the depth of the register history the ops read, ``steps`` the
    number of grid steps, ``linear`` False when a Langevin op makes it nonlinear (not exportable to ONNX)."""

    ops: tuple[Op, ...]
    grid: TimeGrid
    nfe: int
    noise_draws: int
    steps: int
    window: int
    sampler: str

    @property
    def linear(self) -> bool:
        return not any(isinstance(op, Langevin) for op in self.ops)

    @property
    def evals(self) -> tuple[Eval, ...]:
        return tuple(op for op in self.ops if isinstance(op, Eval))

    def registers_read(self) -> set[Key]:
        """The history registers that some op reads (the others need not be kept)."""
        keys: set[Key] = set()
        for op in self.ops:
            terms = op.score if isinstance(op, Langevin) else op.x
            keys.update(k for k, _ in terms if k != STATE)
        return keys


@dataclass(frozen=True)
class Evaluation:
    """The linear forms of one evaluation's input and its conversions: ``x_in``, ``out``, ``eps``, ``x0``, ``score``."""

    index: int
    point: GridPoint
    x_in: Lin
    out: Lin
    eps: Lin
    x0: Lin
    score: Lin


class PlanBuilder:
    """What a sampler uses to write its plan: ``x`` (the current sample), ``point(k)``, ``evaluate(x, k)`` and
    ``update(x, noise)``. The input of an evaluation made at the current sample aliases it until the next update,
    so plans never carry a register twice."""

    def __init__(self, grid: TimeGrid, prediction: str, sampler: str) -> None:
        self.grid = grid
        self.prediction = prediction
        self.sampler = sampler
        self.points = [grid.point(k) for k in range(grid.steps + 1)]
        self.ops: list[Op] = []
        self._evals = 0
        self._draws = 0
        self._steps_done = 0
        self._alias: int | None = None  # evaluation whose input is the current sample
        self._window = 1

    @property
    def steps(self) -> int:
        return self.grid.steps

    @property
    def x(self) -> Lin:
        return Lin({STATE: 1.0})

    def point(self, k: int) -> GridPoint:
        return self.points[k]

    def _resolve(self, lin: Lin) -> Terms:
        terms: dict[Key, float] = {}
        for key, c in lin.terms.items():
            if isinstance(key, tuple) and self._alias is not None and key == ("in", self._alias):
                key = STATE
            if isinstance(key, tuple):
                self._window = max(self._window, self._evals - key[1])
            terms[key] = terms.get(key, 0.0) + c
        return tuple((k, c) for k, c in terms.items() if c != 0)

    def evaluate(self, x: Lin, k: int) -> Evaluation:
        """Evaluate the network at grid point k on input ``x``; returns the linear forms of its conversions."""
        p = self.points[k]
        if p.sigma <= 0:
            raise ValueError(f"{self.sampler}: cannot evaluate the network at sigma = 0 (grid point {k}).")
        i = self._evals
        terms = self._resolve(x)
        self._evals += 1
        if terms == ((STATE, 1.0),):
            self._alias = i
        conv = output_conversion(self.prediction, p.alpha, p.sigma)
        self.ops.append(Eval(index=i, point=k, x=terms, x0=(float(conv["x0"][0]), float(conv["x0"][1]))))
        x_in, out = Lin({("in", i): 1.0}), Lin({("out", i): 1.0})

        def form(name: str) -> Lin:
            a, b = conv[name]
            return a * x_in + b * out

        return Evaluation(i, p, x_in, out, form("eps"), form("x0"), form("score"))

    def update(self, x: Lin, noise: float = 0.0, *, end_step: bool = True) -> None:
        """x <- x (+ noise z); ``end_step`` marks the end of a grid step (for progress callbacks)."""
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"{self.sampler}: noise coefficient {noise} is not a finite number >= 0.")
        terms = self._resolve(x)
        self._alias = None
        if noise > 0:
            self._draws += 1
        step = None
        if end_step:
            self._steps_done += 1
            step = self._steps_done
        self.ops.append(Update(x=terms, noise=float(noise), step=step))

    def langevin(self, score: Lin, snr: float, scale: float, *, end_step: bool = False) -> None:
        terms = self._resolve(score)
        self._alias = None
        self._draws += 1
        step = None
        if end_step:
            self._steps_done += 1
            step = self._steps_done
        self.ops.append(Langevin(score=terms, snr=float(snr), scale=float(scale), step=step))

    def build(self) -> Plan:
        if self._steps_done != self.grid.steps:
            raise RuntimeError(f"{self.sampler}: the plan ends {self._steps_done} of {self.grid.steps} steps.")
        return Plan(
            ops=tuple(self.ops),
            grid=self.grid,
            nfe=self._evals,
            noise_draws=self._draws,
            steps=self.grid.steps,
            window=self._window,
            sampler=self.sampler,
        )


def _combine(terms: Terms, x: Tensor, regs: dict[Key, Tensor]) -> Tensor:
    acc: Tensor | None = None
    for key, c in terms:
        v = x if key == STATE else regs[key]
        if acc is None:
            acc = v if c == 1.0 else v * c
        else:
            acc = acc.add(v, alpha=c)
    if acc is None:
        return torch.zeros_like(x)
    return acc


def run_plan(
    plan: Plan,
    net: Callable[[Tensor, int], Tensor],
    x: Tensor,
    noise: Callable[[], Tensor],
    callback: Callable[[Progress], None] | None = None,
) -> Tensor:
    """THE loop: execute ``plan`` from x = x_T. ``net(x_in, i)`` returns the raw network output of evaluation i
    (the caller supplies each evaluation's label); ``noise()`` returns the next standard normal draw.

    ``callback`` gets ``Progress('sample', step, steps, {'t': end time of the step, 'nfe': evaluations so far},
    {'denoised': x0_hat of the step's last evaluation})`` after each grid step (no 'denoised' before the first
    evaluation)."""
    keep = plan.registers_read()
    regs: dict[Key, Tensor] = {}
    last_x0: tuple[Tensor, Tensor, tuple[float, float]] | None = None
    evals = 0
    for op in plan.ops:
        if isinstance(op, Eval):
            x_in = _combine(op.x, x, regs)
            out = net(x_in, op.index)
            regs[("out", op.index)] = out
            if ("in", op.index) in keep:
                regs[("in", op.index)] = x_in
            for old in [k for k in regs if isinstance(k, tuple) and k[1] <= op.index - plan.window]:
                del regs[old]
            last_x0, evals = (x_in, out, op.x0), evals + 1
            continue
        if isinstance(op, Update):
            new = _combine(op.x, x, regs)
            x = new.add(noise(), alpha=op.noise) if op.noise > 0 else new
        else:
            s = _combine(op.score, x, regs)
            z = noise()
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
            e = op.scale * (op.snr * ratio) ** 2
            x = x + e * s + torch.sqrt(2 * e) * z
        if op.step is not None and callback is not None:
            tensors: dict[str, Tensor] = {}
            if last_x0 is not None:
                x_in, out, (p, q) = last_x0
                tensors["denoised"] = x_in * p + out * q
            info = {"t": float(plan.grid.t[op.step]), "nfe": evals}
            callback(Progress("sample", op.step, plan.steps, info, tensors))
    return x
