"""Forward SDEs dx = f(x, t) dt + g(t) dw with Gaussian perturbation kernels (Song et al. 2021).

All three families have a linear drift f(x, t) = f(t) x, so each SDE is described by a handful of scalar
functions of t:

    f(t)        drift coefficient             (``drift_coef``)
    g(t)^2      squared diffusion              (``g2``)
    alpha(t)    mean coefficient of x(t)|x0   (``alpha``; computed through ``log_alpha`` for precision)
    sigma(t)    std of x(t)|x0                 (``sigma``)
    lambda(t)   log-SNR log(alpha/sigma)       (``log_snr``, with the exact inverse ``t_from_log_snr``)

so that x(t) | x0 ~ N(alpha(t) x0, sigma(t)^2 I). The scalar methods do no validation (they sit on hot paths);
the user-facing ``marginal_prob``, ``sde`` and ``prior_*`` methods validate their arguments.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ._utils import append_dims, batch_time

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "DiscreteSchedule", "SDES", "make_sde", "sde_from_config"]


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number; got {value}.")
    return value


@dataclass(frozen=True)
class DiscreteSchedule:
    """The discrete DDPM schedule (Ho et al. 2020) that DDPM/DDIM-trained networks use, in float64.

    ``betas[i] = linspace(beta_min / N, beta_max / N, N)[i]`` and ``alphas_cumprod[i] = prod_{j<=i} (1 - betas[j])``
    for integer timesteps i in {0, ..., N-1}; ``alphas_cumprod[i]`` ~ alpha(t)^2 of the continuous VP SDE at
    t = (i + 1) / N.
    """

    betas: Tensor
    alphas_cumprod: Tensor

    @property
    def N(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas


class SDE(ABC):
    """Base class of a forward SDE with linear drift, dx = f(t) x dt + g(t) dw, on t in [0, T]."""

    T: float = 1.0

    # --- scalar functions of t (tensors of any shape, no validation) -------------------------------------------
    @abstractmethod
    def drift_coef(self, t: Tensor) -> Tensor:
        """f(t) in f(x, t) = f(t) x."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """g(t)^2."""

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), the log mean coefficient of the perturbation kernel."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t), the standard deviation of the perturbation kernel."""

    @abstractmethod
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The exact inverse of ``log_snr``: the t with log(alpha(t)/sigma(t)) = lam."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior p_T = N(0, prior_std^2 I)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.g2(t))

    # --- user-facing, validated ---------------------------------------------------------------------------------
    def check_time(self, t: Tensor | float, name: str = "t") -> None:
        """Raise ValueError unless every entry of ``t`` lies in [0, T]."""
        tt = torch.as_tensor(t)
        if not torch.isfinite(tt).all() or (tt < 0).any() or (tt > self.T * (1 + 1e-6)).any():
            raise ValueError(
                f"`{name}` must lie in [0, T] = [0, {self.T}]; got values in "
                f"[{tt.min().item():.6g}, {tt.max().item():.6g}]. Sample times in [eps, T], e.g. eps = 1e-5."
            )

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean alpha(t) x0 and std sigma(t) of x(t) | x0. ``t`` is a scalar or has shape [B]; std has shape [B]."""
        self.check_time(t)
        t = batch_time(t, x0)
        return append_dims(self.alpha(t), x0.ndim) * x0, self.sigma(t)

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (shape [B])."""
        self.check_time(t)
        t = batch_time(t, x)
        return append_dims(self.drift_coef(t), x.ndim) * x, self.diffusion(t)

    def prior_sampling(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw x(T) ~ p_T = N(0, prior_std^2 I) with the given ``shape`` = (B, *sample_shape)."""
        if generator is not None and device is None:
            device = generator.device
        return self.prior_std * torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log p_T(z) summed over all but the batch dimension; shape [B]."""
        if z.ndim < 1:
            raise ValueError("`z` must have a batch dimension: shape [B, ...].")
        d = z[0].numel()
        s2 = self.prior_std**2
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({fields})"

    @abstractmethod
    def config(self) -> dict:
        """A JSON-serialisable description; ``sdeflow.sde_from_config`` rebuilds the SDE from it."""


class _LinearBeta(SDE):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min), alpha(t) = exp(-1/2 int_0^t beta)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = _check_positive("beta_min", beta_min)
        self.beta_max = _check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"`beta_max` ({beta_max}) must be >= `beta_min` ({beta_min}); the range is reversed."
            )

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        # log alpha(t) = -1/4 t^2 (b1 - b0) - 1/2 t b0
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # Solve a t^2 + b t - c = 0 with a = (b1-b0)/4, b = b0/2, c = -log alpha >= 0, in the cancellation-free
        # form t = 2c / (b + sqrt(b^2 + 4ac)).
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        c = -log_alpha
        return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict:
        return {"type": type(self).__name__, "beta_min": self.beta_min, "beta_max": self.beta_max}


