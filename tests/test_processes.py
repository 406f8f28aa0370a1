"""Reverse SDE (torchsde) and probability-flow ODE (torchdiffeq) driven by the exact Gaussian-mixture score."""

import math

import numpy as np
import pytest
import torch
import torchdiffeq
import torchsde
from scipy import stats

from sdeflow import VESDE, VPSDE, GaussianMixture, ProbabilityFlowODE, ReverseSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)]
IDS = ["vp", "subvp", "ve"]
EPS = 1e-3


def _mixture(dim=2, seed=0):
    return GaussianMixture.random(dim=dim, n_components=3, scale=2.0, generator=torch.Generator().manual_seed(seed))


def _assert_matches_mixture(x, gm, seed=0):
    """Moments within 5 standard errors, and per-projection two-sample KS tests against exact samples."""
    n = x.shape[0]
    x = x.double()
    mean, cov = gm.mean(), gm.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() < 5 * se).all(), (x.mean(0), mean)
    # variance: SE of a sample variance ~ sqrt(m4 - s^4) / sqrt(n); use the exact-sample estimate of m4
    ref = gm.sample(20000, torch.Generator().manual_seed(seed + 99), torch.float64)
    m4 = ((ref - mean) ** 4).mean(0)
    se_var = torch.sqrt((m4 - torch.diagonal(cov) ** 2) / n)
    assert ((x.var(0) - torch.diagonal(cov)).abs() < 5 * se_var).all(), (x.var(0), torch.diagonal(cov))
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(4, gm.dim, generator=g, dtype=torch.float64)
    for v in dirs:
        p = stats.ks_2samp((x @ v).numpy(), (ref @ v).numpy()).pvalue
        assert p > 1e-4, f"two-sample KS rejects (p = {p:.2e})"


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_pf_ode_maps_prior_onto_mixture(sde):
    gm = _mixture()
    ode = ProbabilityFlowODE(sde, gm.score_model(sde))
    # Start from exact p_T (the SDE prior differs from p_T by a tiny mismatch, tested separately)
    x_T = gm.sample_t(2000, sde.T, sde, torch.Generator().manual_seed(1), torch.float64)
    ts = torch.tensor([sde.T, EPS], dtype=torch.float64)
    x = torchdiffeq.odeint(ode, x_T, ts, method="dopri5", rtol=1e-5, atol=1e-5)[-1]
    assert ode.nfe > 0
    _assert_matches_mixture(x, gm)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_pf_ode_round_trip(sde):
    """x -> x(T) -> x at tight tolerance, for image-shaped states and increasing/decreasing grids."""
    gm = _mixture(dim=4, seed=2)
    score = gm.score_model(sde)
    ode = ProbabilityFlowODE(sde, lambda x, t: score(x.reshape(x.shape[0], 4), t).reshape(x.shape))
    x0 = gm.sample(64, torch.Generator().manual_seed(3), torch.float64).reshape(64, 1, 2, 2)
    fwd = torch.tensor([EPS, sde.T], dtype=torch.float64)
    z = torchdiffeq.odeint(ode, x0, fwd, method="dopri5", rtol=1e-10, atol=1e-10)[-1]
    back = torchdiffeq.odeint(ode, z, fwd.flip(0), method="dopri5", rtol=1e-10, atol=1e-10)[-1]
    assert z.shape == x0.shape
    assert (back - x0).abs().max() < 1e-4
    # the encoding is a proper transport: z is distributed as p_T (standardised per coordinate)
    assert z.abs().max() < 10 * sde.prior_std


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_reverse_sde_reproduces_mixture(sde):
    gm = _mixture()
    n = 2000
    rsde = ReverseSDE(sde, gm.score_model(sde))
    x_T = gm.sample_t(n, sde.T, sde, torch.Generator().manual_seed(4), torch.float64)
    s = rsde.s_of_t(torch.tensor([sde.T, EPS], dtype=torch.float64))
    bm = torchsde.BrownianInterval(t0=0.0, t1=float(s[-1]), size=(n, 2), dtype=torch.float64, entropy=5)
    x = torchsde.sdeint(rsde, x_T, s, method="euler", dt=2e-3, bm=bm)[-1]
    assert rsde.nfe >= 450
    _assert_matches_mixture(x, gm, seed=1)


