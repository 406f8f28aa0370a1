"""Class-conditional models and classifier-free guidance against the Gaussian-mixture oracle (docs/math.md
section 10): the classes are the components, the null class is the whole mixture."""

from __future__ import annotations

import pytest
import torch

import sdeflow
from sdeflow import VPSDE, GaussianMixture, ScoreModel
from sdeflow.likelihood import log_likelihood
from sdeflow.models import build_model

SDE = VPSDE()


def _mixture(dim: int = 2, seed: int = 0) -> GaussianMixture:
    return GaussianMixture.random(dim, n_components=3, scale=3.0, generator=torch.Generator().manual_seed(seed))


def _closed_form_guided(gm: GaussianMixture, k: int, w: float) -> ScoreModel:
    """s_u + (1 + w)(s_k - s_u) written out from the oracle, as a plain score model."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s_u, s_c = gm.score(x, t, SDE), gm.score(x, t, SDE, labels=k)
        return s_u + (1 + w) * (s_c - s_u)

    return ScoreModel(score, SDE, prediction="score")


def test_conditional_sampling_reproduces_the_component() -> None:
    gm = _mixture()
    model = gm.conditional_score_model(SDE)
    for k in range(3):
        x = sdeflow.sample(model, SDE, shape=(4000, 2), seed=0, cond=k, sampler="dpmsolver++", steps=40,
                           dtype=torch.float64).samples
        # E[x] and Cov[x] of component k, perturbed by the final noise level sigma(eps)^2 (negligible)
        assert (x.mean(0) - gm.means[k]).abs().max() < 0.05, (k, x.mean(0), gm.means[k])
        assert (torch.cov(x.T) - gm.covariances[k]).abs().max() < 0.05


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "unipc", "ddpm", "pc", "heun", "ode:rk4", "ode", "sde"])
def test_guided_sampling_equals_the_closed_form_guided_score(sampler: str) -> None:
    gm, w, k = _mixture(), 2.0, 1
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kw = dict(sampler=sampler, steps=12, seed=5)
    guided = sdeflow.sample(gm.conditional_score_model(SDE), SDE, x_T, cond=k, guidance=w, **kw)
    exact = sdeflow.sample(_closed_form_guided(gm, k, w), SDE, x_T, **kw)
    assert (guided.samples - exact.samples).abs().max() < 1e-10
    # one batched network call per evaluation: the same NFE as the closed form's single score calls
    assert guided.nfe == exact.nfe


def test_guidance_moves_samples_away_from_the_other_classes() -> None:
    # 1-D, two classes at -2 and +2: guiding towards class 0 pushes mass away from class 1 (the guided density is
    # p(x|0)^(1+w) / p(x)^w, whose mean lies below -2 and variance shrinks)
    gm = GaussianMixture([1.0, 1.0], torch.tensor([[-2.0], [2.0]]), torch.tensor([0.5, 0.5]))
    model = gm.conditional_score_model(SDE)
    x_T = torch.randn(3000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means, stds = [], []
    for w in (0.0, 1.0, 4.0):
        x = sdeflow.sample(model, SDE, x_T, cond=0, guidance=w, sampler="dpmsolver++", steps=30).samples
        exact = sdeflow.sample(_closed_form_guided(gm, 0, w), SDE, x_T, sampler="dpmsolver++", steps=30).samples
        assert (x - exact).abs().max() < 1e-10
        means.append(float(x.mean()))
        stds.append(float(x.std()))
    assert abs(means[0] + 2.0) < 0.05 and abs(stds[0] - 0.5**0.5) < 0.05  # w = 0: the component itself
    assert means[2] < means[1] < means[0] and stds[2] < stds[1] < stds[0]


def test_unconditional_sampling_of_a_conditional_model_is_the_mixture() -> None:
    gm = _mixture()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = sdeflow.sample(gm.conditional_score_model(SDE), SDE, x_T, steps=10).samples
    b = sdeflow.sample(gm.score_model(SDE), SDE, x_T, steps=10).samples
    null = sdeflow.sample(gm.conditional_score_model(SDE), SDE, x_T, cond=3, steps=10).samples
    assert (a - b).abs().max() < 1e-10 and (null - b).abs().max() < 1e-10


def test_per_sample_labels_and_one_batched_call() -> None:
    gm = _mixture()
    calls: list[tuple[int, list[int]]] = []

    def net(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], c.tolist()))
        return gm.score(x, t, SDE, labels=c)

    model = ScoreModel(net, SDE, prediction="score", num_classes=3)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sdeflow.sample(model, SDE, x_T, cond=[0, 1, 2], guidance=1.5, steps=4)
    assert res.nfe == len(calls) == 4
    assert all(rows == 6 and c == [0, 1, 2, 3, 3, 3] for rows, c in calls)
    rows = [sdeflow.sample(model, SDE, x_T[i : i + 1], cond=i, guidance=1.5, steps=4).samples for i in range(3)]
    assert (torch.cat(rows) - res.samples).abs().max() < 1e-12
    calls.clear()
    sdeflow.sample(model, SDE, x_T, cond=2, steps=4)  # w = 0: the conditional pass alone
    assert all(rows == 3 and c == [2, 2, 2] for rows, c in calls)


@pytest.mark.parametrize("dim", [2, 8])
def test_conditional_likelihood_matches_the_component_density(dim: int) -> None:
    gm = _mixture(dim, seed=dim)
    labels = torch.tensor([0, 1, 2, 0, 3])
    x = torch.cat([gm.sample(1, torch.Generator().manual_seed(i), torch.float64, component=int(k) % 3)
                   for i, k in enumerate(labels)])
    res = log_likelihood(SDE, gm.conditional_score_model(SDE), x, cond=labels,
                         prior_logp=gm.prior_logp(SDE, labels=labels))
    exact = gm.log_prob(x, 1e-5, SDE, labels=labels)
    assert ((res.log_p - exact).abs() / dim).max() < 1e-3
    # the closed form itself: component k's Gaussian log-density, the null class the mixture
    k = 1
    c_k = SDE.alpha(torch.tensor(1e-5, dtype=torch.float64)) ** 2 * gm.covariances[k] + SDE.sigma(
        torch.tensor(1e-5, dtype=torch.float64)) ** 2 * torch.eye(dim, dtype=torch.float64)
    mean_k = SDE.alpha(torch.tensor(1e-5, dtype=torch.float64)) * gm.means[k]
    ref = torch.distributions.MultivariateNormal(mean_k, c_k).log_prob(x[1])
    assert abs(float(exact[1] - ref)) < 1e-9
    assert abs(float(exact[4] - gm.log_prob(x[4:5], 1e-5, SDE)[0])) < 1e-12


@pytest.mark.parametrize("config", [{"type": "mlp", "dim": 3, "width": 16, "depth": 1, "num_classes": 4},
                                    {"type": "unet", "image_size": 4, "channels": 16, "mults": [1], "num_classes": 4}])
def test_networks_take_a_class(config: dict) -> None:
    torch.manual_seed(0)
    net = build_model(config)
    for p in net.parameters():  # the UNet's output layer starts at zero: make the output depend on the input
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(4, *net.sample_shape)
    t = torch.full((4,), 0.3)
    a, b = net(x, t, torch.tensor([0, 1, 2, 3])), net(x, t, torch.tensor([1, 1, 2, 4]))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), 4)))  # no condition = the null class K
    uncond = build_model({k: v for k, v in config.items() if k != "num_classes"})
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer"):
        build_model(config | {"num_classes": 0})


def test_checkpoint_records_the_classes(tmp_path) -> None:
    config = {"type": "mlp", "dim": 2, "width": 8, "depth": 1, "num_classes": 3}
    net = build_model(config)
    data = {"name": "x", "levels": None, "scale": 1.0, "offset": 0.0}
    sdeflow.save(tmp_path / "c", net, SDE, "eps", sdeflow.ContinuousTime(), config, data)
    ckpt = sdeflow.load(tmp_path / "c")
    assert ckpt.score_model.num_classes == 3 and ckpt.net.num_classes == 3
    x = torch.randn(5, 2)
    assert torch.equal(ckpt.net(x, torch.full((5,), 0.5), torch.arange(5) % 4),
                       net.eval()(x, torch.full((5,), 0.5), torch.arange(5) % 4))
    plain = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
    sdeflow.save(tmp_path / "u", build_model(plain), SDE, "eps", sdeflow.ContinuousTime(), plain, data)
    assert sdeflow.load(tmp_path / "u").score_model.num_classes is None


def test_errors_name_the_argument() -> None:
    gm = _mixture()
    cond_model, x_T = gm.conditional_score_model(SDE), torch.randn(4, 2)
    with pytest.raises(ValueError, match="`guidance` was given without `cond`"):
        sdeflow.sample(cond_model, SDE, x_T, guidance=2.0)
    with pytest.raises(ValueError, match="model is unconditional"):
        sdeflow.sample(gm.score_model(SDE), SDE, x_T, cond=1)
    with pytest.raises(ValueError, match=r"`cond` must be class labels in 0..2 or 3 \(no label\); got \[7\]"):
        sdeflow.sample(cond_model, SDE, x_T, cond=[0, 1, 7, 2])
    with pytest.raises(ValueError, match=r"`cond` must be one label or one label per sample \(\[B\] = \[4\]\)"):
        sdeflow.sample(cond_model, SDE, x_T, cond=[0, 1])
    with pytest.raises(TypeError, match="`cond` must be integer class labels"):
        sdeflow.sample(cond_model, SDE, x_T, cond=torch.tensor([0.5, 1, 1, 1]))
    with pytest.raises(ValueError, match="`guidance` must be"):
        sdeflow.sample(cond_model, SDE, x_T, cond=1, guidance=float("nan"))
    with pytest.raises(ValueError, match="model is unconditional"):
        log_likelihood(SDE, gm.score_model(SDE), x_T, cond=1)


def test_class_log_likelihoods_layout_and_bayes_rule() -> None:
    from sdeflow.likelihood import class_log_likelihoods

    gm = _mixture(seed=4)
    x, comp = gm.sample_labelled(5, torch.Generator().manual_seed(2), torch.float64)
    rows_prior = gm.prior_logp(SDE, labels=torch.arange(3).repeat(5))
    # points far from a class (log p ~ -300) need a tight solve for an absolute 1e-3: rtol = atol = 1e-7
    got = class_log_likelihoods(SDE, gm.conditional_score_model(SDE), x, prior_logp=rows_prior, rtol=1e-7, atol=1e-7)
    exact = torch.stack([gm.log_prob(x, 1e-5, SDE, labels=c) for c in range(3)], dim=1)
    assert got.shape == (5, 3) and ((got - exact).abs() / 2).max() < 1e-3
    # Bayes' rule with the mixture weights gives the exact posterior over components
    post = torch.log_softmax(got + torch.log(gm.weights), dim=1)
    ref = torch.log_softmax(exact + torch.log(gm.weights), dim=1)
    assert (post - ref).abs().max() < 1e-2
    with pytest.raises(ValueError, match="must be class-conditional"):
        class_log_likelihoods(SDE, gm.score_model(SDE), x)


def test_other_condition_types_with_an_explicit_null() -> None:
    # a condition that is a vector per sample (e.g. a text embedding), with the zero vector as "no condition"
    def net(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -x + c

    model = ScoreModel(net, SDE, prediction="score", num_classes=1)
    cond = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    guided = model.conditioned(cond, guidance=1.5, null=torch.zeros(2, dtype=torch.float64))
    x = torch.randn(2, 2, dtype=torch.float64)
    # out_u + s (out_c - out_u) = -x + 2.5 c
    assert torch.allclose(guided.score(x, 0.5), -x + 2.5 * cond)
    with pytest.raises(TypeError, match="With an explicit `null`"):
        model.conditioned([1, 2], null=torch.zeros(2))


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "ode:rk4"])
def test_guidance_interval_equals_the_closed_form(sampler: str) -> None:
    gm, w, k, (lo, hi) = _mixture(), 3.0, 2, (0.2, 0.6)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s_u, s_c = gm.score(x, t, SDE), gm.score(x, t, SDE, labels=k)
        on = ((t >= lo) & (t <= hi)).to(x.dtype)[:, None]
        return s_c + on * w * (s_c - s_u)

    calls: list[int] = []

    def net(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return gm.score(x, t, SDE, labels=c)

    model = ScoreModel(net, SDE, prediction="score", num_classes=3)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = sdeflow.sample(model, SDE, x_T, sampler=sampler, steps=10, cond=k, guidance=w, guidance_interval=(lo, hi))
    exact = sdeflow.sample(ScoreModel(score, SDE, prediction="score"), SDE, x_T, sampler=sampler, steps=10)
    assert (got.samples - exact.samples).abs().max() < 1e-10
    assert got.nfe == exact.nfe and set(calls) == {32, 64}  # one pass outside the interval, a batched one inside
    full = sdeflow.sample(model, SDE, x_T, sampler=sampler, steps=10, cond=k, guidance=w).samples
    assert (full - got.samples).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"`guidance_interval\[1\]` must be"):
        sdeflow.sample(model, SDE, x_T, steps=2, cond=k, guidance=w, guidance_interval=(0.5, 0.2))
