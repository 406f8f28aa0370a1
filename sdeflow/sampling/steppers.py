"""The discrete-grid samplers as step functions, and the ONE loop that drives them.

Each sampler implements ``step(x, src, dst, ctx) -> x`` from grid point ``src`` (time t) to ``dst`` (an earlier
time s), given both ends explicitly. Notation at a point: alpha, sigma, lambda = log(alpha/sigma); for a step
t -> s the forward transition is x_t | x_s ~ N(a x_s, b^2 I) with

    a = alpha_t / alpha_s,   b^2 = sigma_t^2 - a^2 sigma_s^2      (VP discrete schedule: a^2 = 1 - beta_i, b^2 = beta_i)

which makes every formula below valid for VP, sub-VP and VE alike (MATH.md section 4 is the VP special case).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sde import SDE
from .evaluate import Denoiser
from .grids import GridPoint, TimeGrid

__all__ = ["StepContext", "StepInfo", "DDPMStep", "DDIMStep", "DPMSolverPP2MStep", "PCStep", "run_grid"]


@dataclass(frozen=True)
class StepInfo:
    """What the progress ``callback`` receives after each step (or, for torchsde/torchdiffeq, after each network
    evaluation, with ``total = -1`` and ``t = nan`` since the solver owns the steps)."""

    step: int
    total: int
    t: float
    nfe: int


@dataclass
class StepContext:
    """What a step may use besides its two ends: the denoiser (counts NFE), the noise source, the SDE, the step's
    position (``index`` of ``total``, set by ``run_grid``) and ``history``, the previous step's (x0_hat, h) that a
    multistep sampler leaves for the next step (reset to None at the start of every run)."""

    denoiser: Denoiser
    noise: Callable[[], Tensor]
    sde: SDE
    index: int = 0
    total: int = 0
    history: tuple[Tensor, float] | None = None

    @property
    def last(self) -> bool:
        return self.index == self.total - 1


def _transition(src: GridPoint, dst: GridPoint) -> tuple[float, float]:
    """(a, b^2) of the forward transition from dst (earlier) to src (later)."""
    a = src.alpha / dst.alpha
    return a, max(src.sigma**2 - a * a * dst.sigma**2, 0.0)


class DDPMStep:
    """Ancestral sampling (Ho et al. 2020), x_t -> x_s:
        x_s = (x_t - b^2 / sigma_t eps_hat) / a + sqrt(var) z,
        var = b^2 sigma_s^2 / sigma_t^2  ('posterior', the true posterior q(x_s | x_t, x0)) or b^2 ('beta').
    The last step adds no noise (Ho et al. 2020, Algorithm 2)."""

    noise_per_step = 1

    def __init__(self, variance: str = "posterior") -> None:
        self.variance = variance

    def step(self, x: Tensor, src: GridPoint, dst: GridPoint, ctx: StepContext) -> Tensor:
        eps, _ = ctx.denoiser(x, src)
        a, b2 = _transition(src, dst)
        mean = (x - (b2 / src.sigma) * eps) / a
        if ctx.last:
            return mean
        var = b2 * dst.sigma**2 / src.sigma**2 if self.variance == "posterior" else b2
        return mean + math.sqrt(var) * ctx.noise()


class DDIMStep:
    """DDIM (Song et al. 2021), x_t -> x_s with eta in [0, 1], in the operation order of diffusers' DDIMScheduler:
        x0_hat = (x_t - sigma_t eps_hat) / alpha_t
        sig    = eta sqrt(var),  var = (sigma_s^2 / sigma_t^2) b^2   (VP: (1-abar_s)/(1-abar_t) (1 - abar_t/abar_s))
        x_s    = alpha_s x0_hat + sqrt(sigma_s^2 - sig^2) eps_hat + sig z
    eta = 0 is the first-order exponential integrator DPM-Solver-1; eta = 1 is ancestral sampling."""

    def __init__(self, eta: float = 0.0) -> None:
        self.eta = eta
        self.noise_per_step = 1 if eta > 0 else 0

    def step(self, x: Tensor, src: GridPoint, dst: GridPoint, ctx: StepContext) -> Tensor:
        eps, x0 = ctx.denoiser(x, src)
        _, b2 = _transition(src, dst)
        var = (dst.sigma**2 / src.sigma**2) * b2
        std = self.eta * math.sqrt(var)
        out = dst.alpha * x0 + math.sqrt(max(dst.sigma**2 - std**2, 0.0)) * eps
        if self.eta > 0:
            out = out + std * ctx.noise()
        return out


class DPMSolverPP2MStep:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction D = x0_hat, h_i = lambda_i - lambda_{i-1}, r_i = h_{i-1}/h_i:
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) [(1 + 1/(2 r_i)) D_{i-1} - 1/(2 r_i) D_{i-2}]
    One evaluation per step; (D_{i-1}, h_i) is left in ``ctx.history`` for the next step. Lower order where the
    multistep formula has no history or no meaning: the first step (warm-up) uses D_{i-1} alone, so does a final
    step to sigma = 0 (lambda = inf, x = alpha D), and with ``lower_order_final`` so does the last step of a run of
    fewer than 15 steps (diffusers' rule; the DPM-Solver reference code uses fewer than 10). On the oracle
    (benchmarks/RESULTS.md) the first-order last step lowers the 10-step error on the quadratic grid and changes it
    by 1-3% on the log-SNR grid."""

    noise_per_step = 0

    def __init__(self, lower_order_final: bool = True) -> None:
        self.lower_order_final = lower_order_final

    def step(self, x: Tensor, src: GridPoint, dst: GridPoint, ctx: StepContext) -> Tensor:
        _, d = ctx.denoiser(x, src)
        if dst.sigma == 0:
            return dst.alpha * d
        h = dst.lam - src.lam
        if ctx.history is None or (ctx.last and self.lower_order_final and ctx.total < 15):
            d_eff = d
        else:
            d_prev, h_prev = ctx.history  # D_{i-2}, h_{i-1}
            r = h_prev / h
            d_eff = (1 + 0.5 / r) * d - (0.5 / r) * d_prev
        ctx.history = (d, h)
        return (dst.sigma / src.sigma) * x - dst.alpha * math.expm1(-h) * d_eff


