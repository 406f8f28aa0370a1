"""The fixed-grid samplers as typed, frozen objects, each compiling (grid, prediction) to a coefficient ``Plan``.

Notation at grid point k: alpha_k, sigma_k, lambda_k = log(alpha_k / sigma_k) and rho_k = sigma_k / alpha_k
(EDM's sigma; x~ = x / alpha is the EDM state). A step goes from s0 = point k (earlier points s1, s2, ...) to
t = point k + 1; h = lambda_t - lambda_s0. D (data prediction x0_hat) and eps are the converted network outputs.
The forward transition of a step is x_t | x_s ~ N(a x_s, b^2 I) with a = alpha_t / alpha_s and
b^2 = sigma_t^2 - a^2 sigma_s^2, which makes DDPM, DDIM and PC valid for VP, sub-VP and VE alike.
Formulas: docs/math.md section 8. Every sampler works on every SDE, grid and network prediction, since the
grid supplies (alpha, sigma) and ``output_conversion`` the conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import numpy as np
import torch

from ..sde import SDE
from .grids import GridPoint, TimeGrid
from .plan import Lin, Plan, PlanBuilder

__all__ = [
    "Sampler",
    "GridSampler",
    "DDPM",
    "DDIM",
    "DPMSolverPP",
    "DPMSolverPPSDE",
    "UniPC",
    "IPNDM",
    "DEIS",
    "Heun",
    "PC",
]


def _check_int(name: str, value: object, lo: int, hi: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise ValueError(f"{owner}: `{name}` must be an integer in [{lo}, {hi}]; got {value!r}.")
    return int(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...], owner: str) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: invalid {name} {value!r}. Must be one of {choices}.")


def _check_bool(name: str, value: object, owner: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: `{name}` must be True or False; got {value!r}.")


def _check_float(name: str, value: object, lo: float, hi: float, owner: str, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: `{name}` must be a number; got {type(value).__name__}.")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
        side = "(" if open_lo else "["
        raise ValueError(f"{owner}: `{name}` must lie in {side}{lo}, {hi}]; got {value!r}.")
    return v


class Sampler:
    """Base of every sampler object. ``name`` is its entry in the name table (``sdeflow.sampling.SAMPLERS``)."""

    name: ClassVar[str]
    deterministic: ClassVar[bool] = True

    def config(self) -> dict:
        """The sampler's options, as a JSON-friendly dict (recorded in reports). Named ``config`` like ``SDE.config``
        (``ODESolver`` has a field called ``options``: torchdiffeq's options dict)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def is_deterministic(self) -> bool:
        """True when the sampler draws no noise."""
        return self.deterministic


class GridSampler(Sampler):
    """A sampler that steps along a fixed time grid; ``plan`` compiles it to coefficients."""

    def plan(self, grid: TimeGrid, prediction: str, sde: SDE | None = None) -> Plan:
        """Compile to coefficients for a network predicting ``prediction`` on ``grid`` (``sde``: only PC's
        'euler-maruyama' predictor reads it, for f(t) and g(t)^2)."""
        b = PlanBuilder(grid, prediction, self.name)
        self.build(b, sde)
        return b.build()

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        raise NotImplementedError


def _transition(src: GridPoint, dst: GridPoint) -> tuple[float, float]:
    """(a, b^2) of the forward transition from dst (earlier) to src (later)."""
    a = src.alpha / dst.alpha
    return a, max(src.sigma**2 - a * a * dst.sigma**2, 0.0)


@dataclass(frozen=True)
class DDPM(GridSampler):
    """Ancestral sampling (Ho et al. 2020), x_t -> x_s:
        x_s = (x_t - b^2 / sigma_t eps_hat) / a + sqrt(var) z,
        var = b^2 sigma_s^2 / sigma_t^2  ('posterior', the true posterior q(x_s | x_t, x0)) or b^2 ('beta').
    The last step adds no noise (Ho et al. 2020, Algorithm 2). diffusers: DDPMScheduler."""

    variance: Literal["posterior", "beta"] = "posterior"
    name: ClassVar[str] = "ddpm"
    deterministic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_choice("variance", self.variance, ("posterior", "beta"), "DDPM")

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            e = b.evaluate(b.x, k)
            a, b2 = _transition(src, dst)
            mean = (b.x - (b2 / src.sigma) * e.eps) / a
            var = b2 * dst.sigma**2 / src.sigma**2 if self.variance == "posterior" else b2
            b.update(mean, 0.0 if k == b.steps - 1 else math.sqrt(var))


@dataclass(frozen=True)
class DDIM(GridSampler):
    """DDIM (Song et al. 2021), x_t -> x_s with eta in [0, 1]:
        x0_hat = (x_t - sigma_t eps_hat) / alpha_t
        sig    = eta sqrt(var),  var = (sigma_s^2 / sigma_t^2) b^2   (VP: (1-abar_s)/(1-abar_t) (1 - abar_t/abar_s))
        x_s    = alpha_s x0_hat + sqrt(sigma_s^2 - sig^2) eps_hat + sig z
    eta = 0 is the first-order exponential integrator DPM-Solver-1; eta = 1 is ancestral sampling.
    diffusers: DDIMScheduler; k-diffusion: sample_euler (eta = 0, in sigma = rho)."""

    eta: float = 0.0
    name: ClassVar[str] = "ddim"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", _check_float("eta", self.eta, 0.0, 1.0, "DDIM"))

    def is_deterministic(self) -> bool:
        return self.eta == 0

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            e = b.evaluate(b.x, k)
            _, b2 = _transition(src, dst)
            std = self.eta * math.sqrt((dst.sigma**2 / src.sigma**2) * b2)
            b.update(dst.alpha * e.x0 + math.sqrt(max(dst.sigma**2 - std**2, 0.0)) * e.eps, std)


def _final_order(k: int, steps: int, order: int, lower_order_final: bool, dst: GridPoint) -> int:
    """The order of multistep step k: warm-up min(order, k + 1); order 1 for a final step to sigma = 0 (lambda =
    inf, where the multistep differences have no meaning); with ``lower_order_final``, runs of fewer than 15 steps
    also lower the last steps (order 1 on the last, at most 2 on the one before: diffusers' rule)."""
    p = min(order, k + 1)
    if dst.sigma == 0:
        return 1
    if lower_order_final and steps < 15:
        p = min(p, steps - k)
    return p


def _differences(b: PlanBuilder, k: int, ds: list[Lin], h: float, p: int) -> tuple[Lin, Lin, Lin]:
    """DPM-Solver++'s multistep estimates at step k (s0 = point k, ds = [D_s0, D_s1, D_s2], h = lambda_t - lambda_s0):
    D1_0 = (D_s0 - D_s1) / r0 estimates h D' to first order (order 2); for order 3 also
    D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), h D' to second order, and D2 = (D1_0 - D1_1)/(r0 + r1), h^2 D''/2."""
    s0, s1 = b.point(k), b.point(k - 1)
    r0 = (s0.lam - s1.lam) / h
    d1_0 = (ds[0] - ds[1]) / r0
    if p < 3:
        return d1_0, d1_0, Lin()
    r1 = (s1.lam - b.point(k - 2).lam) / h
    d1_1 = (ds[1] - ds[2]) / r1
    return d1_0, d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


class _DPMSolverPPMultistep(GridSampler):
    """The multistep loop shared by DPM-Solver++ and its SDE form: one evaluation per step, the data predictions D
    of the last three points, the order of ``_final_order``, a last step to sigma = 0 returning alpha_t D0; each
    subclass supplies ``_step`` (the update and its noise coefficient)."""

    order: int
    lower_order_final: bool

    def _step(self, b: PlanBuilder, k: int, ds: list[Lin], p: int) -> tuple[Lin, float]:
        raise NotImplementedError

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        ds: list[Lin] = []  # D at points k, k-1, k-2
        for k in range(b.steps):
            dst = b.point(k + 1)
            ds.insert(0, b.evaluate(b.x, k).x0)
            del ds[3:]
            if dst.sigma == 0:
                b.update(dst.alpha * ds[0])
                continue
            x, noise = self._step(b, k, ds, _final_order(k, b.steps, self.order, self.lower_order_final, dst))
            b.update(x, noise)


@dataclass(frozen=True)
class DPMSolverPP(_DPMSolverPPMultistep):
    """DPM-Solver++ multistep (Lu et al. 2022), data prediction D, orders 1-3 (2M is the default). Step s0 -> t,
    r0 = h_0 / h, r1 = h_1 / h (h_0 = lambda_s0 - lambda_s1, h_1 = lambda_s1 - lambda_s2):
        order 1:  x_t = (sigma_t/sigma_s0) x - alpha_t (e^{-h} - 1) D0
        order 2:  ... - 1/2 alpha_t (e^{-h} - 1) D1,   D1 = (D0 - D_s1) / r0                  ('midpoint' form)
        order 3:  ... + alpha_t ((e^{-h} - 1)/h + 1) D1 - 2 alpha_t ((e^{-h} - 1 + h)/h^2 - 1/2) D2, with
                  D1_0 = (D0 - D_s1)/r0, D1_1 = (D_s1 - D_s2)/r1, D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
                  D2 = (D1_0 - D1_1)/(r0 + r1)
    D1 estimates h D'(lambda) and D2 estimates h^2 D''/2 (not h^2 D''), so the Taylor term of D'' carries the factor
    2 written above. diffusers, k-diffusion and the DPM-Solver reference code weigh D2 by half that
    (``diffusers_3m=True`` reproduces them): a second-order method (fitted order 2.04 against 3.06; docs/math.md
    section 8).
    Warm-up and final orders: ``_final_order``. diffusers: DPMSolverMultistepScheduler (algorithm_type
    'dpmsolver++', solver_order 2/3); k-diffusion: sample_dpmpp_2m (order 2)."""

    order: int = 2
    lower_order_final: bool = True
    diffusers_3m: bool = False
    name: ClassVar[str] = "dpmsolver++"

    def __post_init__(self) -> None:
        _check_int("order", self.order, 1, 3, "DPMSolverPP")
        _check_bool("lower_order_final", self.lower_order_final, "DPMSolverPP")
        _check_bool("diffusers_3m", self.diffusers_3m, "DPMSolverPP")
        if self.diffusers_3m and self.order != 3:
            raise ValueError("DPMSolverPP: `diffusers_3m` applies to order=3 only.")

    def _step(self, b: PlanBuilder, k: int, ds: list[Lin], p: int) -> tuple[Lin, float]:
        src, dst = b.point(k), b.point(k + 1)
        h = dst.lam - src.lam
        em1 = math.expm1(-h)
        x = (dst.sigma / src.sigma) * b.x - (dst.alpha * em1) * ds[0]
        if p == 2:
            x = x - (0.5 * dst.alpha * em1) * _differences(b, k, ds, h, p)[0]
        elif p == 3:
            _, d1, d2 = _differences(b, k, ds, h, p)
            w2 = 1.0 if self.diffusers_3m else 2.0
            x = x + (dst.alpha * (em1 / h + 1)) * d1 - (w2 * dst.alpha * ((em1 + h) / h**2 - 0.5)) * d2
        return x, 0.0


@dataclass(frozen=True)
class DPMSolverPPSDE(_DPMSolverPPMultistep):
    """DPM-Solver++ SDE multistep (Lu et al. 2022; the form diffusers calls 'sde-dpmsolver++'), consistent with the
    reverse SDE, orders 1-3 (2 is the default), z ~ N(0, I) per step:
        order 1:  x_t = (sigma_t/sigma_s0) e^{-h} x + alpha_t (1 - e^{-2h}) D0 + sigma_t sqrt(1 - e^{-2h}) z
        order 2:  ... + 1/2 alpha_t (1 - e^{-2h}) D1,  D1 = (D0 - D_s1) / r0                  ('midpoint' form)
        order 3:  ... + alpha_t ((1 - e^{-2h})/(-2h) + 1) D1 + alpha_t (1 - 1/h + (1 - e^{-2h})/(2h^2)) D2
    (D1, D2 of order 3 as in ``DPMSolverPP``; the D2 weight is (1/h^2) int_0^h 2 e^{-2(h-u)} u^2 du, the Taylor term
    of D'' in the variation-of-constants integral). diffusers' order-3 SDE update uses
    ((1 - e^{-2h} - 2h)/(2h)^2 - 1/2), which tends to -1 as h -> 0 instead of 0 (``diffusers_3m=True`` reproduces
    it). A final step to sigma = 0 returns alpha_t D0 without noise. diffusers:
    DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++'); k-diffusion: sample_dpmpp_2m_sde."""

    order: int = 2
    lower_order_final: bool = True
    diffusers_3m: bool = False
    name: ClassVar[str] = "sde-dpmsolver++"
    deterministic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_int("order", self.order, 1, 3, "DPMSolverPPSDE")
        _check_bool("lower_order_final", self.lower_order_final, "DPMSolverPPSDE")
        _check_bool("diffusers_3m", self.diffusers_3m, "DPMSolverPPSDE")
        if self.diffusers_3m and self.order != 3:
            raise ValueError("DPMSolverPPSDE: `diffusers_3m` applies to order=3 only.")

    def _step(self, b: PlanBuilder, k: int, ds: list[Lin], p: int) -> tuple[Lin, float]:
        src, dst = b.point(k), b.point(k + 1)
        h = dst.lam - src.lam
        one_m = -math.expm1(-2 * h)  # 1 - e^{-2h}
        x = (dst.sigma / src.sigma * math.exp(-h)) * b.x + (dst.alpha * one_m) * ds[0]
        if p == 2:
            x = x + (0.5 * dst.alpha * one_m) * _differences(b, k, ds, h, p)[0]
        elif p == 3:
            _, d1, d2 = _differences(b, k, ds, h, p)
            w2 = (one_m - 2 * h) / (2 * h) ** 2 - 0.5 if self.diffusers_3m else 1 - 1 / h + one_m / (2 * h * h)
            x = x + (dst.alpha * (one_m / (-2 * h) + 1)) * d1 + (dst.alpha * w2) * d2
        return x, dst.sigma * math.sqrt(one_m)


def _unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[float, float, np.ndarray]:
    """UniPC's (h phi_1(h), B(h), b) for data prediction, hh = -h: h phi_1 = e^{hh} - 1, B(h) = hh ('bh1') or
    e^{hh} - 1 ('bh2'), and b_i = i! g_i / B(h) for i = 1..p with g_1 = h phi_1 / hh - 1 and
    g_{i+1} = g_i / hh - 1 / (i + 1)! (docs/math.md section 8, UniPC; Zhao et al. 2023)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b = []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.array(b)


@dataclass(frozen=True)
class UniPC(GridSampler):
    """UniPC (Zhao et al. 2023) with data prediction: the UniP-p predictor and the UniC corrector, which reuses the
    evaluation the next step needs anyway (no extra NFE). Step s0 -> t with the p most recent D's,
    r_i = (lambda_si - lambda_s0) / h, D1_i = (D_si - D0) / r_i:
        predictor:  x_t = (sigma_t/sigma_s0) x - alpha_t h phi_1 D0 - alpha_t B(h) sum_i rho^p_i D1_i
        corrector:  x_t^c = (sigma_t/sigma_s0) x - alpha_t h phi_1 D0
                            - alpha_t B(h) (sum_i rho^c_i D1_i + rho^c_p (D_t - D0)),  D_t = D(x_t, t)
    rho^p solves R_{p-1} rho = b_{p-1} (rho = 1/2 at p = 2), rho^c solves R_p rho = b_p (1/2 at p = 1), with
    R_ij = r_j^(i-1) (r_p = 1) and b from ``_unipc_coefficients``; B(h) = h ('bh1') or e^h - 1 ('bh2'). No
    corrector after the last step. UniC-p has order p + 1. diffusers: UniPCMultistepScheduler(predict_x0=True)."""

    order: int = 2
    variant: Literal["bh1", "bh2"] = "bh2"
    lower_order_final: bool = True
    corrector: bool = True
    name: ClassVar[str] = "unipc"

    def __post_init__(self) -> None:
        _check_int("order", self.order, 1, 3, "UniPC")
        _check_choice("variant", self.variant, ("bh1", "bh2"), "UniPC")
        _check_bool("lower_order_final", self.lower_order_final, "UniPC")
        _check_bool("corrector", self.corrector, "UniPC")

    def _order(self, k: int, steps: int, dst: GridPoint) -> int:
        p = min(self.order, steps - k) if self.lower_order_final else self.order
        p = min(p, k + 1)
        return 1 if dst.sigma == 0 else p

    def _step(self, b: PlanBuilder, x: Lin, k: int, ds: list[Lin], p: int, d_t: Lin | None) -> Lin:
        """UniP (``d_t`` None) or UniC (``d_t`` = D at the new point) from point k to k + 1 with order p."""
        src, dst = b.point(k), b.point(k + 1)
        if dst.sigma == 0:
            return dst.alpha * ds[0]
        h = dst.lam - src.lam
        rks = [(b.point(k - i).lam - src.lam) / h for i in range(1, p)] + [1.0]
        d1s = [(ds[i] - ds[0]) / rks[i - 1] for i in range(1, p)]
        h_phi_1, b_h, bvec = _unipc_coefficients(rks, h, self.variant)
        base = (dst.sigma / src.sigma) * x - (dst.alpha * h_phi_1) * ds[0]
        big_r = np.array([[r ** (i - 1) for r in rks] for i in range(1, p + 1)])
        res = Lin()
        if d_t is None:
            rhos = np.zeros(0)  # p == 1: no earlier differences to correct with
            if p == 2:
                rhos = np.array([0.5])
            elif p > 2:
                rhos = np.linalg.solve(big_r[:-1, :-1], bvec[:-1])
            for i, d1 in enumerate(d1s):
                res = res + float(rhos[i]) * d1
        else:
            rhos = np.array([0.5]) if p == 1 else np.linalg.solve(big_r, bvec)
            for i, d1 in enumerate(d1s):
                res = res + float(rhos[i]) * d1
            res = res + float(rhos[-1]) * (d_t - ds[0])
        return base - (dst.alpha * b_h) * res

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        ds: list[Lin] = [b.evaluate(b.x, 0).x0]
        for k in range(b.steps):
            p = self._order(k, b.steps, b.point(k + 1))
            pred = self._step(b, b.x, k, ds, p, None)
            if k == b.steps - 1:
                b.update(pred)
                break
            e = b.evaluate(pred, k + 1)
            if self.corrector:
                b.update(self._step(b, b.x, k, ds, p, e.x0))
            else:
                b.update(e.x_in)
            ds.insert(0, e.x0)
            del ds[3:]


@dataclass(frozen=True)
class IPNDM(GridSampler):
    """iPNDM (Zhang & Chen 2023; the Adams-Bashforth form of EDM-style code) in x~ = x/alpha and rho = sigma/alpha,
    where dx~/drho = eps_hat:
        x~_{k+1} = x~_k + (rho_{k+1} - rho_k) d*,  d* = eps_k (order 1), (3 eps_k - eps_{k-1})/2 (2),
        (23 eps_k - 16 eps_{k-1} + 5 eps_{k-2})/12 (3), (55 eps_k - 59 eps_{k-1} + 37 eps_{k-2} - 9 eps_{k-3})/24 (4)
    with order min(p, k + 1) at step k. The weights assume equal steps in rho; on the usual non-uniform grids the
    formal order drops (docs/math.md section 8). diffusers and k-diffusion have no equivalent of this form."""

    order: int = 4
    name: ClassVar[str] = "ipndm"
    WEIGHTS: ClassVar[tuple[tuple[float, ...], ...]] = (
        (1.0,),
        (3 / 2, -1 / 2),
        (23 / 12, -16 / 12, 5 / 12),
        (55 / 24, -59 / 24, 37 / 24, -9 / 24),
    )

    def __post_init__(self) -> None:
        _check_int("order", self.order, 1, 4, "IPNDM")

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        eps: list[Lin] = []
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            eps.insert(0, b.evaluate(b.x, k).eps)
            w = self.WEIGHTS[min(self.order, k + 1) - 1]
            d = Lin()
            for wj, ej in zip(w, eps[: len(w)], strict=True):
                d = d + wj * ej
            rho_s, rho_t = src.sigma / src.alpha, dst.sigma / dst.alpha
            b.update(dst.alpha * (b.x / src.alpha + (rho_t - rho_s) * d))
            del eps[self.order - 1 :]


def _deis_weights(log_nodes: list[float], rho_s: float, rho_t: float) -> list[float]:
    """c_j = int_{rho_s}^{rho_t} l_j(log rho) d rho for the Lagrange basis l_j on the nodes u_j = log rho_j.

    With u = log rho, d rho = e^u du and int P(u) e^u du = e^u sum_m (-1)^m P^(m)(u) for a polynomial P, exact for
    every order; the limit rho_t -> 0 (u -> -inf) of that antiderivative is 0."""
    out = []
    for j, uj in enumerate(log_nodes):
        poly = np.poly1d([1.0])
        for m, um in enumerate(log_nodes):
            if m != j:
                poly = poly * np.poly1d([1.0, -um]) / (uj - um)

        def anti(rho: float, poly: np.poly1d = poly) -> float:
            if rho == 0:
                return 0.0
            u = math.log(rho)
            total, deriv, sign = 0.0, poly, 1.0
            while True:
                total += sign * float(deriv(u))
                if deriv.order == 0:
                    break
                deriv, sign = deriv.deriv(), -sign
            return rho * total

        out.append(anti(rho_t) - anti(rho_s))
    return out


@dataclass(frozen=True)
class DEIS(GridSampler):
    """DEIS tAB-p (Zhang & Chen 2023, 'logrho'): the exponential integrator in x~ = x/alpha, rho = sigma/alpha,
    with the eps history extrapolated by a Lagrange polynomial in log rho and integrated exactly:
        x_t = alpha_t (x / alpha_s0 + sum_j c_j eps_sj),  c_j = int_{rho_s0}^{rho_t} l_j(log rho) d rho
    over the p most recent points (``_deis_weights``), orders 1-3, warm-up and final orders as ``DPMSolverPP``.
    Order 1 is DDIM. diffusers: DEISMultistepScheduler(algorithm_type='deis', solver_type='logrho')."""

    order: int = 3
    lower_order_final: bool = True
    name: ClassVar[str] = "deis"

    def __post_init__(self) -> None:
        _check_int("order", self.order, 1, 3, "DEIS")
        _check_bool("lower_order_final", self.lower_order_final, "DEIS")

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        eps: list[Lin] = []
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            eps.insert(0, b.evaluate(b.x, k).eps)
            p = min(self.order, k + 1)
            if self.lower_order_final and b.steps < 15:
                p = min(p, b.steps - k)
            nodes = [math.log(b.point(k - j).sigma / b.point(k - j).alpha) for j in range(p)]
            c = _deis_weights(nodes, src.sigma / src.alpha, dst.sigma / dst.alpha)
            x = b.x / src.alpha
            for cj, ej in zip(c, eps[: len(c)], strict=True):
                x = x + cj * ej
            b.update(dst.alpha * x)
            del eps[self.order - 1 :]


@dataclass(frozen=True)
class Heun(GridSampler):
    """EDM's Heun (Karras et al. 2022, Algorithm 1 without churn) in x~ = x/alpha, rho = sigma/alpha:
        x~' = x~ + (rho' - rho) eps(x);  if rho' > 0: x~_next = x~ + (rho' - rho) (eps(x) + eps(x')) / 2,
        else x~_next = x~' (Euler on a last step to sigma = 0).
    Second order, two evaluations per step (2S - 1 when the grid ends at sigma = 0). k-diffusion: sample_heun."""

    name: ClassVar[str] = "heun"

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            e = b.evaluate(b.x, k)
            drho = dst.sigma / dst.alpha - src.sigma / src.alpha
            x_tilde = b.x / src.alpha
            euler = dst.alpha * (x_tilde + drho * e.eps)
            if dst.sigma == 0:
                b.update(euler)
                continue
            e2 = b.evaluate(euler, k + 1)
            b.update(dst.alpha * (x_tilde + (0.5 * drho) * (e.eps + e2.eps)))


@dataclass(frozen=True)
class PC(GridSampler):
    """Predictor-corrector sampling (Song et al. 2021). Predictor t -> s, then ``n_corrector`` Langevin steps at s:
        'reverse-diffusion':  x_s = (2 - a) x_t + b^2 s(x_t, t) + b z          (score_sde's discretised reverse SDE)
        'euler-maruyama':     x_s = x_t - [f(t) x_t - g(t)^2 s(x_t, t)] dt + g(t) sqrt(dt) z,   dt = t - s
        Langevin corrector:   x <- x + e s(x, s) + sqrt(2 e) z,   e = 2 a^2 (snr ||z|| / ||s(x, s)||)^2
    with ||.|| the per-sample norm averaged over the batch, as in score_sde: 'pc' is the one sampler whose samples
    depend on the batch they are drawn in (per-sample norms are unstable in low dimension). The last predictor step
    adds no noise and is not corrected. 'euler-maruyama' needs f(t) and g(t)^2 at the grid points: the SDE is
    passed to ``plan``."""

    predictor: Literal["reverse-diffusion", "euler-maruyama"] = "reverse-diffusion"
    snr: float = 0.16
    n_corrector: int = 1
    name: ClassVar[str] = "pc"
    deterministic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_choice("predictor", self.predictor, ("reverse-diffusion", "euler-maruyama"), "PC")
        object.__setattr__(self, "snr", _check_float("snr", self.snr, 0.0, math.inf, "PC", open_lo=True))
        _check_int("n_corrector", self.n_corrector, 0, 1000, "PC")

    def build(self, b: PlanBuilder, sde: SDE | None) -> None:
        for k in range(b.steps):
            src, dst = b.point(k), b.point(k + 1)
            e = b.evaluate(b.x, k)
            a, b2 = _transition(src, dst)
            if self.predictor == "reverse-diffusion":
                mean, std = (2 - a) * b.x + b2 * e.score, math.sqrt(b2)
            else:
                if sde is None:
                    raise ValueError("PC(predictor='euler-maruyama') needs the SDE: pass sde= to plan().")
                dt = src.t - dst.t
                tt = torch.tensor(src.t, dtype=torch.float64)
                f, g2 = float(sde.drift_coef(tt)), float(sde.g2(tt))
                mean, std = b.x - (f * dt) * b.x + (g2 * dt) * e.score, math.sqrt(g2 * dt)
            last = k == b.steps - 1 or dst.sigma == 0
            b.update(mean, 0.0 if last else std, end_step=last or self.n_corrector == 0)
            if last:
                continue
            for j in range(self.n_corrector):
                ec = b.evaluate(b.x, k + 1)
                b.langevin(ec.score, self.snr, 2 * a * a, end_step=j == self.n_corrector - 1)
