"""The torchsde wrapper of the reverse SDE: the solver always sees the true drift; NFE counts distinct evaluations."""

from __future__ import annotations

import torch

from sdeflow import VPSDE, GaussianMixture, ReverseSDE
from sdeflow.sampling.solvers import _ReverseSDE


def test_every_call_returns_the_true_drift_and_a_repeat_of_the_first_point_is_not_reevaluated() -> None:
    sde = VPSDE()
    model = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(0)).score_model(sde)
    calls = []
    counted = type(model)(lambda x, t: calls.append(1) or model.net(x, t), sde, model.prediction, model.time_label)
    wrapper, plain = _ReverseSDE(sde, counted, (2,), "ito"), ReverseSDE(sde, model, (2,))
    y0, y1 = torch.randn(4, 2, generator=torch.Generator().manual_seed(1)), torch.randn(4, 2)
    s0, s1 = torch.tensor(0.0), torch.tensor(0.25)
    for s, y in ((s0, y0), (s0, y0), (s1, y1), (s0, y0)):  # torchsde: the shape check, then the solver's steps
        assert torch.allclose(wrapper.f(s, y), plain.f(s, y))
    assert len(calls) == 3  # the repeat of the first point reused its value; later repeats are evaluated again
