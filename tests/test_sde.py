"""Forward SDEs: closed forms against their definitions and against Monte-Carlo simulation of their torchsde module."""

import math

import pytest
import torch
import torchsde

from sdeflow import VESDE, VPSDE, ForwardSDE, SubVPSDE, sde_from_config

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = ["vp", "subvp", "ve"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_kernel_solves_its_moment_odes(sde):
    """d alpha/dt = f(t) alpha and d sigma^2/dt = 2 f(t) sigma^2 + g(t)^2 with alpha(0) = 1, sigma(0) = 0."""
    t = torch.linspace(0.02, 1.0, 50, dtype=torch.float64, requires_grad=True)
    alpha, var = sde.alpha(t) + 0 * t, sde.sigma(t) ** 2  # (+ 0 t: VE's alpha is constant)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    (dvar,) = torch.autograd.grad(var.sum(), t)
    f, g2 = sde.drift_coef(t).detach(), sde.g2(t).detach()
    torch.testing.assert_close(dalpha, f * alpha.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dvar, 2 * f * var.detach() + g2, rtol=1e-10, atol=1e-10)
    zero = torch.zeros(1, dtype=torch.float64)
    assert sde.alpha(zero).item() == 1.0 and sde.sigma(zero).item() == 0.0


def test_subvp_and_ve_match_their_definitions():
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    vp, sub = VPSDE(), SubVPSDE()
    integral = 0.5 * t**2 * (vp.beta_max - vp.beta_min) + t * vp.beta_min  # int_0^t beta
    torch.testing.assert_close(vp.alpha(t), torch.exp(-0.5 * integral))
    torch.testing.assert_close(sub.g2(t), vp.beta(t) * (1 - torch.exp(-2 * integral)))
    torch.testing.assert_close(sub.sigma(t), 1 - vp.alpha(t) ** 2)  # std, not variance
    torch.testing.assert_close(vp.sigma(t), torch.sqrt(1 - vp.alpha(t) ** 2))
    assert (sub.sigma(t[1:]) < vp.sigma(t[1:])).all()
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    sigma_ve = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(ve.sigma(t), torch.sqrt(sigma_ve**2 - 0.01**2))
    torch.testing.assert_close(ve.g2(t), sigma_ve**2 * 2 * math.log(50.0 / 0.01))
    assert ve.prior_std == 50.0


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_snr_inverse(sde):
    t = torch.linspace(1e-4, 1.0, 200, dtype=torch.float64)
    lam = sde.log_snr(t)
    torch.testing.assert_close(lam, torch.log(sde.alpha(t) / sde.sigma(t)))
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_match_monte_carlo_of_forward_module(sde):
    """Simulate the torchsde forward module from a fixed x0; mean and std at several t agree within 4.5 SE.

    Euler-Maruyama is exact in distribution for these linear SDEs up to O(dt) (VE: left-point quadrature of
    g^2, a relative variance bias of about dt ln(smax/smin) = 1.7e-2 at dt = 2e-3), which the tolerance includes.
    """
    n, d = 4000, 4
    x0 = torch.tensor([1.5, -0.5, 0.0, 2.0], dtype=torch.float64).expand(n, d).contiguous()
    ts = torch.tensor([0.0, 0.1, 0.4, 1.0], dtype=torch.float64)
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=1.0, size=(n, d), dtype=torch.float64, entropy=1234
    )
    xs = torchsde.sdeint(ForwardSDE(sde), x0, ts, method="euler", dt=2e-3, bm=bm)
    for k in range(1, len(ts)):
        mean, std = sde.marginal_prob(x0[:1], ts[k])
        dev = xs[k] - mean
        m = n * d
        # standardised residuals: mean ~ N(0, 1/m), variance ratio ~ 1 +- sqrt(2/m)
        z = dev / std
        assert z.mean(0).abs().max() < 4.5 / math.sqrt(n), f"mean off at t={ts[k].item()}"
        assert abs(z.pow(2).mean().item() - 1) < 4.5 * math.sqrt(2 / m) + 2e-2, f"std off at t={ts[k].item()}"


def test_discrete_schedule_matches_continuous_vp():
    vp = VPSDE()
    sched = vp.discrete(1000)
    assert sched.N == 1000 and sched.betas.dtype == torch.float64
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(0.02)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    # log abar_i = sum log(1 - beta_j) ~ -sum beta_j - sum beta_j^2 / 2, while 2 log alpha(t) = -int_0^t beta: they
    # differ by the second-order sum (<= 0.07 at N = 1000) and the O(1/N) quadrature error.
    gap = torch.log(sched.alphas_cumprod) - 2 * torch.log(vp.alpha(t))
    second_order = torch.cumsum(sched.betas**2 / 2, 0)
    assert (gap + second_order).abs().max() < 1e-2


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_sampling_and_logp(sde):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sde.prior_sampling((5, 3), generator=g1)
    b = sde.prior_sampling((5, 3), generator=g2)
    assert torch.equal(a, b)
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    s = sde.prior_std
    expected = torch.distributions.Normal(0.0, s).log_prob(z).sum((1, 2))
    torch.testing.assert_close(sde.prior_logp(z), expected)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_config_round_trip(sde):
    again = sde_from_config(sde.config())
    assert type(again) is type(sde) and again.config() == sde.config()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=-0.1), "`beta_min` must be a positive"),
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "`beta_max`.*reversed"),
        (lambda: SubVPSDE(beta_max=float("nan")), "`beta_max` must be a positive"),
        (lambda: VESDE(sigma_min=50.0, sigma_max=0.01), "`sigma_max`.*reversed"),
        (lambda: VESDE(sigma_min=0.0), "`sigma_min` must be a positive"),
        (lambda: VPSDE().marginal_prob(torch.zeros(2, 3), 1.5), r"`t` must lie in \[0, T\]"),
        (lambda: VPSDE().sde(torch.zeros(2, 3), torch.tensor([-0.1, 0.5])), r"`t` must lie in \[0, T\]"),
        (lambda: VPSDE().marginal_prob(torch.zeros(2, 3), torch.zeros(3)), "`t` must be a scalar or have shape"),
        (lambda: VPSDE().discrete(1), "`N` must be an integer >= 2"),
        (lambda: sde_from_config({"type": "Nope"}), "Unknown SDE type 'Nope'. Must be one of"),
    ],
)
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
