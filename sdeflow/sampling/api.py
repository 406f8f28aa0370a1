"""``sdeflow.sample``: one front door to every sampler, returning one frozen ``SampleResult``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validate import bad_value, check_batch, check_device, check_int, model_signature
from ..parametrization import DDPMTimesteps, ScoreModel, as_score_model
from ..progress import Progress
from ..sde import SDE
from ..status import Status
from .evaluate import CountingNet
from .grids import Grid, TimeGrid, time_grid
from .methods import GridSampler, Sampler
from .names import make_grid, make_sampler
from .noise import NoiseSource, per_sample_seeds
from .plan import Plan, run_plan
from .solvers import ODESolver, SDESolver

__all__ = ["sample", "SampleResult", "compile_plan", "network_labels", "denoised_trajectory"]


@dataclass(frozen=True)
class SampleResult:
    """The result of ``sample``.

    samples: [B, *sample_shape]; nfe: network evaluations actually made (EDM counting); status: 'success' or
    'nonfinite' (a NaN or inf in the samples); sampler: the sampler object; steps: the grid's steps (0 for adaptive
    solvers); times: the grid's times (float64; None for adaptive solvers and torchsde); timesteps: the DDPM
    timesteps on the discrete schedule (-1 marks the final abar = 1 point); noise_draws: standard normal draws of
    the sample's shape the sampler made (the K of an explicit ``noise`` [K, B, ...]); seeds: the per-sample seeds;
    wall_time: seconds.
    """

    samples: Tensor
    nfe: int
    status: Status
    sampler: Sampler
    steps: int
    times: Tensor | None
    timesteps: Tensor | None
    noise_draws: int
    seeds: tuple[int, ...]
    wall_time: float

    @property
    def method(self) -> str:
        """The sampler's name in the name table ('ddim', 'unipc', 'ode', ...)."""
        return self.sampler.name


def _as_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"`{name}` must be an integer >= {lo}; got {value!r}. Use e.g. {name}=50.")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number; got {type(value).__name__}.")
    return float(value)


def compile_plan(
    model: ScoreModel,
    sde: SDE,
    sampler: GridSampler,
    grid: Grid,
    steps: int,
    *,
    eps: float = 1e-3,
    set_alpha_to_one: bool | None = None,
) -> Plan:
    """The coefficient plan ``sample`` runs for a fixed-grid sampler (also what the ONNX exporter unrolls)."""
    tgrid = build_grid(model, sde, grid, steps, eps=eps, set_alpha_to_one=set_alpha_to_one)
    return sampler.plan(tgrid, model.prediction, sde)


def build_grid(
    model: ScoreModel, sde: SDE, grid: Grid, steps: int, *, eps: float, set_alpha_to_one: bool | None
) -> TimeGrid:
    if set_alpha_to_one is None:
        set_alpha_to_one = grid.discrete
    if not isinstance(set_alpha_to_one, (bool, np.bool_)):
        raise TypeError(f"`set_alpha_to_one` must be True, False or None; got {set_alpha_to_one!r}.")
    n_train = model.time_label.N if isinstance(model.time_label, DDPMTimesteps) else 1000
    tgrid = grid.build(sde, steps, eps=eps, set_alpha_to_one=bool(set_alpha_to_one), N=n_train)
    lam = torch.log(tgrid.alpha) - torch.log(tgrid.sigma)
    if not bool((lam[1:] > lam[:-1]).all()):
        raise ValueError(
            f"The grid {grid.config()} has a step that does not lower the noise (log-SNR not strictly increasing: "
            "e.g. a final point equal to the last timestep). Use set_alpha_to_one=True or a grid with distinct points."
        )
    return tgrid


def network_labels(model: ScoreModel, tgrid: TimeGrid, points: Sequence[int]) -> list[Tensor]:
    """The label the network receives at each of the grid ``points`` (0-d tensors): the integer DDPM timestep on the
    discrete schedule for ``DDPMTimesteps`` networks (exactly what DDPM/DDIM implementations pass), else
    ``model.time_label(t)`` with t clamped to [t_min, T] as ``ScoreModel`` does."""
    out = []
    for k in points:
        ts = None if tgrid.timesteps is None else int(tgrid.timesteps[k])
        if ts is not None and ts >= 0 and isinstance(model.time_label, DDPMTimesteps):
            out.append(torch.tensor(ts, dtype=torch.long if model.time_label.integer else torch.float64))
        else:
            t = tgrid.t[k].clamp(model.t_min, model.sde.T)
            out.append(model.time_label(t.reshape(1)).reshape(()))
    return out


