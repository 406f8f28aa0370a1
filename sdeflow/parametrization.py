"""Network output -> score, and the time label a network expects.

A network is any callable ``net(x, label) -> out`` with ``out`` of the shape of ``x`` ([B, ...]) and ``label`` of
shape [B]. With x_t = alpha x0 + sigma eps (MATH.md section 3), ``ScoreModel`` turns its output into the three
quantities samplers need:

    prediction  eps_hat                                   x0_hat                                    score
    'eps'       out                                       (x - sigma eps_hat) / alpha               -eps_hat/sigma
    'x0'        (x - alpha x0_hat) / sigma                out                                       -eps_hat/sigma
    'v'         (alpha v + sigma x) / (alpha^2 + sigma^2) (alpha x - sigma v) / (alpha^2 + sigma^2) -eps_hat/sigma
    'score'     -sigma s                                  (x + sigma^2 s) / alpha                   out

(v = alpha eps - sigma x0; for VP alpha^2 + sigma^2 = 1 and the v formulas reduce to eps = sigma x + alpha v.)

The time label is explicit, never guessed: ``ContinuousTime`` (t itself), ``DDPMTimesteps`` (integer timestep
i = t N - 1 of a network trained on the discrete DDPM schedule, like diffusers' UNet2DModel: abar_i ~ alpha(t)^2 at
t = (i + 1) / N), ``ScoreSDETime`` (score_sde's t (N - 1)) or ``LogNoiseLevel`` (EDM's c_noise = log(sigma/alpha)/4,
a smooth function of the noise level that means the same for every SDE; what the networks sdeflow trains use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._utils import append_dims, batch_time
from ._validate import check_float, check_int
from .sde import SDE, sde_from_config

__all__ = [
    "output_conversion",
    "ScoreModel",
    "ContinuousTime",
    "DDPMTimesteps",
    "ScoreSDETime",
    "LogNoiseLevel",
    "TimeLabel",
    "as_score_model",
]

Prediction = Literal["eps", "x0", "v", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


def output_conversion(prediction: str, alpha: Any, sigma: Any) -> dict[str, tuple[Any, Any]]:
    """THE conversion of a network output: each of eps_hat, x0_hat and the score is p x + q out.

    Returns {'eps': (p, q), 'x0': (p, q), 'score': (p, q)} for the given ``prediction`` at a point with mean
    coefficient ``alpha`` and noise level ``sigma`` (floats, float64 tensors or tensors broadcasting against x). The
    table in the module docstring, written as coefficients; with n = alpha^2 + sigma^2:

        prediction  eps_hat = p x + q out        x0_hat = p x + q out             score = -eps_hat / sigma
        'eps'       (0, 1)                       (1/alpha, -sigma/alpha)
        'x0'        (1/sigma, -alpha/sigma)      (0, 1)
        'v'         (sigma/n, alpha/n)           (alpha/n, -sigma/n)
        'score'     (0, -sigma)                  (1/alpha, sigma^2/alpha)           (0, 1)

    Every consumer (``ScoreModel``, the samplers' coefficient plans, the ONNX exporter) uses this one function, so
    the conversion is written once. Being linear in (x, out), it folds into the samplers' coefficients.
    """
    if prediction == "eps":
        eps, x0 = (0.0, 1.0), (1 / alpha, -sigma / alpha)
    elif prediction == "x0":
        eps, x0 = (1 / sigma, -alpha / sigma), (0.0, 1.0)
    elif prediction == "v":
        n = alpha * alpha + sigma * sigma
        eps, x0 = (sigma / n, alpha / n), (alpha / n, -sigma / n)
    elif prediction == "score":
        eps, x0 = (0.0, -sigma), (1 / alpha, sigma * sigma / alpha)
    else:
        raise ValueError(f"Invalid prediction {prediction!r}. Must be one of {PREDICTIONS}.")
    score = (0.0, 1.0) if prediction == "score" else (-eps[0] / sigma, -eps[1] / sigma)
    return {"eps": eps, "x0": x0, "score": score}


class TimeLabel:
    """Maps continuous time t (float64 tensor [B]) to the label a network was trained with."""

    def __call__(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class ContinuousTime(TimeLabel):
    """label = t, for networks trained on continuous t in [eps, T]."""

    def __call__(self, t: Tensor) -> Tensor:
        return t

    def config(self) -> dict:
        return {"type": "ContinuousTime"}


@dataclass(frozen=True)
class DDPMTimesteps(TimeLabel):
    """label = t N - 1, the DDPM integer timestep i whose abar_i ~ alpha(t)^2 (t = (i + 1) / N), clipped to [0, N-1].

    On the DDPM grid the label is an exact integer. Off the grid (continuous solvers) it is fractional, which
    sinusoidal embeddings accept; ``integer=True`` rounds and returns int64 for networks that index an embedding
    table (continuous solvers then see a piecewise-constant network).
    """

    N: int = 1000
    integer: bool = False

    def __post_init__(self) -> None:
        if int(self.N) != self.N or self.N < 2:
            raise ValueError(f"`N` must be an integer >= 2; got {self.N}.")

    def __call__(self, t: Tensor) -> Tensor:
        label = (t.double() * self.N - 1).clamp(0, self.N - 1)
        return label.round().long() if self.integer else label

    def config(self) -> dict:
        return {"type": "DDPMTimesteps", "N": self.N, "integer": self.integer}


@dataclass(frozen=True)
class ScoreSDETime(TimeLabel):
    """label = t (N - 1), the convention of score_sde's DDPM-style VP models."""

    N: int = 1000

    def __call__(self, t: Tensor) -> Tensor:
        return t * (self.N - 1)

    def config(self) -> dict:
        return {"type": "ScoreSDETime", "N": self.N}


class LogNoiseLevel(TimeLabel):
    """label = c_noise(t) = log(sigma(t) / alpha(t)) / 4 = -lambda(t) / 4 (EDM's c_noise, Karras et al. 2022, Table 1,
    with EDM's noise level sigma_EDM = sigma/alpha and lambda = log(alpha/sigma) the log-SNR of docs/math.md).

    A smooth, monotone function of the noise level alone, so a network sees the same label at the same
    signal-to-noise ratio whatever the SDE (VP, sub-VP, VE). Over [1e-5, 1] it spans about [-1.7, 1.3] for the
    default VP SDE, [-3.5, 1.3] for sub-VP and [-2.2, 1.0] for VE, so a sinusoidal embedding with a small
    ``label_scale`` (1 for the UNet: frequencies at most 1 per unit of c_noise, EDM's positional embedding) varies
    slowly in t: an adaptive ODE solver is no longer forced into the short steps that the period ~0.006 of a 1000 t
    embedding demands. Computed in float64 from the SDE's closed-form log-SNR; the network receives it in its own
    dtype.
    """

    def __init__(self, sde: SDE) -> None:
        if not isinstance(sde, SDE):
            raise TypeError(
                f"`sde` of LogNoiseLevel must be an sdeflow SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}. "
                "Pass the SDE the network is trained with, e.g. LogNoiseLevel(VPSDE())."
            )
        self.sde = sde

    def __call__(self, t: Tensor) -> Tensor:
        return -0.25 * self.sde.log_snr(t.double())

    def config(self) -> dict:
        return {"type": "LogNoiseLevel", "sde": self.sde.config()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogNoiseLevel) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"LogNoiseLevel({self.sde!r})"


_TIME_LABELS: dict[str, type[TimeLabel]] = {
    "ContinuousTime": ContinuousTime,
    "DDPMTimesteps": DDPMTimesteps,
    "ScoreSDETime": ScoreSDETime,
    "LogNoiseLevel": LogNoiseLevel,
}


def time_label_from_config(config: dict) -> TimeLabel:
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _TIME_LABELS:
        raise ValueError(f"Unknown time label {kind!r}. Must be one of {sorted(_TIME_LABELS)}.")
    if kind == "LogNoiseLevel":
        return LogNoiseLevel(sde_from_config(config["sde"]))
    return _TIME_LABELS[kind](**config)


class ScoreModel(nn.Module):
    """Wraps ``net(x, label)`` predicting eps, x0, v or the score into ``eps``, ``x0`` and ``score`` of (x, t).

    Args:
        net: the network (an ``nn.Module`` or any callable). Its output must have the shape of ``x``.
        sde: the forward SDE that defines alpha(t) and sigma(t).
        prediction: what the network predicts: 'eps', 'x0', 'v' or 'score'.
        time_label: how t is turned into the network's time input (default: continuous t).
        t_min: times are clamped to [t_min, T] before use, so that adaptive solvers probing slightly outside
            [eps, T] (while choosing a first step) see finite values. It must be > 0 where sigma(0) = 0.
        num_classes: K for a class-conditional network called as ``net(x, label, cond)`` with labels 0..K-1 and
            K = no label (``sdeflow.conditioning``); the model itself then evaluates the unconditional output
            (cond = K), and ``conditioned(cond, guidance)`` gives the conditional / guided model. None (default):
            ``net(x, label)``.

    ``t`` is a scalar or a tensor of shape [B]; ``x`` has any shape [B, ...].
    """

    def __init__(
        self,
        net: Callable[..., Tensor],  # net(x, label), or net(x, label, cond) with num_classes
        sde: SDE,
        prediction: Prediction = "eps",
        time_label: TimeLabel | None = None,
        t_min: float = 1e-7,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"Invalid prediction {prediction!r}. Must be one of {PREDICTIONS}.")
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be an sdeflow SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}.")
        if not callable(net):
            raise TypeError(f"`net` must be callable as net(x, t); got {type(net).__name__}.")
        if not 0 < t_min < sde.T:
            raise ValueError(f"`t_min` must lie in (0, T); got {t_min}.")
        self.net = net
        self.sde = sde
        self.prediction: Prediction = prediction
        self.time_label = time_label if time_label is not None else ContinuousTime()
        self.t_min = float(t_min)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", min=1)

    @property
    def conditional(self) -> bool:
        """Whether the network takes a class condition (``num_classes`` is set)."""
        return self.num_classes is not None

    def conditioned(
        self,
        cond: Any,
        guidance: float = 0.0,
        null: Tensor | None = None,
        rescale: float = 0.0,
        interval: tuple[float, float] | None = None,
    ) -> ScoreModel:
        """The model of p(x | cond), guided with weight w = ``guidance`` (docs/math.md section 10):

            out = out(x | c) + w (out(x | c) - out(x | none)),   so   s_guided = s_u + (1 + w) (s_c - s_u).

        ``cond``: a class label for every sample or one per sample ([B], 0..K-1; K is the null class). For other
        condition types give ``null`` (the null condition) and any ``cond`` [B, ...] the network accepts. The result
        is an ordinary (unconditional-signature) ``ScoreModel`` over ``GuidedNet``: every sampler, solver and the
        likelihood use it unchanged; with w != 0 each evaluation is one batched network call on 2B rows.
        ``rescale``: guidance rescale phi in [0, 1] (``sdeflow.conditioning.GuidedNet``; 0 = plain guidance).
        ``interval`` (t_lo, t_hi): guide only at times t_lo <= t <= t_hi (a guidance interval, Kynkaanniemi et al.
        2024; elsewhere w = 0), given in the SDE's time and mapped through the (monotone) time label.
        """
        from .conditioning import GuidedNet, check_guidance, check_labels

        if self.num_classes is None:
            raise ValueError(
                "`cond` was given but the model is unconditional (num_classes=None); train with --conditional or "
                "build ScoreModel(..., num_classes=K)."
            )
        w = check_guidance(guidance)
        phi = check_float(rescale, "guidance_rescale", min=0, max=1)
        if null is None:
            cond = check_labels(cond, "cond", self.num_classes)
            null = torch.tensor(self.num_classes, dtype=torch.int64)
        elif not isinstance(cond, Tensor) or not isinstance(null, Tensor):
            raise TypeError("With an explicit `null`, `cond` and `null` must be tensors of conditions.")
        label_range = None
        if interval is not None:
            if not isinstance(interval, (tuple, list)) or len(interval) != 2:
                raise TypeError(f"`guidance_interval` must be a pair (t_lo, t_hi); got {interval!r}.")
            lo = check_float(interval[0], "guidance_interval[0]", min=0, max=self.sde.T)
            hi = check_float(interval[1], "guidance_interval[1]", min=lo, max=self.sde.T)
            ends = torch.tensor([max(lo, self.t_min), max(hi, self.t_min)], dtype=torch.float64)
            labs = self.time_label(ends).double()
            label_range = (float(labs[0]), float(labs[1]))
        guided = GuidedNet(self.net, cond, null, w, phi, label_range)
        return ScoreModel(guided, self.sde, self.prediction, self.time_label, self.t_min)

    def _coefs(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        t = batch_time(t, x).clamp(self.t_min, self.sde.T)
        alpha = append_dims(self.sde.alpha(t), x.ndim)
        sigma = append_dims(self.sde.sigma(t), x.ndim)
        return t, alpha, sigma

    def _net(self, x: Tensor, t: Tensor) -> Tensor:
        label = self.time_label(t)
        if label.is_floating_point():
            label = label.to(x.dtype)
        if self.num_classes is None:
            out = self.net(x, label)
        else:  # the unconditional output: every row gets the null class K
            out = self.net(x, label, torch.full((x.shape[0],), self.num_classes, dtype=torch.int64, device=x.device))
        if out.shape != x.shape:
            raise ValueError(
                f"The network returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; a score network "
                "must return a tensor of the input's shape."
            )
        return out

    def _convert(self, x: Tensor, t: Tensor | float, target: str) -> Tensor:
        t, alpha, sigma = self._coefs(x, t)
        (p, q) = output_conversion(self.prediction, alpha, sigma)[target]
        out = self._net(x, t)
        return out * q if isinstance(p, (int, float)) and p == 0 else p * x + q * out

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The noise prediction eps_hat(x, t)."""
        return self._convert(x, t, "eps")

    def x0(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The data prediction x0_hat(x, t) (Tweedie's denoiser)."""
        return self._convert(x, t, "x0")

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The score s(x, t) = grad_x log p_t(x)."""
        return self._convert(x, t, "score")

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.score(x, t)


def as_score_model(score: ScoreModel | Callable[[Tensor, Tensor], Tensor], sde: SDE) -> ScoreModel:
    """Accept a ``ScoreModel`` as is, or treat a plain callable ``score(x, t)`` as a score-predicting network."""
    if isinstance(score, ScoreModel):
        if type(score.sde) is not type(sde) or score.sde.config() != sde.config():
            raise ValueError(
                f"The score model was built for {score.sde!r} but is used with {sde!r}; pass the same SDE."
            )
        return score
    if not callable(score):
        raise TypeError(f"`score` must be a ScoreModel or a callable score(x, t); got {type(score).__name__}.")
    return ScoreModel(score, sde, prediction="score")
