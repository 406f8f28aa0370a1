"""``sdeflow.sample``: one front door to every sampler, returning one frozen ``SampleResult``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..parametrization import DDPMTimesteps, ScoreModel, as_score_model
from ..sde import SDE
from .evaluate import Denoiser, counted
from .grids import CONTINUOUS_GRIDS, DISCRETE_SPACINGS, TimeGrid, time_grid
from .noise import NoiseSource, per_sample_seeds
from .steppers import DDIMStep, DDPMStep, DPMSolverPP2MStep, PCStep, StepContext, StepInfo, run_grid

__all__ = ["sample", "SampleResult", "METHODS", "DEFAULT_GRIDS"]

GRID_METHODS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver++", "pc")
METHODS: tuple[str, ...] = GRID_METHODS + ("sde", "ode")
# The grid each method uses when none is given. In benchmarks/bench_samplers.py the quadratic grid is the best for
# DPM-Solver++ at 10 NFE, within 20% of the best at 20 NFE (log-SNR), and best or near-best for DDIM and Heun by
# median error (by mean error DDIM and Heun do better on the uniform grid); see benchmarks/RESULTS.md.
DEFAULT_GRIDS: dict[str, str] = {
    "ddpm": "uniform",
    "ddim": "quadratic",
    "dpmsolver++": "quadratic",
    "pc": "uniform",
    "ode": "quadratic",
}
VARIANCES: tuple[str, ...] = ("posterior", "beta")
PREDICTORS: tuple[str, ...] = ("reverse-diffusion", "euler-maruyama")


@dataclass(frozen=True)
class SampleResult:
    """The result of ``sample``.

    samples: [B, *sample_shape]; nfe: network evaluations actually made (EDM counting); status: 'success' or
    'nonfinite' (a NaN or inf in the samples); steps: the grid's steps (0 for adaptive solvers); times: the grid's
    times (float64; None for adaptive solvers and torchsde); timesteps: the DDPM timesteps on the discrete schedule
    (-1 marks the final abar = 1 point); seeds: the per-sample seeds; wall_time: seconds.
    """

    samples: Tensor
    nfe: int
    status: str
    method: str
    solver: str | None
    steps: int
    times: Tensor | None
    timesteps: Tensor | None
    seeds: tuple[int, ...]
    wall_time: float


def _split_method(method: str, solver: str | None) -> tuple[str, str | None]:
    from .solvers import ODE_SOLVERS, SDE_SOLVERS

    if not isinstance(method, str):
        raise TypeError(f"`method` must be a string; got {type(method).__name__}.")
    if ":" in method:
        method, _, inner = method.partition(":")
        if solver is not None and solver != inner:
            raise ValueError(f"`method` names solver {inner!r} but `solver` is {solver!r}; give it once.")
        solver = inner
    if method not in METHODS:
        raise ValueError(
            f"Invalid method {method!r}. Must be one of {METHODS} (or 'sde:<torchsde method>', "
            f"'ode:<torchdiffeq method>')."
        )
    if method == "sde":
        solver = solver or "euler"
        if solver not in SDE_SOLVERS:
            raise ValueError(f"Invalid torchsde solver {solver!r} for method 'sde'. Must be one of {SDE_SOLVERS}.")
    elif method == "ode":
        solver = solver or "dopri5"
        if solver not in ODE_SOLVERS:
            raise ValueError(f"Invalid torchdiffeq solver {solver!r} for method 'ode'. Must be one of {ODE_SOLVERS}.")
    elif solver is not None:
        raise ValueError(f"`solver` applies to methods 'sde' and 'ode' only; got solver={solver!r} for {method!r}.")
    return method, solver


def _check(steps: int, eta: float, variance: str, predictor: str, snr: float, n_corrector: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; got {steps!r}. Use e.g. steps=50.")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like); got {eta}.")
    if variance not in VARIANCES:
        raise ValueError(f"Invalid variance {variance!r}. Must be one of {VARIANCES}.")
    if predictor not in PREDICTORS:
        raise ValueError(f"Invalid predictor {predictor!r}. Must be one of {PREDICTORS}.")
    if not snr > 0:
        raise ValueError(f"`snr` must be > 0 (typically 0.16); got {snr}.")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"`n_corrector` must be an integer >= 0; got {n_corrector!r}.")


def sample(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x_T: Tensor | None = None,  # noqa: N803
    *,
    shape: Sequence[int] | None = None,
    method: str = "ddim",
    steps: int = 50,
    grid: str | Tensor | None = None,
    eps: float = 1e-3,
    eta: float = 0.0,
    variance: str = "posterior",
    set_alpha_to_one: bool | None = None,
    steps_offset: int = 0,
    rho: float = 7.0,
    lower_order_final: bool = True,
    predictor: str = "reverse-diffusion",
    snr: float = 0.16,
    n_corrector: int = 1,
    solver: str | None = None,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict | None = None,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | Callable[[int], Tensor] | None = None,
    noise_device: torch.device | str = "cpu",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> SampleResult:
    """Draw samples by integrating the reverse process from x_T ~ p_T down to t = eps (or to sigma = 0).

    Methods (``method``):
        'ddpm'         ancestral sampling, ``variance`` 'posterior' or 'beta'
        'ddim'         DDIM with ``eta`` in [0, 1]
        'dpmsolver++'  DPM-Solver++(2M), first-order warm-up and (``lower_order_final``) final steps
        'pc'           ``predictor`` 'reverse-diffusion' or 'euler-maruyama' + ``n_corrector`` Langevin steps (``snr``)
        'sde'          torchsde ``solver`` on the reverse SDE (fixed dt = (T - eps)/steps, or ``adaptive``)
        'ode'          torchdiffeq ``solver`` on the PF-ODE (adaptive with rtol/atol, or fixed-step on ``grid``)
    'sde:srk' and 'ode:rk4' are shorthands for method + solver. Formulas: see ``sdeflow.sampling.steppers``.

    Grids (``grid``): 'uniform', 'quadratic', 'logsnr', 'karras' (``rho``) on [eps, T]; 'leading', 'trailing',
    'linspace' on the discrete DDPM schedule (VPSDE; the default for networks labelled with ``DDPMTimesteps``,
    'leading' as in diffusers); or a strictly decreasing tensor of times. ``set_alpha_to_one``: the last step goes
    to abar = 1 (sigma = 0, returning the denoised x0_hat; the default on the discrete schedule, as in diffusers)
    or stops at abar_0 / t = eps (the default on continuous grids). DDIM on the discrete schedule reproduces
    diffusers' DDIMScheduler (epsilon prediction, same spacing and set_alpha_to_one) with the previous timestep
    read from the timestep array.

    Randomness is per sample: sample i uses seed_i = ``seed`` + i (or the i-th of a list of seeds, or seeds
    derived from ``generator``) for its x_T and its noise, drawn on ``noise_device`` (CPU by default, identical on
    every device), so a seeded sample does not depend on the batch size. ``noise`` replaces the step noise: a
    tensor [K, B, *sample_shape] (k-th slice = k-th draw) or a callable k -> [B, *sample_shape].
    Adaptive solvers choose steps from the whole batch's error, so their per-sample results agree across batch
    sizes only to the tolerance.

    Args:
        model: a ``ScoreModel`` or a plain callable score(x, t).
        sde: the forward SDE.
        x_T: starting points [B, *sample_shape]; drawn from the prior when None (then ``shape`` is required).
        callback: called with a ``StepInfo`` after each step (each evaluation for 'sde'/'ode').
    """
    t_start = time.perf_counter()
    method, solver = _split_method(method, solver)
    _check(steps, eta, variance, predictor, snr, n_corrector)
    if not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps}. Use e.g. eps=1e-3.")
    model = as_score_model(model, sde)
    if x_T is None:
        if shape is None:
            raise ValueError("Give `x_T` or `shape` = (B, *sample_shape), e.g. shape=(16, 2).")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"`shape` must be (B, *sample_shape) with positive sizes; got {shape}.")
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
    else:
        if not isinstance(x_T, Tensor) or x_T.ndim < 2:
            raise ValueError("`x_T` must be a tensor of shape [B, *sample_shape] (at least 2-D).")
        shape = tuple(x_T.shape)
        device = torch.device(device) if device is not None else x_T.device
        dtype = dtype or x_T.dtype

    discrete_model = isinstance(model.time_label, DDPMTimesteps)
    grid_given = grid is not None
    if grid is None:
        grid = "leading" if discrete_model and method in GRID_METHODS else DEFAULT_GRIDS.get(method, "uniform")
    if isinstance(grid, str) and grid not in CONTINUOUS_GRIDS + DISCRETE_SPACINGS:
        raise ValueError(f"Invalid grid {grid!r}. Must be one of {CONTINUOUS_GRIDS + DISCRETE_SPACINGS} or a tensor.")
    is_discrete = isinstance(grid, str) and grid in DISCRETE_SPACINGS
    if method in ("sde", "ode") and is_discrete:
        raise ValueError(f"Method {method!r} integrates in continuous time; use a grid from {CONTINUOUS_GRIDS}.")
    if set_alpha_to_one is None:
        set_alpha_to_one = is_discrete
    if set_alpha_to_one and method in ("sde", "ode"):
        raise ValueError(f"Method {method!r} ends at t = eps; `set_alpha_to_one=True` applies to {GRID_METHODS}.")
    n_train = model.time_label.N if discrete_model else 1000
    tgrid: TimeGrid | None = None
    if method != "sde" and not (method == "ode" and not _fixed(solver)):
        tgrid = time_grid(
            sde,
            steps,
            grid,
            eps=eps,
            rho=rho,
            set_alpha_to_one=set_alpha_to_one,
            N=n_train,
            steps_offset=steps_offset,
        )
    if method == "ode" and tgrid is None and grid_given:
        raise ValueError(f"The adaptive solver {solver!r} chooses its own steps; `grid` applies to fixed-step solvers.")
    if method == "ode" and tgrid is None:
        tgrid = time_grid(sde, 1, "uniform", eps=eps)  # adaptive: only the ends are used
    if method == "sde" and grid_given and not (isinstance(grid, str) and grid == "uniform"):
        raise ValueError("Method 'sde' steps with a fixed dt = (T - eps) / steps; `grid` does not apply.")

    seeds = per_sample_seeds(shape[0], seed, generator)
    sampler_steps = tgrid.steps if tgrid is not None else steps
    progress: list[int] = [0]

    def on_call() -> None:
        progress[0] += 1
        if callback is not None and method in ("sde", "ode"):
            callback(StepInfo(step=progress[0], total=-1, t=float("nan"), nfe=progress[0]))

    cmodel, counter = counted(model, on_call)
    sampler = _grid_sampler(method, eta, variance, lower_order_final, predictor, snr, n_corrector)
    per_step = getattr(sampler, "noise_per_step", 0)
    if method == "sde":
        per_step = 2 if solver == "srk" else 1
    max_draws = sampler_steps * per_step
    source = NoiseSource(
        seeds,
        shape[1:],
        dtype=dtype,
        device=device,
        max_draws=max_draws,
        noise_device=noise_device,
        explicit=noise,
    )
    if x_T is None:
        x_T = sde.prior_std * source.prior()  # noqa: N806
    x = x_T.to(device=device, dtype=dtype)

    with torch.no_grad():
        if method == "sde":
            from .solvers import solve_reverse_sde

            x = solve_reverse_sde(
                cmodel,
                sde,
                x,
                solver=solver,
                eps=eps,
                steps=steps,
                adaptive=adaptive,
                rtol=rtol,
                atol=atol,
                seeds=seeds,
                source=source,
            )
        elif method == "ode":
            from .solvers import solve_pf_ode

            x = solve_pf_ode(cmodel, sde, x, solver=solver, times=tgrid.t, rtol=rtol, atol=atol, options=options)
        else:
            ctx = StepContext(denoiser=Denoiser(cmodel, counter), noise=source, sde=sde)
            x = run_grid(sampler, x, tgrid, ctx, callback)
    status = "success" if bool(torch.isfinite(x).all()) else "nonfinite"
    fixed_grid = method in GRID_METHODS or (method == "ode" and _fixed(solver))
    return SampleResult(
        samples=x,
        nfe=counter.calls,
        status=status,
        method=method,
        solver=solver,
        steps=sampler_steps if fixed_grid or (method == "sde" and not adaptive) else 0,
        times=tgrid.t if fixed_grid else None,
        timesteps=tgrid.timesteps if fixed_grid else None,
        seeds=tuple(seeds),
        wall_time=time.perf_counter() - t_start,
    )


def _fixed(solver: str | None) -> bool:
    from .solvers import FIXED_ODE_SOLVERS

    return solver in FIXED_ODE_SOLVERS


def _grid_sampler(
    method: str,
    eta: float,
    variance: str,
    lower_order_final: bool,
    predictor: str,
    snr: float,
    n_corrector: int,
) -> DDPMStep | DDIMStep | DPMSolverPP2MStep | PCStep | None:
    if method == "ddpm":
        return DDPMStep(variance)
    if method == "ddim":
        return DDIMStep(eta)
    if method == "dpmsolver++":
        return DPMSolverPP2MStep(lower_order_final)
    if method == "pc":
        return PCStep(predictor, snr, n_corrector)
    return None
