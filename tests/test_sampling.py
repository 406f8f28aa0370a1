"""Samplers on the Gaussian-mixture oracle: convergence orders, identities, statistics, reproducibility, errors."""

import math

import numpy as np
import pytest
import torch

import sdeflow
from sdeflow import VESDE, VPSDE, GaussianMixture, ProbabilityFlowODE, SubVPSDE
from sdeflow.sampling import (
    DDIM,
    DDPM,
    DEIS,
    IPNDM,
    PC,
    DDPMSpacing,
    DPMSolverPP,
    DPMSolverPPSDE,
    Heun,
    Karras,
    ODESolver,
    SDESolver,
    UniPC,
    make_sampler,
    sample,
    time_grid,
)
from sdeflow.sampling.evaluate import CountingNet


def counted(model):
    counter = CountingNet(model.net)
    return type(model)(counter, model.sde, model.prediction, model.time_label, model.t_min), counter


SDE = VPSDE()
EPS = 1e-3


@pytest.fixture(scope="module")
def oracle():
    """A 2-D, 4-component mixture, 32 float64 starting points and the dopri5 (tol 1e-11) PF-ODE endpoint."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture.random(2, 4, generator=g)
    model = gm.score_model(SDE)
    x_T = torch.randn(32, 2, generator=g, dtype=torch.float64)
    ref = sample(model, SDE, x_T, sampler=ODESolver("dopri5", rtol=1e-11, atol=1e-11), eps=EPS).samples
    return gm, model, x_T, ref


def _fit(nfe, err):
    lx = torch.log(torch.tensor(nfe, dtype=torch.float64))
    ly = torch.log(torch.tensor(err, dtype=torch.float64))
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())


# Step ranges where the asymptotic order shows on this oracle (measured: below them the error curves bend while
# the trajectories are still settling into their modes; above them float64 rounding is still far away).
# UniPC-p (predictor UniP-p + corrector UniC-p) has order p + 1, for bh1 and bh2 alike (measured on this oracle:
# bh2 1.87 / 2.85 / 4.05, bh1 1.80 / 2.97 / 4.04 for p = 1 / 2 / 3). iPNDM's fixed Adams-Bashforth weights assume
# equal steps in rho: on the log-SNR grid its order 4 drops to 1.95 (measured; asserted below as 2).
ORDERS = [
    ("ode:euler", "uniform", (160, 320, 640), 1.0),
    ("ode:heun2", "uniform", (80, 160, 320), 2.0),
    ("ode:midpoint", "uniform", (80, 160, 320), 2.0),
    ("ode:rk4", "uniform", (40, 80, 160), 4.0),
    ("ddim", "uniform", (80, 160, 320), 1.0),
    ("dpmsolver++", "logsnr", (40, 80, 160), 2.0),
    (UniPC(1, "bh2"), "logsnr", (40, 80, 160), 2.0),
    (UniPC(2, "bh2"), "logsnr", (40, 80, 160), 3.0),
    (UniPC(3, "bh2"), "logsnr", (20, 40, 80), 4.0),
    (UniPC(2, "bh1"), "logsnr", (40, 80, 160), 3.0),
    (UniPC(3, "bh1"), "logsnr", (20, 40, 80), 4.0),
    (DEIS(3), "logsnr", (80, 160, 320), 3.0),
    (Heun(), "karras", (20, 40, 80), 2.0),
    (IPNDM(4), "logsnr", (80, 160, 320), 2.0),
]


def _errors(oracle, sampler, grid, steps):
    _, model, x_T, ref = oracle
    nfe, err = [], []
    for s in steps:
        r = sample(model, SDE, x_T, sampler=sampler, steps=s, grid=grid, eps=EPS)
        nfe.append(r.nfe)
        err.append(float((r.samples - ref).pow(2).mean().sqrt()))
    return nfe, err


@pytest.mark.parametrize("sampler,grid,steps,order", ORDERS, ids=[str(o[0]) for o in ORDERS])
def test_convergence_order(oracle, sampler, grid, steps, order):
    nfe, err = _errors(oracle, sampler, grid, steps)
    assert abs(_fit(nfe, err) - order) < 0.3, (nfe, err)


def test_dpm_solver_pp_3m_order_and_the_diffusers_weight(oracle):
    """DPM-Solver++(3M) with the Taylor weight of D2 (D2 estimates h^2 D''/2) is third order; diffusers' weight (half
    of it, ``diffusers_3m=True``) makes the update second order. Measured here: 3.06-3.17 against 2.04-2.2."""
    steps = (160, 320, 640)
    nfe, err = _errors(oracle, DPMSolverPP(3), "logsnr", steps)
    assert abs(_fit(nfe, err) - 3.0) < 0.3, (nfe, err)
    nfe, err_d = _errors(oracle, DPMSolverPP(3, diffusers_3m=True), "logsnr", steps)
    assert abs(_fit(nfe, err_d) - 2.0) < 0.3, (nfe, err_d)
    assert all(a < b for a, b in zip(err, err_d, strict=True))


def test_nfe_is_counted_honestly(oracle):
    _, model, x_T, _ = oracle
    x = x_T[:4].float()
    assert sample(model, SDE, x, method="ddim", steps=7).nfe == 7
    assert sample(model, SDE, x, method="dpmsolver++", steps=7, set_alpha_to_one=True).nfe == 7
    assert sample(model, SDE, x, method="ode:heun2", steps=5).nfe == 10
    assert sample(model, SDE, x, method="ode:rk4", steps=3).nfe == 12
    assert sample(model, SDE, x, method="pc", steps=6, n_corrector=2).nfe == 6 + 5 * 2
    assert sample(model, SDE, x, method="sde:euler", steps=9, seed=0).nfe == 9  # no hidden shape-check call
    assert sample(model, SDE, x, sampler=Heun(), steps=5).nfe == 10
    assert sample(model, SDE, x, sampler=Heun(), steps=5, set_alpha_to_one=True).nfe == 9  # Euler to sigma = 0
    for smp in (UniPC(3), DEIS(3), IPNDM(4), DPMSolverPP(3), DPMSolverPPSDE(2)):
        assert sample(model, SDE, x, sampler=smp, steps=7, seed=0).nfe == 7  # UniC reuses the next evaluation


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
    ("sde-dpmsolver++", {"steps": 10, "order": 3}),
    ("unipc", {"steps": 8, "order": 3}),
    ("ode:rk4", {"steps": 5}),
    ("sde:euler", {"steps": 20}),
    ("sde:srk", {"steps": 10}),
]


@pytest.mark.parametrize("method,kwargs", BATCH_METHODS, ids=[m for m, k in BATCH_METHODS])
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
    noise = torch.randn(9, 4, 2)  # DDPM: no noise on the last of its 10 steps
    a = sample(model, SDE, x_T, method="ddpm", steps=10, noise=noise)
    assert a.noise_draws == 9
    b = sample(model, SDE, x_T, method="ddpm", steps=10, noise=lambda k: noise[k])
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    c = sample(model, SDE, x_T, method="ddpm", steps=10, noise=2 * noise)
    assert not torch.allclose(a.samples, c.samples)
    with pytest.raises(ValueError, match=r"`noise` must have shape \[K, B, \*sample_shape\] = \[9, 4, 2\]"):
        sample(model, SDE, x_T, method="ddpm", steps=10, noise=noise[:3])
    with pytest.raises(ValueError, match=r"got \[9, 1, 2\]"):  # broadcastable is not enough
        sample(model, SDE, x_T, method="ddpm", steps=10, noise=noise[:, :1])
    with pytest.raises(ValueError, match="draws no noise"):
        sample(model, SDE, x_T, method="ddim", steps=10, noise=noise)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(
        sample(model, SDE, shape=(4, 2), method="ddim", steps=5, eta=1.0, generator=g1).samples,
        sample(model, SDE, shape=(4, 2), method="ddim", steps=5, eta=1.0, generator=g2).samples,
    )


def test_callback_reports_each_step(oracle):
    _, model, x_T, _ = oracle
    seen = []
    sample(model, SDE, x_T[:2], method="dpmsolver++", steps=6, callback=seen.append)
    assert [e.done for e in seen] == list(range(1, 7)) and seen[-1].info["nfe"] == 6 and seen[-1].total == 6
    assert {e.stage for e in seen} == {"sample"} and all(e.tensors["denoised"].shape == (2, 2) for e in seen)
    assert all(a.info["t"] > b.info["t"] for a, b in zip(seen[:-1], seen[1:], strict=True))


def test_solver_callback_reports_each_evaluation(oracle):
    _, model, x_T, _ = oracle
    seen = []
    r = sample(model, SDE, x_T[:2], method="ode:rk4", steps=3, callback=seen.append)
    assert [e.done for e in seen] == list(range(1, r.nfe + 1)) and seen[-1].info["nfe"] == r.nfe
    assert all(e.total == math.inf and not e.tensors for e in seen)


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
        r = sample(model, sde, x, sampler=ODESolver(solver, rtol=1e-3, atol=1e-3), eps=1e-5)
        assert r.status == "success"
    r = sample(
        gm.score_model(sde),
        sde,
        shape=(4, 2),
        sampler=SDESolver("euler", adaptive=True, rtol=0.3, atol=0.3),
        steps=20,
        eps=1e-3,
        seed=0,
    )
    assert r.status == "success"


def test_documented_errors(oracle):
    _, model, x_T, _ = oracle
    x = x_T[:2]
    with pytest.raises(ValueError, match=r"Invalid sampler 'dpm'. Must be one of \('ddim', 'ddpm', 'dpmsolver\+\+'"):
        sample(model, SDE, x, method="dpm")
    with pytest.raises(ValueError, match="Invalid torchdiffeq method 'rk5'.*Must be one of"):
        sample(model, SDE, x, method="ode:rk5")
    with pytest.raises(ValueError, match="Invalid torchsde method 'rk4'.*Must be one of"):
        sample(model, SDE, x, sampler="sde:rk4")
    with pytest.raises(ValueError, match="takes no ':method' suffix"):
        sample(model, SDE, x, sampler="ddim:rk4")
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1; got 0"):
        sample(model, SDE, x, steps=0)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"DDIM: `eta` must lie in \[0.0, 1.0\]"):
            sample(model, SDE, x, eta=eta)
    # an option that does not apply is an error naming it, never silently ignored
    with pytest.raises(ValueError, match="Option 'eta' does not apply to sampler 'dpmsolver\\+\\+'"):
        sample(model, SDE, x, method="dpmsolver++", eta=0.5)
    with pytest.raises(ValueError, match="Option 'variance' does not apply to sampler 'ddim'"):
        sample(model, SDE, x, method="ddim", variance="beta")
    with pytest.raises(ValueError, match="Option 'rtol' does not apply to sampler 'ddim'"):
        sample(model, SDE, x, rtol=1e-3)
    with pytest.raises(ValueError, match="`rtol` does not apply to the fixed-step method 'rk4'"):
        sample(model, SDE, x, method="ode:rk4", rtol=1e-3)
    with pytest.raises(ValueError, match="`options` does not apply to the fixed-step method 'rk4'"):
        sample(model, SDE, x, sampler=ODESolver("rk4", options={"step_size": 0.5}))
    with pytest.raises(ValueError, match="`rtol`/`atol` apply with adaptive=True only"):
        sample(model, SDE, x, method="sde:euler", rtol=1e-3)
    with pytest.raises(ValueError, match="Options \\['eta'\\] were given next to the sampler object"):
        sample(model, SDE, x, sampler=DDIM(), eta=0.5)
    # the sampler objects validate at construction
    with pytest.raises(ValueError, match="DDPM: invalid variance 'fixed'"):
        DDPM("fixed")
    with pytest.raises(ValueError, match="PC: invalid predictor 'ald'"):
        PC("ald")
    with pytest.raises(ValueError, match=r"DDIM: `eta` must lie in \[0.0, 1.0\]; got 5"):
        DDIM(eta=5)
    with pytest.raises(ValueError, match=r"PC: `snr` must lie in \(0.0, inf\]"):
        PC(snr=0.0)
    with pytest.raises(ValueError, match=r"PC: `n_corrector` must be an integer in \[0, 1000\]"):
        PC(n_corrector=-1)
    with pytest.raises(ValueError, match=r"UniPC: `order` must be an integer in \[1, 3\]; got 4"):
        UniPC(order=4)
    with pytest.raises(ValueError, match="UniPC: invalid variant 'bh3'"):
        UniPC(variant="bh3")
    with pytest.raises(ValueError, match=r"IPNDM: `order` must be an integer in \[1, 4\]"):
        IPNDM(order=5)
    with pytest.raises(ValueError, match="`diffusers_3m` applies to order=3 only"):
        DPMSolverPP(order=2, diffusers_3m=True)
    with pytest.raises(TypeError, match="`lower_order_final` must be True or False"):
        DEIS(lower_order_final="yes")
    with pytest.raises(ValueError, match="Karras: `rho` must be a number > 0"):
        Karras(rho=0.0)
    # numpy scalars are numbers
    sample(model, SDE, x, eta=np.float32(0.5), steps=np.int64(3), seed=0)
    with pytest.raises(ValueError, match="`grid` must be strictly decreasing.*monotone"):
        sample(model, SDE, x, grid=torch.tensor([1.0, 0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="`grid` must be a 1-D tensor of at least 2 times"):
        sample(model, SDE, x, grid=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"`grid` times must lie in \[0, T\]"):
        sample(model, SDE, x, grid=torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="Invalid grid 'cosine'"):
        sample(model, SDE, x, grid="cosine")
    with pytest.raises(ValueError, match="Give `x_T` or `shape`"):
        sample(model, SDE)
    with pytest.raises(ValueError, match="needs the DDPM schedule of a VPSDE"):
        ve = VESDE()
        sample(GaussianMixture.random(2, 2).score_model(ve), ve, x, grid="leading")
    with pytest.raises(ValueError, match="ODE solvers end at t = eps; `set_alpha_to_one=True` applies to"):
        sample(model, SDE, x, method="ode", set_alpha_to_one=True)
    with pytest.raises(ValueError, match="chooses its own steps; `grid` does not apply"):
        sample(model, SDE, x, method="ode:dopri5", grid="uniform")
    with pytest.raises(ValueError, match=r"SDE solvers step with a fixed dt .*`grid` does not apply"):
        sample(model, SDE, x, method="sde", grid="karras")
    with pytest.raises(ValueError, match="Pass either `seed` or `generator`"):
        sample(model, SDE, shape=(2, 2), seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="needs one seed per sample"):
        sample(model, SDE, shape=(2, 2), seed=[1, 2, 3])
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"`eps` must lie in \(0, T\) = \(0, 1.0\)"):
            sample(model, SDE, x, method="sde:euler", eps=eps)
    with pytest.raises(TypeError, match="`sampler` must be a sampler object or a name"):
        sample(model, SDE, x, sampler=None)
    with pytest.raises(ValueError, match="`sampler` names method 'rk4' but `method` is 'euler'"):
        make_sampler("ode:rk4", method="euler")
    with pytest.raises(ValueError, match=r"`shape` must be \(B, \*sample_shape\) with positive sizes"):
        sample(model, SDE, shape=(4,))
    with pytest.raises(ValueError, match=r"`x_T` must be a tensor of shape \[B, \*sample_shape\]"):
        sample(model, SDE, x[0])
    with pytest.raises(TypeError, match="`x_T` must be a float32 or float64 tensor"):
        sample(model, SDE, x.long())
    with pytest.raises(TypeError, match="`x_T` must be a torch.Tensor"):
        sample(model, SDE, x.numpy())
    with pytest.raises(ValueError, match="`x_T` must be finite; got 4 NaN"):
        sample(model, SDE, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="ODE solvers integrate in continuous time"):
        sample(model, SDE, x, method="ode:euler", grid="trailing")
    with pytest.raises(ValueError, match=r"`steps_offset` 500 moves timesteps outside \[0, 999\]"):
        sample(model, SDE, x, grid=DDPMSpacing("leading", offset=500), steps=2)
    with pytest.raises(ValueError, match="uses constant-step coefficients: on the non-uniform grid 'quadratic'"):
        sample(model, SDE, x, method="ode:explicit_adams", grid="quadratic")


def test_zero_length_last_step_is_refused_not_a_crash():
    """Issue 9's bug: with set_alpha_to_one=False the 'leading' and 'linspace' arrays end at timestep 0, and the final
    point is timestep 0 again: DPM-Solver++ divided by a zero step (r = h_prev / h). Now a clear error."""
    sde = VPSDE()
    model = sdeflow.ScoreModel(lambda x, t: 0.1 * x, sde, "eps", sdeflow.DDPMTimesteps(1000))
    x = torch.randn(3, 2)
    for grid in ("leading", "linspace"):
        for smp in (DPMSolverPP(), DPMSolverPP(lower_order_final=False), DDIM()):
            with pytest.raises(ValueError, match="does not lower the noise"):
                sample(model, sde, x, sampler=smp, steps=20, grid=grid, set_alpha_to_one=False)
    r = sample(model, sde, x, sampler=DPMSolverPP(), steps=20, grid="trailing", set_alpha_to_one=False)
    assert r.status == "success" and r.nfe == 20
