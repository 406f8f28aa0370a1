"""THE name table: sampler and grid names for the CLI, ``compare``, checkpoints and the exporter.

``make_sampler('unipc', order=3)`` builds a sampler object from its name and options; an option that does not
apply to that sampler is a ValueError naming it (nothing is silently ignored). 'ode:rk4' and 'sde:srk' are
shorthands for ``ODESolver(method='rk4')`` and ``SDESolver(method='srk')``. ``make_grid`` does the same for grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from .grids import DDPMSpacing, Grid, Karras, LogSNR, Quadratic, Times, Uniform
from .methods import DDIM, DDPM, DEIS, IPNDM, PC, DPMSolverPP, DPMSolverPPSDE, GridSampler, Heun, Sampler, UniPC
from .solvers import ODESolver, SDESolver

__all__ = ["SAMPLERS", "GRIDS", "make_sampler", "make_grid", "grid_option", "sampler_names"]

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls  # type: ignore[misc]
    for cls in (DDIM, DDPM, DPMSolverPP, DPMSolverPPSDE, UniPC, IPNDM, DEIS, Heun, PC, ODESolver, SDESolver)
}
GRIDS: dict[str, Any] = {
    "uniform": Uniform,
    "quadratic": Quadratic,
    "logsnr": LogSNR,
    "karras": Karras,
    "leading": lambda **kw: DDPMSpacing("leading", **kw),
    "trailing": lambda **kw: DDPMSpacing("trailing", **kw),
    "linspace": lambda **kw: DDPMSpacing("linspace", **kw),
}


def sampler_names() -> tuple[str, ...]:
    return tuple(SAMPLERS)


def make_sampler(spec: Sampler | str, **options: Any) -> Sampler:
    """A sampler object from a name (with options) or an object (returned as is; options are then an error)."""
    if isinstance(spec, Sampler):
        if options:
            raise ValueError(
                f"Options {sorted(options)} were given next to the sampler object {spec!r}; set them in the object, "
                f"e.g. {type(spec).__name__}({', '.join(f'{k}=...' for k in sorted(options))})."
            )
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"`sampler` must be a sampler object or a name from {tuple(SAMPLERS)}; got {spec!r}.")
    name, _, method = spec.partition(":")
    if name not in SAMPLERS:
        raise ValueError(
            f"Invalid sampler {spec!r}. Must be one of {tuple(SAMPLERS)} (or 'ode:<method>', 'sde:<method>')."
        )
    cls = SAMPLERS[name]
    if method:
        if cls not in (ODESolver, SDESolver):
            raise ValueError(f"Sampler {name!r} takes no ':method' suffix; only 'ode:<method>' and 'sde:<method>' do.")
        if "method" in options and options["method"] != method:
            raise ValueError(f"`sampler` names method {method!r} but `method` is {options['method']!r}; give it once.")
        options = {**options, "method": method}
    allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for key in options:
        if key not in allowed:
            raise ValueError(f"Option {key!r} does not apply to sampler {name!r}; its options are {allowed or 'none'}.")
    return cls(**{k: _plain(v) for k, v in options.items()})


def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers (np.float32(0.5) is a fine eta)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def make_grid(
    spec: Grid | str | torch.Tensor | Sequence[float] | np.ndarray | None, sampler: Sampler, discrete: bool
) -> Grid:
    """A grid object from a name, explicit times (a decreasing tensor/list) or an object. None gives the default:
    'leading' for networks on the DDPM timesteps (``discrete``, as diffusers), else the sampler's default grid."""
    if isinstance(spec, Grid):
        return spec
    if spec is None:
        if discrete and isinstance(sampler, GridSampler):
            return DDPMSpacing("leading")
        return GRIDS[DEFAULT_GRIDS.get(sampler.name, "uniform")]()
    if isinstance(spec, str):
        if spec not in GRIDS:
            raise ValueError(
                f"Invalid grid {spec!r}. Must be one of {tuple(GRIDS)}, a Grid object or a tensor of times."
            )
        return GRIDS[spec]()
    if isinstance(spec, (torch.Tensor, list, tuple, np.ndarray)):
        return Times(tuple(np.asarray(torch.as_tensor(spec, dtype=torch.float64)).tolist()))
    raise TypeError(f"`grid` must be a grid name, a Grid object or a tensor of times; got {type(spec).__name__}.")


def grid_option(grid: str | None = None, rho: float | None = None) -> Grid | str | None:
    """The grid a command line names: a name from ``GRIDS`` (passed on as is), a tuned grid's .json file
    (``sdeflow.sampling.load_grid``), ``Karras(rho)`` when the Karras exponent ``rho`` is given (with ``grid``
    None or 'karras'), or None (the sampler's default)."""
    if rho is not None:
        if grid not in (None, "karras"):
            raise ValueError(f"--rho (`rho`) applies to the karras grid; got --grid {grid}.")
        return Karras(rho=rho)
    if isinstance(grid, str) and grid.endswith(".json"):
        from .tuning import load_grid

        return load_grid(grid)
    return grid


# The grid each sampler uses when none is given (continuous-time networks): the grid with the lowest geometric-mean
# endpoint error over NFE 5-20 and six Gaussian-mixture oracles in benchmarks/bench_samplers.py (benchmarks/RESULTS.md,
# "Samplers": "Recommended grid per sampler"), for each sampler's default options. The stochastic samplers (ddpm,
# sde-dpmsolver++, pc) and the torchdiffeq solvers ('ode') are not measured there and keep their earlier grids.
DEFAULT_GRIDS: dict[str, str] = {
    "ddpm": "uniform",
    "ddim": "uniform",  # uniform 2.20e-01, quadratic 2.70e-01, logsnr 2.95e-01, karras 2.77e-01
    "dpmsolver++": "quadratic",  # 2M: quadratic 9.98e-02, logsnr 1.28e-01, uniform 1.59e-01, karras 1.66e-01
    "sde-dpmsolver++": "logsnr",
    "unipc": "quadratic",  # bh2 order 2: quadratic 7.00e-02, logsnr 9.06e-02, uniform 9.37e-02, karras 1.27e-01
    "ipndm": "quadratic",  # order 4: quadratic 5.97e-02, logsnr 7.56e-02, karras 9.46e-02, uniform 1.04e-01
    "deis": "logsnr",  # order 3: logsnr 7.44e-02, karras 8.19e-02, uniform and quadratic 1.10e-01
    "heun": "uniform",  # uniform 4.08e-01, karras 9.95e-01, logsnr 1.25e+00, quadratic 1.94e+00
    "pc": "uniform",
    "ode": "quadratic",
}
