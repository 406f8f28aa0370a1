"""Likelihoods through the PF-ODE against the Gaussian-mixture oracle's closed-form log p_eps (MATH.md 5 and 7)."""

from __future__ import annotations

import math

import pytest
import torch

from sdeflow import VESDE, VPSDE, GaussianMixture, SubVPSDE
from sdeflow.divergence import draw_probes
from sdeflow.likelihood import LikelihoodError, bits_per_dim, log_likelihood

EPS = 1e-5




def _mixture(dim: int, seed: int = 0, scale: float = 3.0) -> GaussianMixture:
    return GaussianMixture.random(dim, n_components=3, scale=scale, generator=torch.Generator().manual_seed(seed))


SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("dim", [2, 16, 64])
def test_exact_divergence_matches_closed_form(sde_name: str, dim: int) -> None:
    sde = SDES[sde_name]
    gm = _mixture(dim, seed=dim)
    x = gm.sample(4 if dim == 64 else 6, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    res = log_likelihood(sde, gm.score_model(sde), x, prior_logp=gm.prior_logp(sde))
    exact = gm.log_prob(x.double(), EPS, sde)
    err = (res.log_p.double() - exact).abs() / dim
    assert err.max() < 1e-3, f"max error {err.max():.2e} nats/dim with {res.nfe} NFE"
    assert res.status == "success" and res.nfe > 0 and res.n_steps > 0
    assert torch.equal(res.std_err, torch.zeros_like(res.std_err))
    # the parts add up, and z is the PF-ODE encoding: prior part is the prior at z
    assert torch.allclose(res.log_p, res.prior_logp + res.delta_logp)
    assert torch.allclose(res.prior_logp, gm.prior_logp(sde)(res.z))


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_float64_tight_tolerance(sde_name: str) -> None:
    sde, dim = SDES[sde_name], 3
    gm = _mixture(dim, seed=7)
    x = gm.sample(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(sde, gm.score_model(sde), x, rtol=1e-8, atol=1e-8, prior_logp=gm.prior_logp(sde))
    assert res.log_p.dtype == torch.float64
    err = (res.log_p - gm.log_prob(x, EPS, sde)).abs() / dim
    assert err.max() < 1e-6, f"max error {err.max():.2e} nats/dim"


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_within_standard_errors(kind: str) -> None:
    sde, dim, probes = VPSDE(), 16, 8
    gm = _mixture(dim, seed=3)
    x = gm.sample(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = log_likelihood(sde, gm.score_model(sde), x, divergence=kind, probes=probes, seeds=torch.arange(6),
                         prior_logp=gm.prior_logp(sde))
    exact = gm.log_prob(x, EPS, sde)
    assert (res.std_err > 0).all()
    # per example: within 3 standard errors (the std error itself is estimated from K = 8 probes)
    z = (res.log_p - exact) / res.std_err
    assert z.abs().max() < 3.5, z
    # the batch mean: independent examples, so its standard error is sqrt(sum se^2) / B
    z_mean = (res.log_p - exact).mean() / (res.std_err.pow(2).sum().sqrt() / 6)
    assert abs(z_mean) < 3, z_mean
    # the per-probe integrals average to the estimate and give the standard error
    assert torch.allclose(res.probe_delta_logp.mean(1), res.delta_logp)
    assert torch.allclose(res.probe_delta_logp.std(1) / math.sqrt(probes), res.std_err)


def test_single_probe_has_no_error_bar() -> None:
    sde, gm = VPSDE(), _mixture(2)
    res = log_likelihood(sde, gm.score_model(sde), gm.sample(3), divergence="rademacher", seeds=[0, 1, 2])
    assert torch.isnan(res.std_err).all() and torch.isfinite(res.log_p).all()


def test_probes_are_seeded_per_example() -> None:
    seeds = torch.tensor([5, 9, 11, 3])
    full = draw_probes("rademacher", (2, 3), 4, seeds)
    part = draw_probes("rademacher", (2, 3), 4, seeds[2:])
    assert torch.equal(full[:, 2:], part)
    assert set(full.unique().tolist()) == {-1.0, 1.0}
    g = draw_probes("gaussian", (1000,), 2, seeds[:1], dtype=torch.float64)
    assert abs(g.var().item() - 1.0) < 0.1  # E[v v^T] = I: unit variance (2000 draws: std of var ~ 0.03)


def test_batch_size_invariance() -> None:
    """Same seeds -> same probes per example; batches change only the shared step sizes (solver tolerance)."""
    sde, dim = VESDE(), 4
    gm = _mixture(dim, seed=5)
    x = gm.sample(6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kw = dict(divergence="gaussian", probes=2, prior_logp=gm.prior_logp(sde), rtol=1e-7, atol=1e-7)
    whole = log_likelihood(sde, gm.score_model(sde), x, seeds=torch.arange(6), **kw)
    parts = [log_likelihood(sde, gm.score_model(sde), x[i : i + 2], seeds=torch.arange(i, i + 2), **kw)
             for i in range(0, 6, 2)]
    joined = torch.cat([p.probe_delta_logp for p in parts])
    # Hutchinson noise is O(1) nats here; agreement to 1e-4 shows the probes are the same, and the gap is solver error
    assert (joined - whole.probe_delta_logp).abs().max() < 1e-4
    # a different seed gives a different estimate
    other = log_likelihood(sde, gm.score_model(sde), x[:2], seeds=torch.tensor([100, 101]), **kw)
    assert (other.probe_delta_logp - whole.probe_delta_logp[:2]).abs().max() > 1e-2


def test_time_variables_agree_and_progress_is_reported() -> None:
    """A change of integration variable leaves z and log p unchanged (up to the tolerance)."""
    sde, gm = SubVPSDE(), _mixture(3, seed=8)
    x = gm.sample(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    events: list = []
    ref = log_likelihood(sde, gm.score_model(sde), x, rtol=1e-8, atol=1e-8, callback=events.append)
    done = [e.done for e in events]
    assert {(e.stage, e.total) for e in events} == {("likelihood", 1.0)}
    assert len(done) == ref.n_steps and done == sorted(done) and done[-1] == pytest.approx(1.0)
    for tv in ("t", "log_snr"):  # the default is 'sigma_ratio', with the scaled state x / alpha
        other = log_likelihood(sde, gm.score_model(sde), x, time_variable=tv, rtol=1e-8, atol=1e-8)
        assert (other.log_p - ref.log_p).abs().max() < 1e-5
        assert (other.z - ref.z).abs().max() < 1e-5


def test_exact_divergence_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory-bounded path (basis vectors in several vmapped chunks) gives the same trace."""
    import sdeflow.divergence as div

    sde, gm = VPSDE(), _mixture(5, seed=9)
    x = gm.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = log_likelihood(sde, gm.score_model(sde), x)
    monkeypatch.setattr(div, "_EXACT_CHUNK_ELEMENTS", 2 * 3 * 5)  # chunks of 2 basis vectors: 2 + 2 + 1
    chunked = log_likelihood(sde, gm.score_model(sde), x)
    assert torch.allclose(whole.log_p, chunked.log_p, atol=1e-12)


def test_standard_prior_error_is_the_prior_mismatch(capsys: pytest.CaptureFixture) -> None:
    """With N(0, I) instead of the exact p_T the only extra error is log p_T(z) - log N(z; 0, I), reported here."""
    sde, dim = VPSDE(), 2
    gm = GaussianMixture.random(dim, n_components=4, scale=3.0, generator=torch.Generator().manual_seed(0))
    x = gm.sample(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gm.log_prob(x, EPS, sde)
    res_std = log_likelihood(sde, gm.score_model(sde), x)  # the default prior: the SDE's p_T = N(0, I)
    res_ex = log_likelihood(sde, gm.score_model(sde), x, prior_logp=gm.prior_logp(sde))
    mismatch = gm.prior_logp(sde)(res_std.z) - sde.prior_logp(res_std.z)
    assert torch.allclose(res_std.z, res_ex.z) and torch.allclose(res_std.delta_logp, res_ex.delta_logp)
    assert torch.allclose(res_std.log_p + mismatch, res_ex.log_p, atol=1e-10)
    solver_err = ((res_ex.log_p - exact).abs() / dim).max().item()
    prior_err = ((res_std.log_p - exact).abs() / dim).max().item()
    assert solver_err < 1e-3
    with capsys.disabled():
        print(f"\n[likelihood] 2-D mixture, VP: max error {solver_err:.1e} nats/dim with the exact p_T, "
              f"{prior_err:.1e} nats/dim with N(0, I) (prior mismatch)")


def test_bits_per_dim_formula_and_draws() -> None:
    """bpd = -log p_x(x) / (D ln 2) - log2(a) + log2(K), x = a (k + u) / K + b with per-example seeded u."""
    sde, dim, levels = VPSDE(), 2, 16
    gm = GaussianMixture([1.0], torch.zeros(1, dim), torch.full((1,), 0.1))  # data well inside [-1, 1]
    k = torch.randint(4, 12, (5, dim), generator=torch.Generator().manual_seed(0))
    res = bits_per_dim(sde, gm.score_model(sde), k, levels=levels, draws=3, seeds=torch.arange(5),
                       dtype=torch.float64)
    for j, r in enumerate(res.results):
        assert torch.allclose(res.draw_bpd[:, j], -r.log_p / (dim * math.log(2)) - 1 + 4)
    assert torch.allclose(res.bpd, res.draw_bpd.mean(1))
    assert torch.allclose(res.std_err, res.draw_bpd.std(1) / math.sqrt(3))
    assert res.nfe == sum(r.nfe for r in res.results) and (res.bpd > 0).all()
    # model-space bin centres give the same levels k, hence the same dequantised points and results
    x = 2 * (k.double() + 0.5) / levels - 1
    again = bits_per_dim(sde, gm.score_model(sde), x, levels=levels, draws=3, seeds=torch.arange(5))
    assert torch.allclose(again.bpd, res.bpd)


# --- errors ---------------------------------------------------------------------------------------------------------
def test_bad_input_errors() -> None:
    sde, gm = VPSDE(), _mixture(2)
    score = gm.score_model(sde)
    x = gm.sample(3)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        log_likelihood(sde, score, torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="Invalid divergence"):
        log_likelihood(sde, score, x, divergence="hutch")
    with pytest.raises(ValueError, match="Invalid method"):
        log_likelihood(sde, score, x, method="euler")
    with pytest.raises(ValueError, match="`eps` must lie in"):
        log_likelihood(sde, score, x, eps=0.0)
    with pytest.raises(ValueError, match="`probes` applies to Hutchinson"):
        log_likelihood(sde, score, x, probes=4)
    with pytest.raises(ValueError, match="shape \\[B, \\*sample_shape\\]"):
        log_likelihood(sde, score, x[0])
    with pytest.raises(ValueError, match="`seeds` must have shape"):
        log_likelihood(sde, score, x, divergence="gaussian", seeds=[1, 2])
    with pytest.raises(ValueError, match="`prior_logp` must map"):
        log_likelihood(sde, score, x, prior_logp=lambda z: z)
    with pytest.raises(ValueError, match="outside the declared range"):
        bits_per_dim(sde, score, torch.full((2, 2), 1.5), levels=4)
    with pytest.raises(ValueError, match="must hold levels k in 0..3"):
        bits_per_dim(sde, score, torch.full((2, 2), 4), levels=4)


def test_shape_mismatch_with_the_model() -> None:
    sde = VPSDE()
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(ValueError, match="could not be evaluated on `x` of shape \\(3, 2\\)"):
        log_likelihood(sde, lambda x, t: net(x), torch.zeros(3, 2))


def test_solver_failures_raise_with_advice() -> None:
    sde, gm = VPSDE(), _mixture(2)
    x = gm.sample(3)
    with pytest.raises(LikelihoodError, match="exceeded max_steps = 2"):
        log_likelihood(sde, gm.score_model(sde), x, max_steps=2)

    def blows_up(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(t[:, None] > 0.3, torch.full_like(x, float("nan")), -x)

    with pytest.raises(LikelihoodError, match="returned non-finite values"):
        log_likelihood(sde, blows_up, x)

    def stiff(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # finite, but too steep for any step size
        return -x * torch.exp(1e3 * (0.5 - t[:, None]).clamp(min=0)).clamp(max=1e30)

    with pytest.raises(LikelihoodError, match="step size underflowed"):
        log_likelihood(sde, stiff, x, max_steps=100_000)


def test_negative_bits_per_dim_is_an_error() -> None:
    sde, gm = VPSDE(), _mixture(2)
    k = torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(LikelihoodError, match="Negative bits/dim"):
        bits_per_dim(sde, gm.score_model(sde), k, levels=4, prior_logp=lambda z: torch.full((z.shape[0],), 50.0))
