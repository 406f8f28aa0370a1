"""Likelihood options of issue 12 against closed forms: float64 state, error control, the closed-form drift
divergence, and the importance-weighted dequantisation bound (docs/math.md, "Likelihood refinements")."""

from __future__ import annotations

import math

import pytest
import torch

from sdeflow import VESDE, VPSDE, GaussianMixture, ScoreModel, SubVPSDE
from sdeflow.divergence import draw_probes
from sdeflow.likelihood import bits_per_dim, log_likelihood

EPS = 1e-5
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


def _mixture(dim: int, seed: int = 0) -> GaussianMixture:
    return GaussianMixture.random(dim, n_components=3, scale=3.0, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float64, None], ids=["state64", "state_same"])
@pytest.mark.parametrize("error_control", ["rms", "all", "log_p"])
def test_every_option_meets_the_oracle_tolerance(sde_name, dtype, state_dtype, error_control) -> None:
    sde, dim = SDES[sde_name], 8
    gm = _mixture(dim, seed=11)
    x = gm.sample(4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    res = log_likelihood(sde, gm.score_model(sde), x, dtype=dtype, state_dtype=state_dtype,
                         error_control=error_control, prior_logp=gm.prior_logp(sde))
    err = (res.log_p.double() - gm.log_prob(x.double(), EPS, sde)).abs() / dim
    assert err.max() < 1e-3, f"max error {err.max():.2e} nats/dim with {res.nfe} NFE"
    assert res.log_p.dtype == (state_dtype or dtype) and res.z.dtype == (state_dtype or dtype)
    assert res.settings["error_control"] == error_control
    assert res.settings["time_variable"] == "sigma_ratio"  # the default
    for tv in ("t", "log_snr"):
        other = log_likelihood(sde, gm.score_model(sde), x, dtype=dtype, state_dtype=state_dtype,
                               error_control=error_control, prior_logp=gm.prior_logp(sde), time_variable=tv)
        assert ((other.log_p.double() - gm.log_prob(x.double(), EPS, sde)).abs() / dim).max() < 1e-3


def test_float64_state_removes_the_float32_floor() -> None:
    """A float32 network with a float64 state reaches errors far below what a float32 state can hold."""
    sde, dim = VPSDE(), 16
    gm = _mixture(dim, seed=3)
    x = gm.sample(8, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    exact = gm.log_prob(x.double(), EPS, sde)
    kw = dict(rtol=1e-7, atol=1e-7, prior_logp=gm.prior_logp(sde), error_control="all")
    err = {}
    for sd in (torch.float32, torch.float64):
        res = log_likelihood(sde, gm.score_model(sde), x, state_dtype=sd, **kw)
        err[sd] = ((res.log_p.double() - exact).abs() / dim).max().item()
    assert err[torch.float64] < 2e-6 and err[torch.float64] < err[torch.float32] / 4, err


def test_zero_score_is_the_drift_alone_in_closed_form() -> None:
    """With s = 0 the PF-ODE is dx/dt = f(t) x: z = x alpha(T)/alpha(eps), delta = D log(alpha(T)/alpha(eps))."""
    sde, dim = VPSDE(), 5
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(sde, lambda y, t: 0 * y, x, rtol=1e-10, atol=1e-10, error_control="all")
    t = torch.tensor([EPS, 1.0], dtype=torch.float64)
    log_ratio = sde.log_alpha(t[1]) - sde.log_alpha(t[0])
    assert torch.allclose(res.z, x * log_ratio.exp(), rtol=1e-7, atol=0)
    assert torch.allclose(res.delta_logp, torch.full((3,), dim * log_ratio.item(), dtype=torch.float64), atol=1e-12)


def test_gaussian_probes_keep_the_drift_quadratic_form() -> None:
    """Each probe's integral is L |v|^2 + int b v^T (ds/dx) v with L = log(alpha_T/alpha_eps) in closed form: unbiased,
    and far less variable than the score part alone (L D + int b v^T (ds/dx) v) on a VP mixture."""
    sde, dim = VPSDE(), 6
    gm = _mixture(dim, seed=2)
    x = gm.sample(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = log_likelihood(sde, gm.score_model(sde), x, divergence="gaussian", probes=64, seeds=[1, 2, 3],
                         rtol=1e-7, atol=1e-7)
    exact = log_likelihood(sde, gm.score_model(sde), x, rtol=1e-7, atol=1e-7)
    v = draw_probes("gaussian", (dim,), 64, torch.tensor([1, 2, 3]), torch.float64)  # [K, B, D]
    t = torch.tensor([EPS, 1.0], dtype=torch.float64)
    drift = dim * (sde.log_alpha(t[1]) - sde.log_alpha(t[0]))
    score_only = res.probe_delta_logp - drift * (v.pow(2).sum(2).T / dim - 1)
    assert (score_only.var(1) > 5 * res.probe_delta_logp.var(1)).all()
    z = (res.delta_logp - exact.delta_logp) / res.std_err
    assert z.abs().max() < 4, z


# --- importance-weighted dequantisation --------------------------------------------------------------------------
def _dequantised(k: torch.Tensor, seeds: list[int], levels: int, draws: int) -> list[torch.Tensor]:
    """The points bits_per_dim evaluates: per example, each draw takes u, then one probe seed, from its generator."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = []
    for _ in range(draws):
        u = torch.stack([torch.rand(k.shape[1:], generator=g, dtype=torch.float64) for g in gens])
        for g in gens:
            torch.randint(0, 2**62, (), generator=g)
        out.append(2 * (k + u) / levels - 1)
    return out


def test_importance_bound_matches_the_closed_form_and_is_tighter() -> None:
    sde, dim, levels, draws = VPSDE(), 2, 8, 6
    gm = GaussianMixture([1.0], torch.zeros(1, dim), torch.full((1,), 0.3))
    k = torch.randint(2, 6, (4, dim), generator=torch.Generator().manual_seed(0)).double()
    seeds = [3, 5, 7, 9]
    res = bits_per_dim(sde, gm.score_model(sde), k.long(), levels=levels, draws=draws, seeds=seeds,
                       bound="importance", dtype=torch.float64, rtol=1e-8, atol=1e-8, prior_logp=gm.prior_logp(sde))
    # closed form: the same dequantised points scored by the mixture's exact log p_eps
    log_p = torch.stack([gm.log_prob(xq, EPS, sde) for xq in _dequantised(k, seeds, levels, draws)], 1)  # [B, K]
    const = -math.log2(2) + math.log2(levels)
    plain = (-log_p / (dim * math.log(2)) + const).mean(1)
    iw = -(torch.logsumexp(log_p, 1) - math.log(draws)) / (dim * math.log(2)) + const
    assert torch.allclose(res.plain_bpd, plain, atol=1e-6) and torch.allclose(res.importance_bpd, iw, atol=1e-6)
    assert torch.equal(res.bpd, res.importance_bpd) and res.bound == "importance"
    assert (res.importance_bpd <= res.plain_bpd).all() and (res.importance_bpd < res.plain_bpd).any()
    assert torch.allclose(res.plain_std_err, res.draw_bpd.std(1) / math.sqrt(draws))
    assert (res.importance_std_err > 0).all() and (res.importance_std_err < 2 * res.plain_std_err).all()


def test_one_draw_bounds_coincide() -> None:
    sde, gm = VPSDE(), GaussianMixture([1.0], torch.zeros(1, 2), torch.full((1,), 0.3))
    k = torch.randint(2, 6, (3, 2), generator=torch.Generator().manual_seed(1))
    res = bits_per_dim(sde, gm.score_model(sde), k, levels=8, seeds=[0, 1, 2], dtype=torch.float64)
    assert res.bound == "plain" and torch.equal(res.bpd, res.plain_bpd)
    assert torch.allclose(res.importance_bpd, res.plain_bpd, atol=1e-12)
    assert torch.equal(res.importance_std_err, res.plain_std_err)


def test_option_errors() -> None:
    sde, gm = VPSDE(), _mixture(2)
    x = gm.sample(2)
    with pytest.raises(ValueError, match=r"Invalid error_control 'x'. Must be one of \('rms', 'all', 'log_p'\)"):
        log_likelihood(sde, gm.score_model(sde), x, error_control="x")
    with pytest.raises(ValueError, match="`state_dtype` must be torch.float32 or torch.float64; got torch.float16"):
        log_likelihood(sde, gm.score_model(sde), x, state_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"Invalid bound 'iw'. Must be one of \('plain', 'importance'\)"):
        bits_per_dim(sde, gm.score_model(sde), torch.zeros(2, 2, dtype=torch.long), levels=4, bound="iw")


def test_network_in_float32_state_in_float64() -> None:
    """The network sees its own dtype while the solver state is float64."""
    sde, seen = VPSDE(), []

    def net(x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        seen.append((x.dtype, label.dtype))
        return -x

    model = ScoreModel(net, sde, prediction="score")
    res = log_likelihood(sde, model, torch.randn(2, 3), divergence="rademacher", seeds=[0, 1])
    assert set(seen) == {(torch.float32, torch.float32)} and res.log_p.dtype == torch.float64


def test_auto_time_variable_follows_the_network_time_input() -> None:
    """'auto': t for a network that sees t, sigma_ratio for noise-level networks and closed-form scores."""
    from sdeflow.divergence import auto_time_variable
    from sdeflow.parametrization import ContinuousTime, LogNoiseLevel

    sde, gm = VPSDE(), _mixture(2)
    net = torch.nn.Linear(2, 2)
    x = gm.sample(2, generator=torch.Generator().manual_seed(0))
    for label, expected in ((ContinuousTime(), "t"), (LogNoiseLevel(sde), "sigma_ratio")):
        model = ScoreModel(lambda y, t, net=net: net(y) + 0 * t[:, None], sde, time_label=label)
        assert auto_time_variable(model) == "sigma_ratio"  # a plain callable has no time embedding of its own
        module_model = ScoreModel(_TimeNet(), sde, time_label=label)
        assert auto_time_variable(module_model) == expected
        res = log_likelihood(sde, module_model, x, rtol=1e-3, atol=1e-3)
        assert res.settings["time_variable"] == expected
    assert log_likelihood(sde, gm.score_model(sde), x).settings["time_variable"] == "sigma_ratio"


class _TimeNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return 0.1 * x * torch.cos(label)[:, None]
