"""DDIM on the discrete DDPM schedule against an independent re-implementation of the DDIMScheduler formulation of
diffusers (diffusers is not a dependency): epsilon prediction, linear betas 1e-4..0.02, N = 1000, clip_sample=False,
'leading' / 'trailing' / 'linspace' spacing, set_alpha_to_one True or False, eta = 0 and eta > 0 with the same noise.

The reference reads the previous timestep from the timestep array (MATH.md section 4). For 'leading' and
'trailing' spacing with S dividing N this is diffusers' own rule prev = t - N // S, which the test also checks;
for 'linspace' diffusers' stride rule is the known bug that the array rule fixes.
"""

import math

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, DDPMTimesteps, ScoreModel
from sdeflow.sampling import ddpm_timesteps, sample

N = 1000


class ReferenceDDIM:
    """DDIMScheduler.step (Song et al. 2021, eq. 12) written from the paper's symbols in diffusers' operation order."""

    def __init__(self, alphas_cumprod: torch.Tensor, set_alpha_to_one: bool):
        self.alphas_cumprod = alphas_cumprod  # float32 [N]
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else alphas_cumprod[0]

    @staticmethod
    def timesteps(steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
        if spacing == "linspace":
            return np.linspace(0, N - 1, steps).round()[::-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = N // steps
            return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
        ratio = N / steps
        return np.round(np.arange(N, 0, -ratio)).astype(np.int64) - 1

    def step(self, eps, t, x, prev_t, eta=0.0, noise=None):
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - abar_t
        x0 = (x - beta_prod_t**0.5 * eps) / abar_t**0.5
        variance = ((1 - abar_prev) / beta_prod_t) * (1 - abar_t / abar_prev)
        std = eta * variance**0.5
        direction = (1 - abar_prev - std**2) ** 0.5 * eps
        prev = abar_prev**0.5 * x0 + direction
        if eta > 0:
            prev = prev + std * noise
        return prev


class IntegerTimestepEpsNet(torch.nn.Module):
    """A small fixed eps-network taking integer timesteps, like diffusers' UNet2DModel (sinusoidal embedding)."""

    def __init__(self, dim=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim + 16, 64, generator=g) / 4
        self.w2 = torch.randn(64, dim, generator=g) / 8
        self.calls = []

    def forward(self, x, t):
        assert t.dtype == torch.long  # the network indexes integer timesteps
        self.calls.append(int(t[0]))
        freqs = torch.exp(-math.log(10000) * torch.arange(8) / 8)
        emb = t.to(x.dtype)[:, None] * freqs.to(x.dtype)[None]
        h = torch.cat([x, emb.sin(), emb.cos()], dim=1)
        return torch.tanh(h @ self.w1.to(x.dtype)) @ self.w2.to(x.dtype) + 0.5 * x


def _diffusers_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def test_schedule_and_spacings_match_diffusers_arrays():
    ours = VPSDE().discrete(N).alphas_cumprod
    theirs = _diffusers_alphas_cumprod().double()
    # the same schedule: ours in float64, diffusers' in float32 (cumprod rounding accumulates over 1000 factors)
    assert ((ours - theirs).abs() / ours).max() < 2e-5
    assert ddpm_timesteps(N, 50, "leading").tolist() == list(range(980, -1, -20))
    assert ddpm_timesteps(N, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert ddpm_timesteps(N, 10, "leading", steps_offset=1).tolist() == list(range(901, 0, -100))
    for steps in (7, 30, 50, 999):
        for spacing in ("leading", "trailing", "linspace"):
            assert ddpm_timesteps(N, steps, spacing).tolist() == ReferenceDDIM.timesteps(steps, spacing).tolist()


CASES = [
    (spacing, eta, one)
    for spacing in ("leading", "trailing", "linspace")
    for eta in (0.0, 0.7)
    for one in (True, False)
]


@pytest.mark.parametrize("spacing,eta,set_alpha_to_one", CASES)
def test_ddim_matches_reference_formulation(spacing, eta, set_alpha_to_one):
    steps, batch, dim = 50, 16, 4
    sde = VPSDE()
    net = IntegerTimestepEpsNet(dim)
    model = ScoreModel(net, sde, prediction="eps", time_label=DDPMTimesteps(N, integer=True))
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(batch, dim, generator=g)
    noise = torch.randn(steps, batch, dim, generator=g)
    ours = sample(
        model,
        sde,
        x_T,
        method="ddim",
        steps=steps,
        grid=spacing,
        eta=eta,
        set_alpha_to_one=set_alpha_to_one,
        noise=noise,
    )
    assert ours.nfe == steps
    our_calls = list(net.calls)
    net.calls.clear()

    ts = ReferenceDDIM.timesteps(steps, spacing)
    if spacing != "linspace":  # diffusers' stride rule agrees with the array here
        assert all(ts[i] - N // steps == ts[i + 1] for i in range(steps - 1)) and ts[-1] - N // steps < 0
    alphas_cumprod = sde.discrete(N).alphas_cumprod.float()  # the same table, stored in float32 as diffusers does
    ref = ReferenceDDIM(alphas_cumprod, set_alpha_to_one)
    x = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = net(x, torch.full((batch,), int(t), dtype=torch.long))
            prev_t = int(ts[i + 1]) if i + 1 < steps else -1
            x = ref.step(eps, int(t), x, prev_t, eta=eta, noise=noise[i])
    assert our_calls == net.calls == ts.tolist()  # the network saw exactly diffusers' integer timesteps
    # float32 rounding: a few ulps of the sample's scale, accumulated over 50 steps
    torch.testing.assert_close(ours.samples, x, rtol=2e-5, atol=2e-5 * float(x.abs().max()))
    assert ours.timesteps[:-1].tolist() == ts.tolist() and ours.timesteps[-1] == (-1 if set_alpha_to_one else 0)


def test_ddim_with_diffusers_float32_schedule_agrees_to_schedule_precision():
    """With diffusers' own float32 cumprod table the samples differ only by that table's rounding (~1e-5)."""
    sde = VPSDE()
    net = IntegerTimestepEpsNet(4)
    model = ScoreModel(net, sde, prediction="eps", time_label=DDPMTimesteps(N, integer=True))
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    ours = sample(model, sde, x_T, method="ddim", steps=50).samples
    ref = ReferenceDDIM(_diffusers_alphas_cumprod(), set_alpha_to_one=True)
    ts = ReferenceDDIM.timesteps(50, "leading")
    x = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = net(x, torch.full((16,), int(t), dtype=torch.long))
            x = ref.step(eps, int(t), x, int(ts[i + 1]) if i + 1 < 50 else -1)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4 * float(x.abs().max()))


def test_ddpm_step_on_discrete_schedule_is_the_math_md_formula():
    """x_{i-1} = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(1 - beta_i) + sqrt(var_i) z on all N timesteps."""
    sde = VPSDE()
    sched = sde.discrete(N)
    net = IntegerTimestepEpsNet(3, seed=4)
    model = ScoreModel(net, sde, prediction="eps", time_label=DDPMTimesteps(N, integer=True))
    x_T = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(N, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for variance in ("posterior", "beta"):
        ours = sample(model, sde, x_T, method="ddpm", steps=N, variance=variance, noise=noise, dtype=torch.float64)
        x, b, ab = x_T.clone(), sched.betas, sched.alphas_cumprod
        with torch.no_grad():
            for k, i in enumerate(range(N - 1, -1, -1)):
                eps = net(x, torch.full((6,), i, dtype=torch.long))
                x = (x - b[i] / (1 - ab[i]).sqrt() * eps) / (1 - b[i]).sqrt()
                if i > 0:
                    var = b[i] * (1 - ab[i - 1]) / (1 - ab[i]) if variance == "posterior" else b[i]
                    x = x + var.sqrt() * noise[k]
        torch.testing.assert_close(ours.samples, x, rtol=1e-9, atol=1e-9)
