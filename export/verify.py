"""Parity of an exported graph: onnxruntime against ``sdeflow.sample`` (eager PyTorch) on the same x_T and noise."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from sdeflow.parametrization import ScoreModel
from sdeflow.sampling import Grid, GridSampler, sample

from .runtime import OnnxSampler

__all__ = ["SamplerSpec", "parity", "relative_error", "float32_floor"]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole batch, in float64 (the parity measure)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.linalg.norm(b64))
    return float(np.linalg.norm(a64 - b64)) / (den if den > 0 else 1.0)


@dataclass(frozen=True)
class SamplerSpec:
    """What an exported graph runs: ``sdeflow.sample(model, sde, x_T, sampler=, steps=, grid=, eps=,
    set_alpha_to_one=, noise=)``; ``reference`` runs exactly that in PyTorch."""

    sampler: GridSampler
    grid: Grid
    eps: float
    set_alpha_to_one: bool | None

    def reference(
        self,
        model: ScoreModel,
        steps: int,
        x_T: torch.Tensor,
        noise: torch.Tensor | None,
        cond: torch.Tensor | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        result = sample(
            model,
            model.sde,
            x_T,
            sampler=self.sampler,
            steps=steps,
            grid=self.grid,
            eps=self.eps,
            set_alpha_to_one=self.set_alpha_to_one,
            noise=noise,
            cond=cond,
            guidance=guidance,
        )
        return result.samples

    def describe(self) -> str:
        return f"sdeflow.sample(sampler={self.sampler!r}, grid={self.grid.config()})"


def parity(
    model: ScoreModel,
    runner: OnnxSampler,
    spec: SamplerSpec,
    steps: int,
    batch_sizes: tuple[int, ...],
    seed: int = 0,
    guidance: float = 0.0,
) -> dict[int, float]:
    """Relative error of onnxruntime against ``spec.reference`` for each batch size, on the x_T and noise that
    ``runner.draw(B, seed, steps)`` gives (the documented per-sample generator). For a guided graph sample i gets
    class i mod K, guided with weight ``guidance``."""
    errors: dict[int, float] = {}
    k = runner.info.num_classes
    for b in batch_sizes:
        x_T, noise = runner.draw(int(b), seed, steps)
        z = None if noise is None else torch.from_numpy(noise)
        if k is None:
            ref = spec.reference(model, steps, torch.from_numpy(x_T), z)
            got = runner.run(x_T, noise, steps=steps, allow_nonfinite=True)
        else:
            labels = np.arange(int(b), dtype=np.int64) % k
            ref = spec.reference(model, steps, torch.from_numpy(x_T), z, torch.from_numpy(labels), guidance)
            got = runner.run(x_T, noise, steps=steps, allow_nonfinite=True, class_labels=labels, guidance=guidance)
        errors[int(b)] = relative_error(got, ref.numpy())
    return errors


def float32_floor(
    model: ScoreModel, runner: OnnxSampler, spec: SamplerSpec, steps: int, batch: int, seed: int
) -> float:
    """||x0_float32 - x0_float64|| / ||x0_float64|| of ``sdeflow.sample`` itself on the verification inputs: how
    much this sampler and grid amplify float32 rounding. Two float32 implementations (PyTorch's fused a + c b and
    onnxruntime's Mul then Add, say) cannot be expected to agree more closely. NaN when the network cannot run in
    float64 (a callable closing over float32 modules, say)."""
    x_T, noise = runner.draw(batch, seed, steps)
    z = None if noise is None else torch.from_numpy(noise)
    try:
        model64 = copy.deepcopy(model).double()
        x64 = spec.reference(model64, steps, torch.from_numpy(x_T).double(), None if z is None else z.double())
    except (RuntimeError, TypeError, ValueError):
        return float("nan")
    x32 = spec.reference(model, steps, torch.from_numpy(x_T), z)
    return relative_error(x32.numpy(), x64.numpy())
