"""Samplers: ``sample()`` (the front door); typed sampler and grid objects; the coefficient plans that every
fixed-grid sampler compiles to and the ONE loop that runs them; torchsde / torchdiffeq-backed solvers; the name
table shared by the CLI, ``compare`` and the exporter."""

from __future__ import annotations

from .api import SampleResult, compile_plan, denoised_trajectory, network_labels, sample
from .grids import (
    CONTINUOUS_GRIDS,
    DISCRETE_SPACINGS,
    DDPMSpacing,
    Grid,
    GridPoint,
    Karras,
    LogSNR,
    Quadratic,
    TimeGrid,
    Times,
    Timesteps,
    Uniform,
    ddpm_timesteps,
    time_grid,
)
from .many import sample_many
from .methods import DDIM, DDPM, DEIS, IPNDM, PC, DPMSolverPP, DPMSolverPPSDE, GridSampler, Heun, Sampler, UniPC
from .names import DEFAULT_GRIDS, GRIDS, SAMPLERS, make_grid, make_sampler
from .plan import Plan, run_plan
from .solvers import ODESolver, SDESolver
from .tuning import CalibrationReference, TuneResult, calibration_reference, load_grid, save_grid, tune_grid

__all__ = [
    "sample",
    "sample_many",
    "denoised_trajectory",
    "SampleResult",
    "compile_plan",
    "network_labels",
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
    "ODESolver",
    "SDESolver",
    "SAMPLERS",
    "GRIDS",
    "DEFAULT_GRIDS",
    "make_sampler",
    "make_grid",
    "Grid",
    "Uniform",
    "Quadratic",
    "LogSNR",
    "Karras",
    "DDPMSpacing",
    "Timesteps",
    "Times",
    "TimeGrid",
    "GridPoint",
    "time_grid",
    "ddpm_timesteps",
    "CONTINUOUS_GRIDS",
    "DISCRETE_SPACINGS",
    "Plan",
    "run_plan",
    "load_grid",
    "save_grid",
    "tune_grid",
    "TuneResult",
    "CalibrationReference",
    "calibration_reference",
]
