"""Parity of an exported DDIM graph: onnxruntime against ``sdeflow.sample(method='ddim')`` (eager PyTorch) on
the same x_T and step noise."""

from __future__ import annotations

import numpy as np
import torch

from ..parametrization import ScoreModel
from .runtime import OnnxSampler

__all__ = ["parity", "relative_error", "torch_ddim"]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole batch, in float64 (the parity measure)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.linalg.norm(b64))
    return float(np.linalg.norm(a64 - b64)) / (den if den > 0 else 1.0)


def torch_ddim(
    score_model: ScoreModel,
    config: dict,
    steps: int,
    x_T: torch.Tensor,  # noqa: N803
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_0 from ``sdeflow.sample(method='ddim')`` with the exported graph's settings (``config``)."""
    from ..sampling import DDIM, DDPMSpacing, Karras, sample

    grid = config["grid"]
    if grid == "karras":
        grid = Karras(rho=config["rho"])
    elif grid in ("leading", "trailing", "linspace"):
        grid = DDPMSpacing(grid, offset=config["steps_offset"])
    result = sample(
        score_model,
        score_model.sde,
        x_T,
        sampler=DDIM(eta=config["eta"]),
        steps=steps,
        grid=grid,
        eps=config["eps"],
        set_alpha_to_one=config["set_alpha_to_one"],
        noise=None if noise is None else (lambda k: noise[k]),
    )
    return result.samples


def parity(
    score_model: ScoreModel, sampler: OnnxSampler, config: dict, steps: int, batch_sizes: tuple[int, ...], seed: int = 0
) -> tuple[dict[int, float], str]:
    """Relative error of onnxruntime against sdeflow.sample for each batch size, and the reference's name."""
    errors: dict[int, float] = {}
    for b in batch_sizes:
        x_T, noise = sampler.draw(int(b), seed, steps)  # noqa: N806
        ref = torch_ddim(
            score_model, config, steps, torch.from_numpy(x_T), None if noise is None else torch.from_numpy(noise)
        )
        errors[int(b)] = relative_error(sampler.run(x_T, noise, steps=steps), ref.numpy())
    return errors, "sdeflow.sample(method='ddim')"
