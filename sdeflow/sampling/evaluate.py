"""NFE counting: every sampler reaches the network through ``CountingNet``, so ``nfe`` is the number of network
calls actually made (EDM's counting: a step that reuses an evaluation, or a final step to sigma = 0 that needs none,
costs nothing)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["CountingNet"]


class CountingNet:
    """Wraps ``net(x, label)``; ``calls`` counts evaluations and ``on_call()`` is called after counting each one.
    Counting happens outside the solver: what the solver sees is the network's own output."""

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], on_call: Callable[[], None] | None = None) -> None:
        self.net = net
        self.calls = 0
        self.on_call = on_call

    def __call__(self, x: Tensor, label: Tensor) -> Tensor:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return self.net(x, label)
