"""Traceable modules of the exporter: one network call (``NetCall``, copied once per evaluation into the unrolled
graph), the whole plan (``PlanModule``, the fallback for networks with control-flow subgraphs) and the body of the
dynamic-steps Scan (``ScanStep``).

Nothing here computes a coefficient: ``PlanModule`` runs the plan with ``sdeflow.sampling.run_plan`` (THE loop of
``sdeflow.sample``), and ``ScanStep`` reads its coefficient rows from its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sdeflow.sampling.plan import Plan, run_plan

__all__ = ["NetCall", "GuidedCall", "PlanModule", "ScanStep"]


def _label(label: Tensor, batch: int, broadcast: bool) -> Tensor:
    """The network's time input from a 0-d label: shape [1] (broadcast by the network) or [B]."""
    lab = label.reshape(1)
    return lab if broadcast else lab.expand(batch)


class NetCall(nn.Module):
    """out = net(x, label) for a 0-d ``label``. With ``broadcast`` the network receives it with shape [1] (only
    used when the exporter checked that the network broadcasts it): the time pathway then depends on constants
    only and onnxruntime folds it at session start."""

    def __init__(self, net: nn.Module | Callable, broadcast: bool) -> None:
        super().__init__()
        self.net = net
        self.broadcast = broadcast

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        return self.net(x, _label(label, x.shape[0], self.broadcast))


class GuidedCall(nn.Module):
    """Classifier-free guidance around one call of a class-conditional network ``net(x, label, cond)``
    (docs/math.md section 10): with the graph inputs ``class_labels`` int64 [B] and ``guidance`` w (0-d float32),

        out = out_c + w (out_c - out_u),   [out_c; out_u] = net([x; x], [label; label], [class_labels; K])

    one network call on 2B rows, as ``sdeflow.sample(..., cond=, guidance=)`` makes it (for every w, w = 0
    included: one file serves every w)."""

    def __init__(self, net: nn.Module | Callable, null: int) -> None:
        super().__init__()
        self.net = net
        self.null = int(null)

    def forward(self, x: Tensor, label: Tensor, class_labels: Tensor, guidance: Tensor) -> Tensor:
        b = x.shape[0]
        lab = label.reshape(1).expand(2 * b)
        cond = torch.cat([class_labels, torch.full_like(class_labels, self.null)])
        out = self.net(torch.cat([x, x]), lab, cond)
        out_c, out_u = out[:b], out[b:]
        return out_c + guidance * (out_c - out_u)


class PlanModule(nn.Module):
    """x_0 = the plan run from x_T by ``run_plan``: ``forward(x_T, noise=None)``, noise [K, B, ...] when the plan
    draws K > 0 times. Evaluation i calls the network with the constant ``labels[i]``."""

    def __init__(self, net: nn.Module | Callable, plan: Plan, labels: list[Tensor], broadcast: bool) -> None:
        super().__init__()
        self.call = NetCall(net, broadcast)
        self.plan = plan
        self.labels = labels

    def forward(self, x_T: Tensor, noise: Tensor | None = None) -> Tensor:
        draws = iter(range(self.plan.noise_draws))

        def next_noise() -> Tensor:  # the exporter passes ``noise`` exactly when the plan draws
            assert noise is not None  # the exporter passes noise exactly when the plan draws
            return noise[next(draws)]

        return run_plan(self.plan, lambda x, i: self.call(x, self.labels[i]), x_T, next_noise)


class ScanStep(nn.Module):
    """One iteration of the dynamic-steps Scan: one network evaluation and the linear algebra up to the next.

    State: x (the sample), s (the next network input), outs / ins [W, B, ...] (the last W outputs and inputs,
    newest first). With out = net(s, label), outs' = [out, outs[:-1]], ins' = [s, ins[:-1]] and the coefficient
    rows ``coef`` [2, 2W + 2] (row 0 for x, row 1 for s):

        x' = c00 x + sum_j c0(1+j) outs'_j + sum_j c0(1+W+j) ins'_j + c0(2W+1) z
        s' = c10 x + sum_j c1(1+j) outs'_j + sum_j c1(1+W+j) ins'_j + c1(2W+1) z

    (z: this iteration's noise, zero where the sampler draws none). For DDIM and the multistep samplers s' = x';
    UniPC and Heun evaluate at a predicted point, which s carries.
    """

    def __init__(self, net: nn.Module | Callable, broadcast: bool, window: int, stochastic: bool) -> None:
        super().__init__()
        self.call = NetCall(net, broadcast)
        self.window = int(window)
        self.stochastic = stochastic

    def forward(
        self, x: Tensor, s: Tensor, outs: Tensor, ins: Tensor, label: Tensor, coef: Tensor, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = self.window
        out = self.call(s, label)
        outs_new = torch.cat([out[None], outs[: w - 1]])  # (an empty slice at W = 1 keeps the inputs in the graph)
        ins_new = torch.cat([s[None], ins[: w - 1]])
        view = (2, w) + (1,) * x.dim()
        c_out = coef[:, 1 : 1 + w].reshape(view)
        c_in = coef[:, 1 + w : 1 + 2 * w].reshape(view)
        both = (c_out * outs_new[None]).sum(1) + (c_in * ins_new[None]).sum(1)  # [2, B, ...]
        scale = (1,) * x.dim()
        both = both + coef[:, 0].reshape((2, *scale)) * x[None]
        if self.stochastic:
            assert z is not None  # a stochastic step is always given its noise
            both = both + coef[:, 2 * w + 1].reshape((2, *scale)) * z[None]
        return both[0], both[1], outs_new, ins_new
