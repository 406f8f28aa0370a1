"""Samplers: ``sample()`` (the front door), time grids, the discrete-grid step functions driven by one loop
(DDPM, DDIM, DPM-Solver++(2M), predictor-corrector) and the torchsde / torchdiffeq-backed solvers."""

from __future__ import annotations

from .api import DEFAULT_GRIDS, METHODS, SampleResult, sample
from .grids import CONTINUOUS_GRIDS, DISCRETE_SPACINGS, GridPoint, TimeGrid, ddpm_timesteps, time_grid
from .steppers import DDIMStep, DDPMStep, DPMSolverPP2MStep, PCStep, StepContext, StepInfo, run_grid

__all__ = [
    "sample",
    "SampleResult",
    "METHODS",
    "DEFAULT_GRIDS",
    "TimeGrid",
    "GridPoint",
    "time_grid",
    "ddpm_timesteps",
    "CONTINUOUS_GRIDS",
    "DISCRETE_SPACINGS",
    "StepInfo",
    "StepContext",
    "run_grid",
    "DDPMStep",
    "DDIMStep",
    "DPMSolverPP2MStep",
    "PCStep",
]