class PCStep:
    """Predictor-corrector sampling (Song et al. 2021). Predictor t -> s, then ``n_corrector`` Langevin steps at s:
        'reverse-diffusion':  x_s = (2 - a) x_t + b^2 s(x_t, t) + b z          (score_sde's discretised reverse SDE)
        'euler-maruyama':     x_s = x_t - [f(t) x_t - g(t)^2 s(x_t, t)] dt + g(t) sqrt(dt) z,   dt = t - s
        Langevin corrector:   x <- x + e s(x, s) + sqrt(2 e) z,   e = 2 a^2 (snr ||z|| / ||s(x, s)||)^2
    with ||.|| the per-sample norm averaged over the batch, as in score_sde. Per-sample step sizes would keep samples
    independent of their batch, but are unstable in low dimension (||s|| comes arbitrarily close to 0 near a mode,
    so e has a heavy tail); hence 'pc' is the one sampler whose samples depend on the batch they are drawn in.
    The last predictor step adds no noise and is not corrected (score_sde's noise removal)."""

    def __init__(self, predictor: str = "reverse-diffusion", snr: float = 0.16, n_corrector: int = 1) -> None:
        self.predictor = predictor
        self.snr = snr
        self.n_corrector = n_corrector
        self.noise_per_step = 1 + n_corrector

    def step(self, x: Tensor, src: GridPoint, dst: GridPoint, ctx: StepContext) -> Tensor:
        score = ctx.denoiser.score(x, src)
        a, b2 = _transition(src, dst)
        if self.predictor == "reverse-diffusion":
            mean = (2 - a) * x + b2 * score
            std = math.sqrt(b2)
        else:
            dt = src.t - dst.t
            t = torch.tensor(src.t, dtype=torch.float64)
            f, g2 = float(ctx.sde.drift_coef(t)), float(ctx.sde.g2(t))
            mean = x - (f * x - g2 * score) * dt
            std = math.sqrt(g2 * dt)
        if ctx.last or dst.sigma == 0:
            return mean
        x = mean + std * ctx.noise()
        for _ in range(self.n_corrector):
            s = ctx.denoiser.score(x, dst)
            z = ctx.noise()
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
            e = 2 * a * a * (self.snr * ratio) ** 2
            x = x + e * s + torch.sqrt(2 * e) * z
        return x


def run_grid(
    sampler: DDPMStep | DDIMStep | DPMSolverPP2MStep | PCStep,
    x: Tensor,
    grid: TimeGrid,
    ctx: StepContext,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """The one loop: x <- sampler.step(x, p_k, p_{k+1}, ctx) for k = 0..S-1 over the grid's points."""
    total = grid.steps
    ctx.total, ctx.history = total, None
    src = grid.point(0)
    for k in range(total):
        dst = grid.point(k + 1)
        ctx.index = k
        x = sampler.step(x, src, dst, ctx)
        if callback is not None:
            callback(StepInfo(step=k + 1, total=total, t=dst.t, nfe=ctx.denoiser.nfe))
        src = dst
    return x
