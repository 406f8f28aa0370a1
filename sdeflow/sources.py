"""What a command samples from, tunes on or compares with: a trained checkpoint or the Gaussian-mixture oracle.

``model_source(checkpoint=...)`` loads ``sdeflow.load(checkpoint)``; ``model_source(oracle_dim=D)`` builds
``GaussianMixture.random(D, oracle_components)`` from the seed ``oracle_seed`` with its exact score under the VP SDE.
Either way the result says how to sample (model, SDE, sample shape, dtype) and how to record where it came from.
``likelihood_source`` adds the data set to evaluate and the prior (``sdeflow likelihood``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ._validate import check_int
from .data import Dataset
from .oracle import GaussianMixture
from .parametrization import ScoreModel
from .sde import SDE, VPSDE

__all__ = ["ModelSource", "model_source", "LikelihoodSource", "likelihood_source"]


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


@dataclass(frozen=True, eq=False)
class LikelihoodSource:
    """What ``sdeflow likelihood`` evaluates: the SDE, the score model, the data set, the prior log-density
    (None: the SDE's p_T), the prior for given labels (conditional oracles with the exact prior; else None) and a
    description of the model for the summary."""

    sde: SDE
    model: ScoreModel
    data: Dataset
    prior_logp: Callable[[Tensor], Tensor] | None
    class_prior: Callable[[Tensor], Callable[[Tensor], Tensor]] | None
    description: str


def likelihood_source(
    checkpoint: str | Path | None = None,
    *,
    oracle: bool = False,
    data: str | None = None,
    split: str | None = None,
    levels: int | None = None,
    scale: float | None = None,
    offset: float | None = None,
    oracle_dim: int = 2,
    oracle_components: int = 4,
    oracle_seed: int = 0,
    sde: str = "vp",
    prior: Literal["sde", "oracle"] = "sde",
    conditional: bool = False,
    limit: int | None = None,
) -> LikelihoodSource:
    """A trained ``checkpoint`` on ``data`` (default: the data set it was trained on; ``checkpoint_dataset``), or
    with ``oracle=True`` the exact score of a Gaussian mixture under the SDE named ``sde``: the mixture behind the
    'gmm' data set when ``data='gmm'``, else ``GaussianMixture.random(oracle_dim, oracle_components)`` from
    ``oracle_seed``, on ``data`` or, without it, on ``limit`` (default 1000) of its own samples labelled by their
    component. ``split`` defaults to 'test' for a built-in data set and 'train' for a .npy/.npz file; ``levels``,
    ``scale``, ``offset`` describe a user array. ``prior='oracle'`` uses the oracle's exact p_T (``oracle`` only).
    ``conditional=True`` takes the class-conditional score (the oracle's classes are its components).

    Raises ``ValueError`` for both or neither of ``checkpoint`` and ``oracle``, ``prior='oracle'`` without
    ``oracle``, and data whose samples do not have the oracle's dimension.
    """
    from .data import DATASETS, gmm_oracle, load_dataset
    from .sde import make_sde

    if bool(checkpoint) == bool(oracle):
        raise ValueError("Pass exactly one model: --checkpoint PATH (`checkpoint`, a trained network) or --oracle "
                         f"(`oracle=True`); got checkpoint={checkpoint!r}, oracle={oracle!r}.")
    if prior not in ("sde", "oracle"):
        raise ValueError(f"`prior` must be 'sde' (the SDE's p_T) or 'oracle' (the oracle's exact p_T); got {prior!r}.")
    if prior == "oracle" and not oracle:
        raise ValueError("--prior oracle (`prior='oracle'`) needs --oracle (only an oracle has an exact p_T).")
    scaling = {"levels": levels, "scale": scale, "offset": offset}
    if checkpoint:
        from .checkpoint import load
        from .likelihood_dataset import checkpoint_dataset

        ckpt = load(checkpoint)
        ds = checkpoint_dataset(ckpt, data, split, **scaling)
        return LikelihoodSource(ckpt.sde, ckpt.score_model, ds, None, None, f"checkpoint {checkpoint}")
    sde_obj = make_sde(sde)
    if data == "gmm":  # the built-in mixture data set: its own exact score
        gm, desc = gmm_oracle(), "oracle sdeflow.data.gmm_oracle()"
    else:
        gm = GaussianMixture.random(oracle_dim, oracle_components,
                                    generator=torch.Generator().manual_seed(oracle_seed))
        desc = (f"oracle GaussianMixture.random(dim={oracle_dim}, n_components={oracle_components}, "
                f"seed={oracle_seed})")
    if data:
        user = {k: v for k, v in scaling.items() if v is not None}
        ds = load_dataset(data, split or ("test" if data in DATASETS else "train"), **user)
    else:  # samples of the oracle, labelled by their component (for conditional likelihoods)
        x, comp = gm.sample_labelled(limit or 1000, generator=torch.Generator().manual_seed(oracle_seed + 1))
        ds = Dataset("oracle", x, None, 1.0, 0.0, (gm.dim,), labels=comp)
    if tuple(ds.sample_shape) != (gm.dim,):
        raise ValueError(
            f"The oracle has dimension {gm.dim} but the data has samples of shape {ds.sample_shape}; "
            "pass --oracle-dim to match."
        )
    exact_prior = prior == "oracle"
    if conditional:
        class_prior = (lambda labels: gm.prior_logp(sde_obj, labels=labels)) if exact_prior else None
        return LikelihoodSource(sde_obj, gm.conditional_score_model(sde_obj), ds, None, class_prior, desc)
    return LikelihoodSource(sde_obj, gm.score_model(sde_obj), ds, gm.prior_logp(sde_obj) if exact_prior else None,
                            None, desc)
