"""Denoising score matching and the DDPM loss against the Gaussian-mixture oracle's exact score."""

from __future__ import annotations

import math

import pytest
import torch

from sdeflow import VESDE, VPSDE, ContinuousTime, DDPMTimesteps, ScoreModel, SubVPSDE
from sdeflow.data import gmm_oracle
from sdeflow.losses import DDPMLoss, DSMLoss

GM = gmm_oracle()
SHIFT = torch.tensor([0.3, -0.2])


def _paired(loss: DSMLoss, sde, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample losses of the exact score and of the score + SHIFT with common random numbers (same x0, t, eps)."""
    g = torch.Generator().manual_seed(seed)
    x0 = GM.sample(n, g, torch.float64)
    t = loss.sample_t(sde, n, g).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    exact = ScoreModel(lambda x, tt: GM.score(x, tt, sde), sde, "score", t_min=1e-6)
    shifted = ScoreModel(lambda x, tt: GM.score(x, tt, sde) + SHIFT.double(), sde, "score", t_min=1e-6)
    return loss(exact, x0, t=t, noise=noise), loss(shifted, x0, t=t, noise=noise), t


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("loss", [DSMLoss("sigma2"), DSMLoss("likelihood", importance_sampling=True)],
                         ids=["sigma2", "likelihood-is"])
def test_exact_score_minimises_dsm(sde, loss):
    # L(s + c) - L(s) = E[w(t) sigma^2 ||c||^2] + 2 E[w sigma^2 c.(s - target)]; the cross term has mean zero exactly
    # when s is the true score, so the paired difference must equal the closed-form first term.
    base, shifted, t = _paired(loss, sde)
    diff = shifted - base
    expected = loss.weight(sde, t) * sde.sigma(t) ** 2 * SHIFT.double().pow(2).sum()
    resid = diff - expected
    se = resid.std() / math.sqrt(len(resid))
    assert diff.mean() > 0
    assert abs(resid.mean()) < 5 * se


def test_importance_sampling_is_unbiased():
    sde = VPSDE()
    plain, _, _ = _paired(DSMLoss("likelihood"), sde, n=40000, seed=1)
    is_, _, _ = _paired(DSMLoss("likelihood", importance_sampling=True), sde, n=40000, seed=2)
    se = math.hypot(plain.std() / math.sqrt(len(plain)), is_.std() / math.sqrt(len(is_)))
    assert abs(plain.mean() - is_.mean()) < 5 * se
    assert is_.std() < plain.std()  # the point of importance sampling: lower variance


def test_importance_sampled_times_follow_the_log_snr():
    sde, loss = VPSDE(), DSMLoss("likelihood", importance_sampling=True)
    t = loss.sample_t(sde, 20000, torch.Generator().manual_seed(0)).double()
    lam = sde.log_snr(t)
    lo, hi = sde.log_snr(torch.tensor([1.0, 1e-5], dtype=torch.float64))
    u = (lam - lo) / (hi - lo)  # uniform on [0, 1] under importance sampling
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
    assert t.min() >= 1e-5 and t.max() <= 1.0


def test_eps_prediction_with_sigma2_weighting_is_the_ddpm_loss():
    sde = VPSDE()
    net = torch.nn.Linear(2, 2).double()
    model = ScoreModel(lambda x, lab: net(x), sde, "eps", ContinuousTime())
    g = torch.Generator().manual_seed(0)
    x0 = GM.sample(64, g, torch.float64)
    t = DSMLoss().sample_t(sde, 64, g).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    got = DSMLoss("sigma2")(model, x0, t=t, noise=noise)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    torch.testing.assert_close(got, (net(a * x0 + s * noise) - noise).pow(2).sum(1))


def test_ddpm_loss_minimised_by_the_exact_discrete_eps():
    sde, n_steps = VPSDE(), 1000
    abar = sde.discrete(n_steps).alphas_cumprod
    # the continuous time with alpha(t)^2 = abar_i has the same perturbation kernel as timestep i
    t_of = sde.t_from_log_snr(0.5 * torch.log(abar / (1 - abar)))

    def eps_net(shift: float):
        def net(x, i):
            i = i.long()
            return -torch.sqrt(1 - abar[i])[:, None] * GM.score(x, t_of[i], sde) + shift
        return net

    g = torch.Generator().manual_seed(0)
    x0 = GM.sample(20000, g, torch.float64)
    # the last few abar_i lie just beyond the continuous alpha(1)^2, where the oracle is not defined
    steps = torch.randint(0, 990, (20000,), generator=g)
    assert DDPMLoss().sample_timesteps(20000, n_steps, g).unique().numel() == n_steps
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    label = DDPMTimesteps(n_steps, integer=True)
    exact = DDPMLoss()(ScoreModel(eps_net(0.0), sde, "eps", label), x0, timesteps=steps, noise=noise)
    shifted = DDPMLoss()(ScoreModel(eps_net(0.1), sde, "eps", label), x0, timesteps=steps, noise=noise)
    resid = (shifted - exact) - 2 * 0.1**2  # E[||eps* + c - eps||^2] - E[||eps* - eps||^2] = ||c||^2, D = 2
    assert abs(resid.mean()) < 5 * resid.std() / math.sqrt(len(resid))


def test_errors():
    sde = VPSDE()
    model = GM.score_model(sde)
    with pytest.raises(ValueError, match=r"Invalid weighting 'l2'. Must be one of \('sigma2', 'likelihood'\)"):
        DSMLoss("l2")
    with pytest.raises(ValueError, match="needs `weighting='likelihood'`"):
        DSMLoss("sigma2", importance_sampling=True)
    with pytest.raises(ValueError, match=r"`eps` must lie in \(0, 1\)"):
        DSMLoss(eps=0.0)
    with pytest.raises(ValueError, match=r"`x0` must be a tensor of shape \[B, \*sample_shape\]"):
        DSMLoss()(model, torch.zeros(5))
    with pytest.raises(ValueError, match="`noise` must have the shape of `x0`"):
        DSMLoss()(model, torch.zeros(5, 2), noise=torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"`t` must have shape \[B\] = \[5\]"):
        DSMLoss()(model, torch.zeros(5, 2), t=torch.zeros(4))
    with pytest.raises(TypeError, match="`model` must be an sdeflow ScoreModel"):
        DSMLoss()(lambda x, t: x, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="needs a VPSDE and a DDPMTimesteps time label"):
        DDPMLoss()(ScoreModel(lambda x, t: x, sde, "eps"), torch.zeros(5, 2))