@pytest.mark.parametrize("method, adaptive", [("milstein", False), ("srk", False), ("euler", True), ("milstein", True)])
def test_reverse_sde_runs_with_torchsde_methods_and_image_shapes(method, adaptive):
    sde = VPSDE()
    gm = _mixture(dim=4)
    score = gm.score_model(sde)
    rsde = ReverseSDE(sde, lambda x, t: score(x.reshape(x.shape[0], 4), t).reshape(x.shape), sample_shape=(1, 2, 2))
    x_T = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = rsde.s_of_t(torch.tensor([sde.T, 0.5, EPS], dtype=torch.float64))
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=float(s[-1]), size=(8, 4), dtype=torch.float64, entropy=1, levy_area_approximation="space-time"
    )
    opts = dict(method=method, dt=1e-2, adaptive=adaptive, bm=bm, rtol=1e-3, atol=1e-3)
    ys = torchsde.sdeint(rsde, x_T.flatten(1), s, **opts)
    xs = rsde.unflatten(ys)
    assert xs.shape == (3, 8, 1, 2, 2) and torch.isfinite(xs).all()


def test_prior_mismatch_is_small_for_vp():
    """The VP prior N(0, I) differs from the exact p_T by a negligible amount at T = 1 (alpha(1) ~ 6.6e-3)."""
    sde, gm = VPSDE(), _mixture()
    z = torch.randn(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gap = (gm.log_prob(z, sde.T, sde) - sde.prior_logp(z)).abs().mean() / 2
    assert 0 < gap < 1e-2  # nats per dimension


def test_errors():
    sde = VPSDE()
    with pytest.raises(ValueError, match="`sample_shape` must be a non-empty tuple"):
        ReverseSDE(sde, lambda x, t: x, sample_shape=(0, 3))
    rsde = ReverseSDE(sde, lambda x, t: x, sample_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="torchsde states must be 2-D"):
        rsde.f(torch.tensor(0.0), torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match sample_shape"):
        rsde.f(torch.tensor(0.0), torch.zeros(2, 5))
    with pytest.raises(TypeError, match="`sde` must be an sdeflow SDE"):
        ProbabilityFlowODE("vp", lambda x, t: x)
    with pytest.raises(TypeError, match="`score` must be a ScoreModel or a callable"):
        ProbabilityFlowODE(sde, 42)


def test_oracle_log_prob_and_score_are_consistent():
    """The oracle's score is the gradient of its log-density, at t = 0 and t > 0, for each SDE."""
    gm = GaussianMixture.random(dim=5, n_components=3, generator=torch.Generator().manual_seed(7))
    x = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    for sde in SDES:
        for t in (0.05, 0.5):
            (grad,) = torch.autograd.grad(gm.log_prob(x, t, sde).sum(), x)
            torch.testing.assert_close(gm.score(x.detach(), t, sde), grad)
    # a single Gaussian: log p_0 against torch.distributions
    one = GaussianMixture([1.0], gm.means[:1], gm.covariances[:1])
    ref = torch.distributions.MultivariateNormal(gm.means[0], gm.covariances[0]).log_prob(x.detach())
    torch.testing.assert_close(one.log_prob(x.detach()), ref)
    # samples have the right moments
    s = gm.sample(40000, torch.Generator().manual_seed(9), torch.float64)
    assert ((s.mean(0) - gm.mean()).abs() < 5 * torch.sqrt(torch.diagonal(gm.covariance()) / 40000)).all()
    assert math.isclose(float(np.trace(torch.cov(s.T).numpy())), float(torch.trace(gm.covariance())), rel_tol=0.03)


def test_oracle_errors():
    with pytest.raises(ValueError, match="`means` must have shape"):
        GaussianMixture([1.0], torch.zeros(3), torch.ones(1))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        GaussianMixture([1.0, 1.0], torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match="`covariances` must have shape"):
        GaussianMixture([1.0], torch.zeros(1, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], torch.zeros(1, 2), -torch.ones(1))
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, D\] with D = 2"):
        GaussianMixture([1.0], torch.zeros(1, 2), torch.ones(1)).log_prob(torch.zeros(3, 4))
