"""sdeflow: score-based diffusion models as differential equations.

Forward SDEs, the reverse SDE (torchsde) and probability-flow ODE (torchdiffeq), diffusion samplers, exact
likelihoods, training, and ONNX export (``sdeflow.export``).
"""

from __future__ import annotations

from .checkpoint import Checkpoint, load, save
from .compare import CompareResult, compare
from .data import DATASETS, Dataset, load_dataset
from .likelihood import BitsPerDimResult, LikelihoodError, LikelihoodResult, bits_per_dim, log_likelihood
from .oracle import GaussianMixture
from .parametrization import ContinuousTime, DDPMTimesteps, LogNoiseLevel, ScoreModel, ScoreSDETime, TimeLabel
from .processes import ForwardSDE, ProbabilityFlowODE, ReverseSDE
from .sampling import SampleResult, sample, tune_grid
from .sde import SDE, VESDE, VPSDE, DiscreteSchedule, SubVPSDE, sde_from_config
from .train import TrainConfig, TrainResult  # the function is sdeflow.train.train (the module keeps its name)

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "DiscreteSchedule",
    "sde_from_config",
    "ScoreModel",
    "TimeLabel",
    "ContinuousTime",
    "DDPMTimesteps",
    "ScoreSDETime",
    "LogNoiseLevel",
    "ForwardSDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "GaussianMixture",
    "sample",
    "SampleResult",
    "tune_grid",
    "compare",
    "CompareResult",
    "Dataset",
    "DATASETS",
    "load_dataset",
    "Checkpoint",
    "save",
    "load",
    "TrainConfig",
    "TrainResult",
    "log_likelihood",
    "bits_per_dim",
    "LikelihoodResult",
    "BitsPerDimResult",
    "LikelihoodError",
    "__version__",
]
