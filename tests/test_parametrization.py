"""Parameterisation adapters: networks predicting eps, x0, v or the score give the same exact score."""

import pytest
import torch

from sdeflow import VESDE, VPSDE, ContinuousTime, DDPMTimesteps, GaussianMixture, ScoreModel, ScoreSDETime, SubVPSDE
from sdeflow.parametrization import as_score_model

SDES = [VPSDE(), SubVPSDE(), VESDE()]
IDS = ["vp", "subvp", "ve"]


def _mixture():
    return GaussianMixture.random(dim=4, n_components=3, generator=torch.Generator().manual_seed(1))


def _oracle_net(gm, sde, prediction, time_label, image_shape=None):
    """A 'network' that returns the exact eps / x0 / v / score of the mixture, reading t back from its label."""

    def label_to_t(label):
        if isinstance(time_label, DDPMTimesteps):
            return (label.double() + 1) / time_label.N
        if isinstance(time_label, ScoreSDETime):
            return label.double() / (time_label.N - 1)
        return label.double()

    def net(x, label):
        t = label_to_t(label)
        flat = x.reshape(x.shape[0], -1).double()
        s = gm.score(flat, t, sde)
        alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        eps = -sigma * s
        x0 = (flat + sigma**2 * s) / alpha
        out = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "score": s}[prediction]
        return out.reshape(x.shape).to(x.dtype)

    return net


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("time_label", [ContinuousTime(), DDPMTimesteps(1000), ScoreSDETime(1000)], ids=str)
def test_every_parameterisation_gives_the_exact_score(sde, prediction, time_label):
    gm = _mixture()
    model = ScoreModel(_oracle_net(gm, sde, prediction, time_label), sde, prediction, time_label)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    # DDPM labels are clipped to [0, N-1], i.e. t in [1/N, 1]
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    exact = gm.score(x, t, sde)
    torch.testing.assert_close(model.score(x, t), exact, rtol=1e-7, atol=1e-7)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    torch.testing.assert_close(model.eps(x, t), -sigma * exact, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(model.x0(x, t), (x + sigma**2 * exact) / alpha, rtol=1e-7, atol=1e-6)


def test_any_input_shape_and_scalar_time():
    sde = VPSDE()
    gm = _mixture()
    model = ScoreModel(_oracle_net(gm, sde, "eps", ContinuousTime()), sde, "eps")
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    s = model(x, 0.3)
    assert s.shape == x.shape
    torch.testing.assert_close(s.reshape(5, 4), gm.score(x.reshape(5, 4), 0.3, sde))


def test_integer_ddpm_labels():
    seen = {}

    def net(x, label):
        seen["label"] = label
        return torch.zeros_like(x)

    sde = VPSDE()
    model = ScoreModel(net, sde, "eps", DDPMTimesteps(1000, integer=True))
    t = torch.tensor([1.0, 0.5, 0.001, 0.0], dtype=torch.float64)
    model.eps(torch.zeros(4, 3, dtype=torch.float64), t)
    assert seen["label"].dtype == torch.int64
    assert seen["label"].tolist() == [999, 499, 0, 0]


def test_time_is_clamped_so_probes_outside_the_interval_stay_finite():
    sde = VPSDE()
    gm = _mixture()
    model = gm.score_model(sde)
    x = torch.randn(3, 4, dtype=torch.float64)
    for t in (-1e-3, 0.0, 1.0 + 1e-3):
        assert torch.isfinite(model.score(x, t)).all()
    eps_model = ScoreModel(lambda x, t: torch.ones_like(x), sde, "eps")
    assert torch.isfinite(eps_model.score(x, 0.0)).all()


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: ScoreModel(lambda x, t: x, VPSDE(), "noise"), ValueError, "Invalid prediction 'noise'. Must be"),
        (lambda: ScoreModel(lambda x, t: x, "vp"), TypeError, "`sde` must be an sdeflow SDE"),
        (lambda: ScoreModel(3, VPSDE()), TypeError, "`net` must be callable"),
        (lambda: ScoreModel(lambda x, t: x, VPSDE(), t_min=0.0), ValueError, r"`t_min` must lie in \(0, T\)"),
        (lambda: DDPMTimesteps(N=1), ValueError, "`N` must be an integer >= 2"),
        (
            lambda: ScoreModel(lambda x, t: x[:, :1], VPSDE()).score(torch.zeros(2, 3), 0.5),
            ValueError,
            "The network returned shape",
        ),
        (
            lambda: as_score_model(_mixture().score_model(VPSDE()), VESDE()),
            ValueError,
            "built for VPSDE.*used with VESDE",
        ),
    ],
)
def test_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
