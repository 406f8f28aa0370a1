"""Parity with the real peer: diffusers' schedulers, run on the same network, the same integer timesteps and (for
the stochastic ones) the same noise, agree with sdeflow's plans to float32 rounding.

diffusers keeps its sigmas in float32 and steps in float32; sdeflow computes coefficients in float64 and applies
them in float32, so the two differ by rounding only: relative differences of 1e-6 and less."""

from __future__ import annotations

import math

import pytest
import torch

import sdeflow
from sdeflow.sampling import DDIM, DEIS, DPMSolverPP, DPMSolverPPSDE, Timesteps, UniPC

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed")

N = 1000


class TinyEpsNet(torch.nn.Module):
    """A fixed random eps-network on integer timesteps (what diffusers' UNets are): smooth in x and in the timestep."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=g) / math.sqrt(dim)
        self.b = torch.randn(dim, generator=g)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).reshape(-1, 1) / N
        return torch.tanh(x @ self.w + self.b * tt) + 0.3 * x * tt


def _model(dim: int = 5) -> tuple[sdeflow.ScoreModel, sdeflow.VPSDE]:
    sde = sdeflow.VPSDE()
    return sdeflow.ScoreModel(TinyEpsNet(dim), sde, "eps", sdeflow.DDPMTimesteps(N, integer=True)), sde


def _run_diffusers(scheduler, net, x_T, noise=None):
    x = x_T.clone()
    for k, t in enumerate(scheduler.timesteps):
        out = net(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        kwargs = {} if noise is None else {"variance_noise": noise[k]}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# diffusers' UniPC bh1 returns NaN on a last step to sigma = 0 (B(h) = -h = -inf times a zero residual), so bh1 is
# compared with final_sigmas_type='sigma_min' (sdeflow: set_alpha_to_one=False), where sdeflow returns the exact limit.
_BH1 = {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}
CASES = [
    ("unipc-bh1-1", lambda: diffusers.UniPCMultistepScheduler(solver_order=1, **_BH1), UniPC(1, "bh1")),
    ("unipc-bh1-2", lambda: diffusers.UniPCMultistepScheduler(solver_order=2, **_BH1), UniPC(2, "bh1")),
    ("unipc-bh1-3", lambda: diffusers.UniPCMultistepScheduler(solver_order=3, **_BH1), UniPC(3, "bh1")),
    ("unipc-bh2-1", lambda: diffusers.UniPCMultistepScheduler(solver_order=1, solver_type="bh2"), UniPC(1, "bh2")),
    ("unipc-bh2-2", lambda: diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2"), UniPC(2, "bh2")),
    ("unipc-bh2-3", lambda: diffusers.UniPCMultistepScheduler(solver_order=3, solver_type="bh2"), UniPC(3, "bh2")),
    ("dpm++2m", lambda: diffusers.DPMSolverMultistepScheduler(solver_order=2), DPMSolverPP(2)),
    ("dpm++3m", lambda: diffusers.DPMSolverMultistepScheduler(solver_order=3), DPMSolverPP(3, diffusers_3m=True)),
    ("deis-2", lambda: diffusers.DEISMultistepScheduler(solver_order=2), DEIS(2)),
    ("deis-3", lambda: diffusers.DEISMultistepScheduler(solver_order=3), DEIS(3)),
]


@pytest.mark.parametrize("steps", [6, 10, 20])
@pytest.mark.parametrize("name,make,sampler", CASES, ids=[c[0] for c in CASES])
def test_deterministic_schedulers_match_diffusers(name, make, sampler, steps):
    model, sde = _model()
    scheduler = make()
    scheduler.set_timesteps(steps)
    final_zero = float(scheduler.sigmas[-1]) == 0.0
    x_T = torch.randn(7, 5, generator=torch.Generator().manual_seed(steps))
    theirs = _run_diffusers(scheduler, model.net, x_T)
    grid = Timesteps(scheduler.timesteps.tolist())
    ours = sdeflow.sample(model, sde, x_T, sampler=sampler, grid=grid, set_alpha_to_one=final_zero)
    assert ours.nfe == steps
    assert _rel(ours.samples, theirs) < 2e-5, _rel(ours.samples, theirs)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_sde_dpmsolver_matches_diffusers_with_the_same_noise(order, steps):
    model, sde = _model()
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=order, algorithm_type="sde-dpmsolver++")
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(7, 5, generator=g)
    noise = torch.randn(steps, 7, 5, generator=g)
    theirs = _run_diffusers(scheduler, model.net, x_T, noise)
    # diffusers draws noise on every step, the last (to sigma = 0) included, where its coefficient is 0
    ours = sdeflow.sample(
        model,
        sde,
        x_T,
        sampler=DPMSolverPPSDE(order, diffusers_3m=order == 3),
        grid=Timesteps(scheduler.timesteps.tolist()),
        set_alpha_to_one=True,
        noise=noise[: steps - 1],
    )
    assert ours.noise_draws == steps - 1
    assert _rel(ours.samples, theirs) < 2e-5, _rel(ours.samples, theirs)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_matches_diffusers(spacing, eta, set_alpha_to_one):
    """DDIM on sdeflow's DDPM spacings = diffusers' DDIMScheduler where diffusers reads the previous timestep from
    its array: 'leading' always; for 'trailing' and 'linspace' diffusers computes it by the stride t - N // S, so
    they agree only where the array is evenly strided (here S = 10 for 'trailing'; 'linspace' differs: documented)."""
    model, sde = _model()
    steps = 10
    if spacing in ("leading", "linspace") and not set_alpha_to_one:
        # these arrays end at timestep 0 and the final point is abar_0: a zero-length last step (diffusers spends an
        # evaluation on it; sdeflow refuses it with a clear error)
        with pytest.raises(ValueError, match="does not lower the noise"):
            sdeflow.sample(
                model, sde, torch.zeros(2, 5), sampler=DDIM(eta), grid=spacing, steps=steps, set_alpha_to_one=False
            )
        return
    scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one, clip_sample=False)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(7, 5, generator=g)
    noise = torch.randn(steps, 7, 5, generator=g)
    x = x_T.clone()
    for k, t in enumerate(scheduler.timesteps):
        out = model.net(x, torch.full((7,), int(t), dtype=torch.long))
        x = scheduler.step(out, t, x, eta=eta, variance_noise=noise[k] if eta > 0 else None).prev_sample
    ours = sdeflow.sample(
        model,
        sde,
        x_T,
        sampler=DDIM(eta),
        grid=spacing,
        steps=steps,
        set_alpha_to_one=set_alpha_to_one,
        noise=noise[: steps - (1 if set_alpha_to_one else 0)] if eta > 0 else None,
    )
    strided = spacing == "leading" or spacing == "trailing"
    if strided:
        assert _rel(ours.samples, x) < 2e-5, _rel(ours.samples, x)
    else:
        assert _rel(ours.samples, x) > 1e-4  # diffusers' stride rule differs from its 'linspace' array
