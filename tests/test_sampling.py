"""Samplers on the Gaussian-mixture oracle: convergence orders, identities, statistics, reproducibility, errors."""

import math

import pytest
import torch

from sdeflow import VESDE, VPSDE, GaussianMixture, ProbabilityFlowODE, SubVPSDE
from sdeflow.sampling import sample, time_grid
from sdeflow.sampling.evaluate import counted

SDE = VPSDE()
EPS = 1e-3


@pytest.fixture(scope="module")
def oracle():
    """A 2-D, 4-component mixture, 32 float64 starting points and the dopri5 (tol 1e-11) PF-ODE endpoint."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture.random(2, 4, generator=g)
    model = gm.score_model(SDE)
    x_T = torch.randn(32, 2, generator=g, dtype=torch.float64)
    ref = sample(model, SDE, x_T, method="ode", solver="dopri5", eps=EPS, rtol=1e-11, atol=1e-11).samples
    return gm, model, x_T, ref


def _fit(nfe, err):
    lx = torch.log(torch.tensor(nfe, dtype=torch.float64))
    ly = torch.log(torch.tensor(err, dtype=torch.float64))
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())


# Step ranges where the asymptotic order shows on this oracle (measured: below them the error curves bend while
# the trajectories are still settling into their modes; above them float64 rounding is still far away).
ORDERS = [
    ("ode:euler", "uniform", (160, 320, 640), 1.0),
    ("ode:heun2", "uniform", (80, 160, 320), 2.0),
    ("ode:midpoint", "uniform", (80, 160, 320), 2.0),
    ("ode:rk4", "uniform", (40, 80, 160), 4.0),
    ("ddim", "uniform", (80, 160, 320), 1.0),
    ("dpmsolver++", "logsnr", (40, 80, 160), 2.0),
]


@pytest.mark.parametrize("method,grid,steps,order", ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order(oracle, method, grid, steps, order):
    _, model, x_T, ref = oracle
    nfe, err = [], []
    for s in steps:
        r = sample(model, SDE, x_T, method=method, steps=s, grid=grid, eps=EPS)
        nfe.append(r.nfe)
        err.append(float((r.samples - ref).pow(2).mean().sqrt()))
    assert abs(_fit(nfe, err) - order) < 0.3, (nfe, err)


def test_nfe_is_counted_honestly(oracle):
    _, model, x_T, _ = oracle
    x = x_T[:4].float()
    assert sample(model, SDE, x, method="ddim", steps=7).nfe == 7
    assert sample(model, SDE, x, method="dpmsolver++", steps=7, set_alpha_to_one=True).nfe == 7
    assert sample(model, SDE, x, method="ode:heun2", steps=5).nfe == 10
    assert sample(model, SDE, x, method="ode:rk4", steps=3).nfe == 12
    assert sample(model, SDE, x, method="pc", steps=6, n_corrector=2).nfe == 6 + 5 * 2
    assert sample(model, SDE, x, method="sde:euler", steps=9, seed=0).nfe == 9  # no hidden shape-check call


def test_ddim_eta0_step_is_dpm_solver_1_step(oracle):
    """x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_hat(x_t, t), h = lambda_s - lambda_t."""
    _, model, x_T, _ = oracle
    for sde in (VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)):
        gm = GaussianMixture.random(3, 2, generator=torch.Generator().manual_seed(1))
        m = gm.score_model(sde)
        x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        t, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
        out = sample(m, sde, x, method="ddim", grid=torch.stack([t, s])).samples
        h = sde.log_snr(s) - sde.log_snr(t)
        eps_hat = m.eps(x, t)
        expected = sde.alpha(s) / sde.alpha(t) * x - sde.sigma(s) * torch.expm1(h) * eps_hat
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)



def _dpmpp2m_transcribed(m, sde, x, ts, first_order_last):
    """MATH.md section 4 written out: h_i = lambda_i - lambda_{i-1}, r_i = h_{i-1} / h_i, D = x0_hat,
    x_i = (sigma_i/sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) [(1 + 1/(2 r_i)) D_{i-1} - 1/(2 r_i) D_{i-2}]."""
    lam, alpha, sigma = sde.log_snr(ts), sde.alpha(ts), sde.sigma(ts)
    d_prev = h_prev = None
    for i in range(1, len(ts)):
        d = m.x0(x, ts[i - 1].expand(x.shape[0]))
        h = lam[i] - lam[i - 1]
        dc = d
        if d_prev is not None and not (first_order_last and i == len(ts) - 1):
            r = h_prev / h
            dc = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
        x = sigma[i] / sigma[i - 1] * x - alpha[i] * torch.expm1(-h) * dc
        d_prev, h_prev = d, h
    return x


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_is_the_formula(steps):
    """DPM-Solver++(2M) equals the transcribed formula on uniform, quadratic and log-SNR grids; its last step is
    first order exactly when lower_order_final and steps < 15; each step costs one evaluation."""
    for sde in (VPSDE(), VESDE(sigma_max=20.0)):
        gm = GaussianMixture.random(4, 3, generator=torch.Generator().manual_seed(5))
        m = gm.score_model(sde)
        x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * sde.prior_std
        for grid in ("uniform", "quadratic", "logsnr"):
            ts = time_grid(sde, steps, grid, eps=EPS).t
            for lof in (True, False):
                r = sample(m, sde, x, method="dpmsolver++", steps=steps, grid=grid, eps=EPS, lower_order_final=lof)
                expected = _dpmpp2m_transcribed(m, sde, x, ts, lof and steps < 15)
                assert r.nfe == steps
                torch.testing.assert_close(r.samples, expected, rtol=1e-10, atol=1e-10)

def _assert_reproduces_mixture(x, gm, sde, eps, seed):
    """Mean and covariance within 4.5 standard errors; the share of samples nearest each component and the mean
    log p_eps agree with an exact sample of p_eps (two-sample z-tests at 4.5 SE)."""
    n = x.shape[0]
    x = x.double()
    exact = gm.sample_t(n, eps, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mean = gm.mean() * sde.alpha(torch.tensor(eps, dtype=torch.float64))
    dev = exact - exact.mean(0)
    assert ((x.mean(0) - mean).abs() < 4.5 * dev.std(0) / math.sqrt(n)).all()
    prods = dev[:, :, None] * dev[:, None, :]
    cx, ce = torch.cov(x.T), torch.cov(exact.T)
    assert ((cx - ce).abs() < 4.5 * prods.std(0) * math.sqrt(2 / n)).all(), (cx, ce)
    logits_x, _, _ = gm._terms(x, eps, sde)
    logits_e, _, _ = gm._terms(exact, eps, sde)
    px = torch.bincount(logits_x.argmax(1), minlength=gm.n_components).double() / n
    pe = torch.bincount(logits_e.argmax(1), minlength=gm.n_components).double() / n
    pooled = (px + pe) / 2
    assert ((px - pe).abs() <= 4.5 * torch.sqrt(pooled * (1 - pooled) * 2 / n) + 1e-12).all(), (px, pe)
    lx, le = gm.log_prob(x, eps, sde), gm.log_prob(exact, eps, sde)
    assert abs(lx.mean() - le.mean()) < 4.5 * math.sqrt((lx.var() + le.var()) / n)


@pytest.mark.parametrize(
    "method,kwargs",
    [("ddpm", {"steps": 1000}), ("ddim", {"steps": 50}), ("pc", {"steps": 250, "snr": 0.16})],
    ids=["ddpm-1000", "ddim-50", "pc-250"],
)
def test_reproduces_oracle_mixture(method, kwargs):
    gm = GaussianMixture.random(2, 3, scale=2.0, generator=torch.Generator().manual_seed(5))
    r = sample(gm.score_model(SDE), SDE, shape=(2000, 2), method=method, eps=EPS, seed=11, **kwargs)
    assert r.status == "success"
    _assert_reproduces_mixture(r.samples, gm, SDE, EPS, seed=12)


BATCH_METHODS = [
    ("ddpm", {"steps": 20}),
    ("ddim", {"steps": 20, "eta": 0.5}),
    ("dpmsolver++", {"steps": 10}),
    ("ode", {"solver": "rk4", "steps": 5}),
    ("sde", {"solver": "euler", "steps": 20}),
    ("sde", {"solver": "srk", "steps": 10}),
]


@pytest.mark.parametrize("method,kwargs", BATCH_METHODS, ids=[m + str(k.get("solver", "")) for m, k in BATCH_METHODS])
def test_seeded_samples_do_not_depend_on_batch_size(oracle, method, kwargs):
    _, model, _, _ = oracle
    small = sample(model, SDE, shape=(3, 2), method=method, seed=123, **kwargs)
    large = sample(model, SDE, shape=(8, 2), method=method, seed=123, **kwargs)
    torch.testing.assert_close(small.samples, large.samples[:3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(large.samples[3], large.samples[4])  # the samples themselves differ
    # a list of seeds picks samples out of the batch
    picked = sample(model, SDE, shape=(2, 2), method=method, seed=[125, 126], **kwargs)
    torch.testing.assert_close(picked.samples, large.samples[2:4], rtol=1e-5, atol=1e-6)


def test_explicit_noise_and_prior_on_cpu_generators(oracle):
    _, model, _, _ = oracle
    x_T = torch.randn(4, 2)
    noise = torch.randn(10, 4, 2)
    a = sample(model, SDE, x_T, method="ddpm", steps=10, noise=noise)
    b = sample(model, SDE, x_T, method="ddpm", steps=10, noise=lambda k: noise[k])
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    c = sample(model, SDE, x_T, method="ddpm", steps=10, noise=2 * noise)
    assert not torch.allclose(a.samples, c.samples)
    with pytest.raises(ValueError, match="`noise` has 3 draws"):
        sample(model, SDE, x_T, method="ddpm", steps=10, noise=noise[:3])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(
        sample(model, SDE, shape=(4, 2), method="ddim", steps=5, eta=1.0, generator=g1).samples,
        sample(model, SDE, shape=(4, 2), method="ddim", steps=5, eta=1.0, generator=g2).samples,
    )


def test_callback_reports_each_step(oracle):
    _, model, x_T, _ = oracle
    seen = []
    sample(model, SDE, x_T[:2], method="dpmsolver++", steps=6, callback=seen.append)
    assert [i.step for i in seen] == list(range(1, 7)) and seen[-1].nfe == 6 and seen[-1].total == 6
    assert all(a.t > b.t for a, b in zip(seen[:-1], seen[1:], strict=True))


def test_time_grids():
    g = time_grid(SDE, 10, "logsnr", eps=EPS)
    lam = SDE.log_snr(g.t)
    torch.testing.assert_close(lam.diff(), torch.full((10,), float(lam[1] - lam[0]), dtype=torch.float64))
    g = time_grid(SDE, 10, "karras", eps=EPS, rho=7.0)
    s = (g.sigma / g.alpha) ** (1 / 7)
    torch.testing.assert_close(s.diff(), torch.full((10,), float(s[1] - s[0]), dtype=torch.float64))
    g = time_grid(SDE, 10, "quadratic", eps=EPS)
    torch.testing.assert_close(
        (g.t - EPS).sqrt().diff(), torch.full((10,), -((1 - EPS) ** 0.5) / 10, dtype=torch.float64)
    )
    for kind in ("uniform", "quadratic", "logsnr", "karras"):
        g = time_grid(SDE, 7, kind, eps=EPS)
        assert g.t[0] == 1.0 and g.t[-1] == EPS and g.steps == 7 and (g.t.diff() < 0).all()
        g = time_grid(SDE, 7, kind, eps=EPS, set_alpha_to_one=True)
        assert g.steps == 7 and g.t[-2] == EPS and g.t[-1] == 0 and g.sigma[-1] == 0


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)], ids=["vp", "subvp", "ve"])
def test_vector_fields_stay_finite_just_outside_eps_T(sde):
    """Adaptive solvers probe slightly outside [eps, T] while choosing a first step; the wrappers clamp t."""
    gm = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(3))
    model, counter = counted(gm.score_model(sde))
    ode = ProbabilityFlowODE(sde, model)
    x = torch.randn(5, 2, dtype=torch.float64)
    for t in (-1e-4, 0.0, sde.T + 1e-4):
        assert torch.isfinite(ode(torch.tensor(t, dtype=torch.float64), x)).all()
        assert torch.isfinite(model.eps(x, t)).all() and torch.isfinite(model.x0(x, t)).all()
    for solver in ("dopri5", "bosh3", "adaptive_heun"):
        r = sample(model, sde, x, method="ode", solver=solver, eps=1e-5, rtol=1e-3, atol=1e-3)
        assert r.status == "success"
    r = sample(
        gm.score_model(sde),
        sde,
        shape=(4, 2),
        method="sde",
        solver="euler",
        adaptive=True,
        steps=20,
        eps=1e-3,
        rtol=0.3,
        atol=0.3,
        seed=0,
    )
    assert r.status == "success"


def test_documented_errors(oracle):
    _, model, x_T, _ = oracle
    x = x_T[:2]
    with pytest.raises(ValueError, match=r"Invalid method 'dpm'. Must be one of \('ddpm', 'ddim', 'dpmsolver\+\+'"):
        sample(model, SDE, x, method="dpm")
    with pytest.raises(ValueError, match="Invalid torchdiffeq solver 'rk5'.*Must be one of"):
        sample(model, SDE, x, method="ode:rk5")
    with pytest.raises(ValueError, match="Invalid torchsde solver 'rk4'.*Must be one of"):
        sample(model, SDE, x, method="sde", solver="rk4")
    with pytest.raises(ValueError, match="`solver` applies to methods 'sde' and 'ode' only"):
        sample(model, SDE, x, method="ddim", solver="rk4")
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1; got 0"):
        sample(model, SDE, x, steps=0)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"`eta` must lie in \[0, 1\]"):
            sample(model, SDE, x, eta=eta)
    with pytest.raises(ValueError, match="`grid` must be strictly decreasing.*monotone"):
        sample(model, SDE, x, grid=torch.tensor([1.0, 0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="`grid` must be a 1-D tensor of at least 2 times"):
        sample(model, SDE, x, grid=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"`grid` times must lie in \[0, T\]"):
        sample(model, SDE, x, grid=torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="Invalid grid 'cosine'"):
        sample(model, SDE, x, grid="cosine")
    with pytest.raises(ValueError, match="Invalid variance 'fixed'"):
        sample(model, SDE, x, method="ddpm", variance="fixed")
    with pytest.raises(ValueError, match="Invalid predictor 'ald'"):
        sample(model, SDE, x, method="pc", predictor="ald")
    with pytest.raises(ValueError, match="`snr` must be > 0"):
        sample(model, SDE, x, method="pc", snr=0.0)
    with pytest.raises(ValueError, match="Give `x_T` or `shape`"):
        sample(model, SDE)
    with pytest.raises(ValueError, match="needs the DDPM schedule of a VPSDE"):
        ve = VESDE()
        sample(GaussianMixture.random(2, 2).score_model(ve), ve, x, grid="leading")
    with pytest.raises(ValueError, match="ends at t = eps; `set_alpha_to_one=True` applies to"):
        sample(model, SDE, x, method="ode", set_alpha_to_one=True)
    with pytest.raises(ValueError, match="chooses its own steps; `grid` applies to fixed-step solvers"):
        sample(model, SDE, x, method="ode:dopri5", grid="uniform")
    with pytest.raises(ValueError, match=r"Method 'sde' steps with a fixed dt .*`grid` does not apply"):
        sample(model, SDE, x, method="sde", grid="karras")
    with pytest.raises(ValueError, match="Pass either `seed` or `generator`"):
        sample(model, SDE, shape=(2, 2), seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="needs one seed per sample"):
        sample(model, SDE, shape=(2, 2), seed=[1, 2, 3])
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"`eps` must lie in \(0, T\) = \(0, 1.0\)"):
            sample(model, SDE, x, method="sde:euler", eps=eps)
    with pytest.raises(TypeError, match="`method` must be a string"):
        sample(model, SDE, x, method=None)
    with pytest.raises(ValueError, match="`method` names solver 'rk4' but `solver` is 'euler'"):
        sample(model, SDE, x, method="ode:rk4", solver="euler")
    with pytest.raises(ValueError, match="`n_corrector` must be an integer >= 0"):
        sample(model, SDE, x, method="pc", n_corrector=-1)
    with pytest.raises(ValueError, match=r"`shape` must be \(B, \*sample_shape\)"):
        sample(model, SDE, shape=(4,))
    with pytest.raises(ValueError, match="`x_T` must be a tensor of shape"):
        sample(model, SDE, x[0])
    with pytest.raises(ValueError, match="integrates in continuous time; use a grid from"):
        sample(model, SDE, x, method="ode:euler", grid="trailing")
    with pytest.raises(ValueError, match="`rho` must be > 0"):
        sample(model, SDE, x, grid="karras", rho=0.0)
    with pytest.raises(ValueError, match=r"`steps_offset` 500 moves timesteps outside \[0, 999\]"):
        sample(model, SDE, x, grid="leading", steps=2, steps_offset=500)
    with pytest.raises(ValueError, match="`noise` has 1 draws but the sampler needs more"):
        sample(model, SDE, x, method="ddpm", steps=3, noise=torch.zeros(1, *x.shape, dtype=x.dtype))