def sample(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x_T: Tensor | None = None,
    *,
    sampler: Sampler | str = "ddim",
    method: str | None = None,
    steps: int = 50,
    grid: Grid | str | Tensor | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    eps: float = 1e-3,
    set_alpha_to_one: bool | None = None,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | Callable[[int], Tensor] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable[[Progress], None] | None = None,
    cond: Any = None,
    guidance: float | None = None,
    guidance_rescale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    **options: Any,
) -> SampleResult:
    """Draw samples by integrating the reverse process from x_T ~ p_T down to t = eps (or to sigma = 0).

    ``sampler`` is a sampler object (``DDIM(eta=0.3)``, ``DPMSolverPP(order=3)``, ``UniPC(order=3)``, ``IPNDM()``,
    ``DEIS()``, ``Heun()``, ``DDPM()``, ``PC()``, ``DPMSolverPPSDE()``, ``ODESolver('dopri5')``,
    ``SDESolver('euler')``) or its name from ``sdeflow.sampling.SAMPLERS`` with the options as keyword arguments
    (``sampler='unipc', order=3``; ``method=`` is the same as a name). An option that does not apply to the
    sampler is a ValueError. 'ode:rk4' and 'sde:srk' are shorthands for the torchdiffeq / torchsde methods.

    ``grid`` is a ``Grid`` (``Uniform()``, ``Quadratic()``, ``LogSNR()``, ``Karras(rho)``, ``DDPMSpacing('leading',
    offset)``, ``Timesteps([...])``, ``Times([...])`` - e.g. a tuned grid), a name ('uniform', 'quadratic',
    'logsnr', 'karras', 'leading', 'trailing', 'linspace') or a decreasing tensor of times; ``steps`` is the number
    of grid steps (explicit grids carry their own). Default: 'leading' for networks labelled ``DDPMTimesteps`` (as
    diffusers), else the sampler's default grid (``sdeflow.sampling.names.DEFAULT_GRIDS``).
    ``set_alpha_to_one``: the last step goes to abar = 1 (sigma = 0: the sample is the denoised x0_hat; the default
    on the DDPM timesteps, as in diffusers) or stops at abar_0 / t = eps (the default on continuous grids).

    Every fixed-grid sampler is compiled to a float64 coefficient plan (``compile_plan``) that one loop executes
    (``sdeflow.sampling.plan``). Randomness is per sample: sample i uses seed_i = ``seed`` + i (or the i-th of a list
    of seeds, or seeds derived from ``generator``) for its x_T and its noise, drawn by numpy on the host
    (``sdeflow.sampling.noise``: the generator the torch-free ONNX runtime reproduces), identical on every device, so
    a seeded sample does not depend on the batch size. ``noise`` replaces
    the step noise: a tensor [K, B, *sample_shape] with K = the plan's ``noise_draws`` (k-th slice = k-th draw) or a
    callable k -> [B, *sample_shape].

    Args:
        model: a ``ScoreModel`` or a plain callable score(x, t).
        sde: the forward SDE.
        x_T: starting points [B, *sample_shape]; drawn from the prior when None (then ``shape`` is required).
        cond: for a class-conditional model (``model.num_classes`` = K): a class label for every sample or one per
            sample ([B], 0..K-1; K = no label). None samples a conditional model unconditionally (null class).
        guidance: the classifier-free guidance weight w (docs/math.md section 10; default 0 = plain conditional):
            out = out(x | c) + w (out(x | c) - out(x | none)) on the raw network output, i.e. diffusers'
            guidance_scale = 1 + w. For w != 0 the conditional and unconditional passes are ONE batched network
            call on 2B rows, and ``nfe`` counts network calls: such a call is 1 NFE (twice the rows of an
            unguided one), so guided and unguided runs of a sampler report the same NFE.
        guidance_rescale: phi in [0, 1], guidance rescale (Lin et al. 2024; diffusers' ``guidance_rescale``): the
            guided output is pulled towards the per-sample standard deviation of the conditional output.
        guidance_interval: (t_lo, t_hi): guide only while t_lo <= t <= t_hi (Kynkaanniemi et al. 2024); elsewhere
            w = 0 and an evaluation is one pass of B rows.
        callback: called with a ``sdeflow.progress.Progress`` ('sample') after each grid step: info t and nfe,
            tensors denoised (x0_hat); for ODE/SDE solvers after each network evaluation: done = nfe of total
            ``math.inf``, info nfe.
    """
    t_start = time.perf_counter()
    if method is not None:
        if not (isinstance(sampler, str) and sampler == "ddim"):
            raise ValueError("Give the sampler once: `sampler=` (object or name) or `method=` (name), not both.")
        sampler = method
    smp = make_sampler(sampler, **options)
    steps = _as_int("steps", steps, 1)
    eps = _as_float("eps", eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps}. Use e.g. eps=1e-3.")
    model = as_score_model(model, sde)
    x_T, shape, device, dtype = _check_start(model, x_T, shape, device, dtype)
    model = _bind_condition(model, cond, guidance, shape[0], guidance_rescale, guidance_interval)
    discrete_model = isinstance(model.time_label, DDPMTimesteps)
    seeds = per_sample_seeds(shape[0], seed, generator)

    plan: Plan | None = None
    tgrid: TimeGrid | None = None
    if isinstance(smp, GridSampler):
        gobj = make_grid(grid, smp, discrete_model)
        plan = compile_plan(model, sde, smp, gobj, steps, eps=eps, set_alpha_to_one=set_alpha_to_one)
        tgrid = plan.grid
        max_draws = plan.noise_draws
    elif isinstance(smp, ODESolver):
        if set_alpha_to_one:
            raise ValueError("ODE solvers end at t = eps; `set_alpha_to_one=True` applies to the grid samplers.")
        if smp.adaptive:
            if grid is not None:
                raise ValueError(f"The adaptive solver {smp.method!r} chooses its own steps; `grid` does not apply.")
            tgrid = time_grid(sde, 1, "uniform", eps=eps)  # only the ends are used
        else:
            gobj = make_grid(grid, smp, False)
            if gobj.discrete:
                raise ValueError(f"ODE solvers integrate in continuous time; got the discrete grid {gobj.config()}.")
            if smp.method in ("explicit_adams", "implicit_adams", "fixed_adams") and gobj.name != "uniform":
                raise ValueError(
                    f"torchdiffeq's {smp.method!r} uses constant-step coefficients: on the non-uniform grid "
                    f"{gobj.name!r} it loses its order (measured: 2 instead of 4). Use grid='uniform' or another "
                    "method."
                )
            tgrid = build_grid(model, sde, gobj, steps, eps=eps, set_alpha_to_one=False)
        max_draws = 0
    else:
        assert isinstance(smp, SDESolver)
        if grid is not None:
            raise ValueError("SDE solvers step with a fixed dt = (T - eps) / steps; `grid` does not apply.")
        if set_alpha_to_one:
            raise ValueError("SDE solvers end at t = eps; `set_alpha_to_one=True` applies to the grid samplers.")
        max_draws = steps * (2 if smp.method == "srk" else 1)

    source = NoiseSource(
        seeds,
        shape[1:],
        dtype=dtype,
        device=device,
        max_draws=max_draws,
        explicit=_check_noise(noise, max_draws, shape, plan is not None),
    )
    if x_T is None:
        x_T = sde.prior_std * source.prior()
    x = x_T.to(device=device, dtype=dtype)

    counter = CountingNet(model.net)
    with torch.no_grad():
        if plan is not None:
            labels = [lab.to(device) for lab in network_labels(model, plan.grid, [e.point for e in plan.evals])]

            def net(x_in: Tensor, i: int) -> Tensor:
                lab = labels[i]
                lab = lab.to(x_in.dtype) if lab.is_floating_point() else lab
                out = counter(x_in, lab.expand(x_in.shape[0]))
                if out.shape != x_in.shape:
                    raise ValueError(
                        f"The network returned shape {tuple(out.shape)} for input shape {tuple(x_in.shape)}; a "
                        "score network must return a tensor of the input's shape."
                    )
                return out

            x = run_plan(plan, net, x, source, callback)
        else:
            wrapped = ScoreModel(counter, model.sde, model.prediction, model.time_label, model.t_min)
            if callback is not None:
                counter.on_call = lambda: callback(
                    Progress("sample", counter.calls, math.inf, {"nfe": counter.calls})
                )
            if isinstance(smp, SDESolver):
                from .solvers import solve_reverse_sde

                rtol, atol = smp.tolerances()
                x = solve_reverse_sde(
                    wrapped,
                    sde,
                    x,
                    solver=smp.method,
                    eps=eps,
                    steps=steps,
                    adaptive=smp.adaptive,
                    rtol=rtol,
                    atol=atol,
                    seeds=seeds,
                    source=source,
                )
            else:
                from .solvers import solve_pf_ode

                assert isinstance(smp, ODESolver) and tgrid is not None
                rtol, atol = smp.tolerances()
                x = solve_pf_ode(
                    wrapped, sde, x, solver=smp.method, times=tgrid.t, rtol=rtol, atol=atol, options=smp.options
                )
    status: Status = "success" if bool(torch.isfinite(x).all()) else "nonfinite"
    fixed = plan is not None or (isinstance(smp, ODESolver) and not smp.adaptive)
    n_steps = (
        tgrid.steps
        if fixed and tgrid is not None
        else (steps if isinstance(smp, SDESolver) and not smp.adaptive else 0)
    )
    return SampleResult(
        samples=x,
        nfe=counter.calls,
        status=status,
        sampler=smp,
        steps=n_steps,
        times=tgrid.t if fixed and tgrid is not None else None,
        timesteps=tgrid.timesteps if fixed and tgrid is not None else None,
        noise_draws=source.draws,
        seeds=tuple(seeds),
        wall_time=time.perf_counter() - t_start,
    )


