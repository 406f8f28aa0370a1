"""What a command samples from, tunes on or compares with: a trained checkpoint or the Gaussian-mixture oracle.

``model_source(checkpoint=...)`` loads ``sdeflow.load(checkpoint)``; ``model_source(oracle_dim=D)`` builds
``GaussianMixture.random(D, oracle_components)`` from the seed ``oracle_seed`` with its exact score under the VP SDE.
Either way the result says how to sample (model, SDE, sample shape, dtype) and how to record where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._validate import check_int
from .oracle import GaussianMixture
from .parametrization import ScoreModel
from .sde import SDE, VPSDE

__all__ = ["ModelSource", "model_source"]


@dataclass(frozen=True, eq=False)
class ModelSource:
    """A score model and what belongs to it.

    Attributes:
        model: the score model (the oracle's exact score, or the checkpoint's EMA network).
        sde: its forward SDE.
        sample_shape: the shape of one sample.
        dtype: the dtype to compute in (float32 for a network, float64 for the oracle).
        record: where it came from, for metadata files: {'checkpoint': path} or {'oracle': {dim, components, seed}}.
        data_info: the checkpoint's data description (``Checkpoint.data_info``; None for the oracle).
        oracle: the mixture (None for a checkpoint).
    """

    model: ScoreModel
    sde: SDE
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    record: Mapping[str, Any] = field(default_factory=dict)
    data_info: Mapping[str, Any] | None = None
    oracle: GaussianMixture | None = None


def model_source(
    checkpoint: str | Path | None = None,
    *,
    oracle_dim: int | None = None,
    oracle_components: int = 4,
    oracle_seed: int = 0,
    conditional: bool = False,
    map_location: str | torch.device = "cpu",
) -> ModelSource:
    """The checkpoint folder ``checkpoint`` (loaded to ``map_location``) or, without it, the random mixture of
    ``oracle_dim`` dimensions and ``oracle_components`` components drawn from ``oracle_seed`` under ``VPSDE()``;
    ``conditional=True`` takes the oracle's class-conditional score (its classes are its components).

    Raises ``ValueError`` when both or neither of ``checkpoint`` and ``oracle_dim`` are given.
    """
    if (checkpoint is None) == (oracle_dim is None):
        raise ValueError(
            "Give `checkpoint` (--checkpoint DIR: a trained model) or `oracle_dim` (--oracle-dim D: a random "
            f"mixture), one of them; got checkpoint={checkpoint!r}, oracle_dim={oracle_dim!r}."
        )
    if checkpoint is not None:
        from .checkpoint import load

        ckpt = load(checkpoint, map_location=map_location)
        return ModelSource(ckpt.score_model, ckpt.sde, tuple(ckpt.sample_shape), torch.float32,
                           {"checkpoint": str(checkpoint)}, ckpt.data_info)
    assert oracle_dim is not None  # exactly one of the two (checked above)
    dim = check_int(oracle_dim, "oracle_dim", min=1)
    components = check_int(oracle_components, "oracle_components", min=1)
    gm = GaussianMixture.random(dim, components, generator=torch.Generator().manual_seed(oracle_seed))
    sde = VPSDE()
    model = gm.conditional_score_model(sde) if conditional else gm.score_model(sde)
    record = {"oracle": {"dim": dim, "components": components, "seed": oracle_seed}}
    return ModelSource(model, sde, (dim,), torch.float64, record, None, gm)
