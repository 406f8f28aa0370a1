"""Class conditions and classifier-free guidance (docs/math.md section 10).

Convention. A class-conditional network is called as ``net(x, label, cond)`` with ``cond`` an int64 tensor [B] of
class labels 0..K-1 and the reserved value K = "no label" (the null class, what condition dropout trains, Ho &
Salimans 2022). ``ScoreModel(net, sde, ..., num_classes=K)`` knows K; without a condition it passes the null class,
so a conditional model is also an unconditional one.

Guidance. With out_c = out(x | c) and out_u = out(x | none) (the raw network outputs, whatever they predict),

    out_guided = out_c + w (out_c - out_u) = out_u + s (out_c - out_u),   s = 1 + w,

so w = 0 is plain conditional sampling (one pass, no unconditional output needed) and s is diffusers'
``guidance_scale``. Every conversion eps/x0/v/score is affine in the output with coefficients that do not depend on
the output (``output_conversion``), so guiding the raw output is guiding the score: s_guided = s_u + s (s_c - s_u),
and the guided output folds into every sampler's plan unchanged. For w != 0 the two passes run as ONE batched network
call on [x; x] with labels [c; K]: one network evaluation (NFE 1) processing 2B rows.

Other conditions. ``GuidedNet`` works with any condition tensor [B, ...]: give the null condition explicitly
(``null=``), and in sdeflow's MLP and UNet replace ``net.cond_embed`` by a module mapping the condition [B, ...] to
the embedding [B, emb_dim] (text embeddings, continuous attributes); the class embedding is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _validate as V

__all__ = ["GuidedNet", "check_labels", "check_guidance", "class_labels"]


def check_labels(labels: Any, name: str, num_classes: int, *, allow_null: bool = True, batch: int | None = None
                 ) -> Tensor:
    """Class labels as an int64 tensor: a 0-d label (every sample) or [B]; values in 0..K-1, or K (null) when
    ``allow_null``."""
    if isinstance(labels, bool) or labels is None:
        raise V.bad_value(name, "an integer class label or a sequence of them", labels, error=TypeError)
    if isinstance(labels, (int, np.integer)):
        t = torch.tensor(int(labels), dtype=torch.int64)
    elif isinstance(labels, (Tensor, np.ndarray, Sequence)):
        t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            if t.is_floating_point() and bool(torch.isfinite(t).all()) and bool((t == t.round()).all()):
                t = t.long()
            else:
                raise V.bad_value(name, "integer class labels", labels, "Pass an int64 tensor of labels.",
                                  error=TypeError)
        t = t.to(torch.int64)
    else:
        raise V.bad_value(name, "an integer class label or a sequence of them", labels, error=TypeError)
    if t.ndim > 1:
        raise V.bad_value(name, "a single label or a 1-D tensor [B] of labels", labels)
    top = num_classes if allow_null else num_classes - 1
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > top):
        bad = t[(t < 0) | (t > top)].flatten()[:5].tolist()
        null = f" or {num_classes} (no label)" if allow_null else ""
        raise V.bad_value(name, f"class labels in 0..{num_classes - 1}{null}", bad,
                          f"The model has {num_classes} classes.")
    if batch is not None and t.ndim == 1 and t.shape[0] != batch:
        raise V.bad_value(name, f"one label or one label per sample ([B] = [{batch}])", labels)
    return t


def check_guidance(guidance: Any, name: str = "guidance") -> float:
    """The guidance weight w (a finite number; s = 1 + w is diffusers' guidance_scale)."""
    return V.check_float(guidance, name)


class GuidedNet(nn.Module):
    """``net(x, label) -> out`` of a conditional ``net(x, label, cond)`` with the condition bound and guidance w:

        out = out_u + s (out_c - out_u),  s = 1 + w,  out_c = net(x, label, cond), out_u = net(x, label, null)

    computed as one call on the batch [x; x] with conditions [cond; null] when s != 1, and as the single conditional
    call when s = 1 (w = 0). ``rescale`` phi in [0, 1] (guidance rescale, Lin et al. 2024; diffusers'
    ``guidance_rescale``) then mixes in the guided output rescaled to the per-sample standard deviation of out_c:
    out <- phi out std(out_c) / std(out) + (1 - phi) out (nonlinear in the outputs; std over all but the batch axis,
    unbiased, as diffusers). ``label_range`` (lo, hi): guidance applies only to rows whose network time label lies
    in [lo, hi] (a guidance interval, Kynkaanniemi et al. 2024); outside it the output is out_c, and an evaluation
    with every row outside costs one pass of B rows. ``cond`` is [B, ...] (or a 0-d class label used for every
    sample), ``null`` the null condition of one sample (shape ``cond.shape[1:]``: 0-d for class labels), broadcast
    to the batch. ``sample_shape`` is forwarded, so the guided network is checked against data as the network itself.
    """

    def __init__(self, net: Callable[..., Tensor], cond: Tensor, null: Tensor, guidance: float = 0.0,
                 rescale: float = 0.0, label_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.net = net
        self.cond = cond
        self.null = null
        self.scale = 1.0 + float(guidance)
        self.rescale = float(rescale)
        self.label_range = label_range
        shape = getattr(net, "sample_shape", None)
        if shape is not None:
            self.sample_shape = tuple(shape)

    @staticmethod
    def _rows(c: Tensor, b: int, device: torch.device) -> Tensor:
        c = c.to(device)
        return c.expand(b) if c.ndim == 0 else c

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        b = x.shape[0]
        cond = self._rows(self.cond, b, x.device)
        if cond.shape[0] != b:
            raise ValueError(
                f"`cond` holds {cond.shape[0]} conditions for a batch of {b} samples; pass one per sample (or a "
                "single class label for all)."
            )
        inside = None
        if self.label_range is not None and self.scale != 1.0:
            lab = label.double().expand(b) if label.numel() == 1 else label.double()
            inside = (lab >= self.label_range[0]) & (lab <= self.label_range[1])
            if not bool(inside.any()):  # outside the guidance interval: plain conditional, one pass
                return self.net(x, label, cond)
        if self.scale == 1.0:
            return self.net(x, label, cond)
        null = self.null.to(x.device).expand(b, *cond.shape[1:])  # one null condition, for every row
        out = self.net(torch.cat([x, x]), torch.cat([label, label]), torch.cat([cond, null.to(cond.dtype)]))
        out_c, out_u = out[:b], out[b:]
        guided = out_u + self.scale * (out_c - out_u)
        if self.rescale != 0.0:
            # guidance rescale (Lin et al. 2024, section 3.4; diffusers' rescale_noise_cfg): match the per-sample
            # std of the guided output to the conditional one's, mixed with weight phi
            dims = list(range(1, guided.ndim))
            ratio = out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = self.rescale * guided * ratio + (1.0 - self.rescale) * guided
        if inside is not None:  # guidance interval: rows outside it keep the conditional output
            guided = torch.where(inside.reshape(b, *([1] * (x.ndim - 1))), guided, out_c)
        return guided


def class_labels(classes: int | Sequence[int] | str, n: int, num_classes: int | None, name: str = "classes"
                 ) -> Tensor:
    """The per-sample labels [n] for ``classes``: one class for every sample, a list of n (one per sample), or a
    shorter list of L classes with L dividing n, each repeated for n / L consecutive samples (so ``0,1,...,9`` with
    n = 100 gives ten rows of one class in a 10-wide grid). A string is a comma-separated list ('7', '0,1,2').
    ``num_classes`` is the model's K (None: an unconditional model, which refuses classes)."""
    n = V.check_int(n, "n", min=1)
    if num_classes is None:
        raise ValueError(f"`{name}` was given but the model is unconditional (no num_classes); train it with "
                         "--conditional (TrainConfig(conditional=True)).")
    if isinstance(classes, str):
        try:
            classes = [int(c) for c in classes.split(",")]
        except ValueError:
            raise V.bad_value(name, "a class label or a comma-separated list such as 0,1,2", classes) from None
    lab = check_labels(classes, name, num_classes, allow_null=False)
    if lab.ndim == 0:
        return lab.expand(n).clone()
    if lab.numel() == 0 or n % lab.numel():
        raise V.bad_value(name, f"one class, {n} classes (one per sample) or a list whose length divides {n}",
                          classes, "Change the number of samples or the list.")
    return lab.repeat_interleave(n // lab.numel())