def _bind_condition(
    model: ScoreModel,
    cond: Any,
    guidance: float | None,
    batch: int,
    rescale: float | None = None,
    interval: tuple[float, float] | None = None,
) -> ScoreModel:
    """The model ``sample`` runs: conditioned (and guided) on ``cond``; a conditional model without ``cond`` runs on
    the null class."""
    from ..conditioning import check_labels

    if cond is None:
        given = [n for n, v in (("guidance", guidance), ("guidance_rescale", rescale),
                                 ("guidance_interval", interval)) if v is not None]
        if given:
            name = given[0]
            raise ValueError(f"`{name}` was given without `cond`; pass the class labels to guide towards, e.g. "
                             "cond=7, guidance=2.0.")
        if model.num_classes is None:
            return model
        return model.conditioned(model.num_classes)
    if model.num_classes is not None:
        cond = check_labels(cond, "cond", model.num_classes, batch=batch)
    return model.conditioned(cond, 0.0 if guidance is None else guidance, rescale=0.0 if rescale is None else rescale,
                             interval=interval)


def _check_start(
    model: ScoreModel,
    x_T: Tensor | None,
    shape: Sequence[int] | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> tuple[Tensor | None, tuple[int, ...], torch.device, torch.dtype]:
    """x_T (or ``shape``), the device and the dtype, checked against what the model's network declares."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise bad_value("dtype", "torch.float32 or torch.float64", dtype, error=TypeError)
    want, model_device = model_signature(model)
    dev = check_device(device) if device is not None else None
    if x_T is None:
        if shape is None:
            raise ValueError("Give `x_T` or `shape` = (B, *sample_shape), e.g. shape=(16, 2).")
        shp = tuple(check_int(s, "shape", min=1) for s in shape)
        if len(shp) < 2:
            raise bad_value("shape", "(B, *sample_shape) with positive sizes", shape, "E.g. shape=(16, 2).")
        if want is not None and shp[1:] != want:
            raise bad_value("shape", f"(B, {', '.join(map(str, want))}) to match the model", shape)
        return None, shp, dev or model_device or torch.device("cpu"), dtype or torch.float32
    x_T = check_batch(x_T, "x_T", sample_shape=want)
    return x_T, tuple(x_T.shape), dev or x_T.device, dtype or x_T.dtype


def _check_noise(
    noise: Tensor | Callable[[int], Tensor] | None, draws: int, shape: tuple[int, ...], exact: bool
) -> Tensor | Callable[[int], Tensor] | None:
    if noise is None or callable(noise) and not isinstance(noise, Tensor):
        return noise
    if not isinstance(noise, Tensor):
        raise TypeError(
            f"`noise` must be a torch.Tensor [K, B, *sample_shape] or a callable; got {type(noise).__name__}."
        )
    if draws == 0:
        raise ValueError("`noise` was given but this sampler draws no noise (deterministic); leave it out.")
    want = (draws, *shape)
    ok = tuple(noise.shape) == want if exact else (noise.ndim == len(want) and tuple(noise.shape[1:]) == want[1:])
    if not ok or (not exact and noise.shape[0] < draws):
        raise ValueError(
            f"`noise` must have shape [K, B, *sample_shape] = {list(want)} (K = {draws} draws of this sampler and "
            f"grid); got {list(noise.shape)}."
        )
    if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
        raise ValueError("`noise` must be a finite floating-point tensor (standard normal draws).")
    return noise


def denoised_trajectory(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor], sde: SDE, **sample_kwargs: Any
) -> tuple[SampleResult, list[Tensor]]:
    """Sample as ``sample(model, sde, **sample_kwargs)`` and collect the denoised estimate x0_hat after every grid
    step (``Progress.tensors['denoised']``): a picture of how a sampler converges (``sdeflow.images.save_trajectory``).
    Fixed-grid samplers only (ODE/SDE solvers report no denoised estimate)."""
    if "callback" in sample_kwargs:
        raise ValueError("denoised_trajectory uses the progress callback itself; do not pass `callback`.")
    frames: list[Tensor] = []

    def collect(event: Progress) -> None:
        if "denoised" not in event.tensors:
            raise ValueError("this sampler reports no denoised estimate (torchsde/torchdiffeq solvers own the steps).")
        frames.append(event.tensors["denoised"].detach().cpu())

    result = sample(model, sde, callback=collect, **sample_kwargs)
    return result, frames