class VPSDE(_LinearBeta):
    """Variance-preserving SDE: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw; sigma(t) = sqrt(1 - alpha(t)^2)."""

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def sigma(self, t: Tensor) -> Tensor:
        # 1 - alpha^2 = -expm1(2 log alpha) keeps precision for small t.
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -1/2 softplus(-2 lambda)
        return self._t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * lam))

    def discrete(self, N: int = 1000) -> DiscreteSchedule:
        """The discrete DDPM schedule with N steps: betas = linspace(beta_min/N, beta_max/N, N), in float64."""
        if int(N) != N or N < 2:
            raise ValueError(f"`N` must be an integer >= 2; got {N}.")
        N = int(N)
        betas = torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64)
        return DiscreteSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, 0))


class SubVPSDE(_LinearBeta):
    """Sub-VP SDE: dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - alpha(t)^4)) dw; sigma(t) = 1 - alpha(t)^2.

    The marginal *variance* is (1 - alpha^2)^2, so the std has no square root; it is always below the VP std.
    """

    def g2(self, t: Tensor) -> Tensor:
        # 1 - exp(-2 int_0^t beta) = 1 - alpha^4
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - torch.log(-torch.expm1(2 * la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        alpha = 2 * torch.exp(lam) / (1 + torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self._t_from_log_alpha(torch.log(alpha))


class VESDE(SDE):
    """Variance-exploding SDE: dx = sqrt(d sigma_ve(t)^2 / dt) dw with sigma_ve(t) = smin (smax/smin)^t.

    Convention: x(0) is the data itself, so the perturbation kernel is exact,
        x(t) | x0 ~ N(x0, (sigma_ve(t)^2 - smin^2) I),   sigma(t) = sqrt(sigma_ve(t)^2 - smin^2),
    and ``sde()`` and ``marginal_prob()`` agree for every t (score_sde instead reports sigma_ve(t), which treats the
    data as pre-blurred by N(0, smin^2)). The prior is N(0, smax^2 I); the exact p_T has variance
    smax^2 - smin^2 plus the data variance, a mismatch that is negligible for data of scale << smax.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min = _check_positive("sigma_min", sigma_min)
        self.sigma_max = _check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"`sigma_max` ({sigma_max}) must be > `sigma_min` ({sigma_min}); the range is reversed or empty."
            )
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma_ve(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        # d/dt sigma_ve^2 = sigma_ve^2 * 2 ln(smax/smin)
        return self.sigma_ve(t) ** 2 * (2 * self._log_ratio)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        # sigma_ve^2 - smin^2 = smin^2 expm1(2 t ln(smax/smin))
        return self.sigma_min * torch.sqrt(torch.expm1(2 * t * self._log_ratio))

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(self.sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # sigma^2 = smin^2 expm1(2 t L)  =>  t = log1p(e^{-2 lam} / smin^2) / (2 L)
        return torch.log1p(torch.exp(-2 * lam) / self.sigma_min**2) / (2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def config(self) -> dict:
        return {"type": "VESDE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


# The one name table of SDEs: CLI names (sdeflow train --sde, sdeflow likelihood --sde, TrainConfig.sde) -> class.
# Checkpoints store ``sde.config()``, whose 'type' is the class name.
SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_sde(name: str) -> SDE:
    """The SDE with default parameters for the name 'vp', 'subvp' or 've' (``SDES``)."""
    if name not in SDES:
        raise ValueError(f"Invalid sde {name!r}. Must be one of {tuple(SDES)}.")
    return SDES[name]()


def sde_from_config(config: dict) -> SDE:
    """Rebuild an SDE from ``sde.config()``."""
    config = dict(config)
    kind = config.pop("type", None)
    by_class = {cls.__name__: cls for cls in SDES.values()}
    if kind not in by_class:
        raise ValueError(f"Unknown SDE type {kind!r}. Must be one of {sorted(by_class)}.")
    return by_class[kind](**config)
