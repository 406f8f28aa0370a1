"""Traceable DDIM modules: the whole fixed-step loop (``UnrolledDDIM``) or one step (``DDIMStep``, the
body of a dynamic-steps Scan graph).

Every DDIM step is the fused update x <- A_k x + B_k net(x, label_k) + sig_k z_k with (A_k, B_k, sig_k)
computed in float64 by ``runtime.ddim_plan`` (formula: ``runtime.ddim_coefficients``). In the unrolled module
the coefficients and labels are Python constants, so tracing embeds them in the graph; no random operator
appears (the noise z_k is an input).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .runtime import DDIMPlan

__all__ = ["UnrolledDDIM", "DDIMStep", "label_tensor"]


def label_tensor(
    value: float | int, dtype: torch.dtype, batch: int | None, device: torch.device | str = "cpu"
) -> Tensor:
    """The network's time input for one step: shape [1] (broadcast by the network) or [batch]."""
    lab = torch.full((1,), value, dtype=dtype, device=device)
    return lab if batch is None else lab.expand(batch)


class UnrolledDDIM(nn.Module):
    """x_0 = DDIM(x_T) with the S steps unrolled: ``forward(x_T, noise=None)``, noise [S, B, ...] when eta > 0.

    With ``broadcast_label`` the network receives its time label with shape [1] instead of [B] (only used when the
    exporter checked that the network broadcasts it); the time pathway of each step then depends on constants only
    and is folded into initializers at export.
    """

    def __init__(self, net: nn.Module | Callable, plan: DDIMPlan, label_dtype: torch.dtype, broadcast_label: bool):
        super().__init__()
        self.net = net
        self.labels = [v.item() for v in plan.labels]
        self.coefs = [tuple(float(c) for c in row) for row in plan.coefficients]
        self.label_dtype = label_dtype
        self.broadcast_label = broadcast_label

    def forward(self, x_T: Tensor, noise: Tensor | None = None) -> Tensor:
        x = x_T
        batch = None if self.broadcast_label else x.shape[0]
        for k, (a, b, sig) in enumerate(self.coefs):
            out = self.net(x, label_tensor(self.labels[k], self.label_dtype, batch, x.device))
            x = a * x + b * out
            if sig != 0.0 and noise is not None:
                x = x + sig * noise[k]
        return x


class DDIMStep(nn.Module):
    """One step x_s = A x_t + B net(x_t, label) + sig z, with label a scalar and (A, B, sig) = ``coef`` [3]."""

    def __init__(self, net: nn.Module | Callable, broadcast_label: bool, with_noise: bool) -> None:
        super().__init__()
        self.net = net
        self.broadcast_label = broadcast_label
        self.with_noise = with_noise

    def forward(self, x: Tensor, label: Tensor, coef: Tensor, z: Tensor | None = None) -> Tensor:
        lab = label.reshape(1) if self.broadcast_label else label.reshape(1).expand(x.shape[0])
        out = self.net(x, lab)
        x_next = coef[0] * x + coef[1] * out
        if self.with_noise:
            x_next = x_next + coef[2] * z
        return x_next
