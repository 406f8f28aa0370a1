"""Denoising score matching (Vincent 2011; Song et al. 2021) and the discrete DDPM loss (Ho et al. 2020).

Continuous time (MATH.md section 6), with x_t = alpha(t) x0 + sigma(t) eps:

    L = E_t E_x0 E_eps [ lambda(t) || s_theta(x_t, t) + eps / sigma(t) ||^2 ]
      = E_t E_x0 E_eps [ lambda(t) / sigma(t)^2 || eps_hat(x_t, t) - eps ||^2 ]      (eps_hat = -sigma s_theta)

summed over dimensions, averaged over the batch. Weightings lambda(t):
    'sigma2'      lambda = sigma^2, the DDPM loss || eps_hat - eps ||^2 (best samples);
    'likelihood'  lambda = g^2 (Song et al. 2021, "Maximum likelihood training of score-based diffusion models"):
                  the loss bounds the negative log-likelihood; its weight g^2 / sigma^2 is huge near t = 0.
t ~ U[eps, T], or with ``importance_sampling`` (likelihood weighting only) t is drawn with density proportional to
g^2 / sigma^2. For the VP, sub-VP and VE SDEs g(t)^2 / sigma(t)^2 = -2 d lambda_snr / dt (lambda_snr = log(alpha /
sigma), the log-SNR), so that density is uniform in the log-SNR: lambda_snr ~ U[lambda_snr(T), lambda_snr(eps)],
t = t_from_log_snr(lambda_snr), with normaliser Z = 2 (lambda_snr(eps) - lambda_snr(T)); the importance weight keeps
the same expectation as uniform t. This is exact, with no numerical inverse CDF.

Discrete DDPM (MATH.md section 4): i ~ U{0..N-1}, x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps,
    L = E || eps_hat(x_i, i) - eps ||^2,
with the network called on the integer timestep label i.

The losses take the randomness (t and eps) as optional arguments so that a distributed trainer can draw one global
batch and give each process its slice; otherwise they draw it from ``generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._utils import append_dims
from .parametrization import DDPMTimesteps, ScoreModel
from .sde import SDE

__all__ = ["DSMLoss", "DDPMLoss", "WEIGHTINGS"]

WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood")


def _check_x0(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"`x0` must be a tensor of shape [B, *sample_shape] with B >= 1; got {shape}.")


def _check_noise(noise: Tensor | None, x0: Tensor) -> None:
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"`noise` must have the shape of `x0` {tuple(x0.shape)}; got {tuple(noise.shape)}.")


@dataclass(frozen=True)
class DSMLoss:
    """Denoising score matching for a continuous-time SDE.

    Args:
        weighting: 'sigma2' (lambda = sigma^2) or 'likelihood' (lambda = g^2).
        importance_sampling: draw t uniformly in log-SNR (density proportional to g^2 / sigma^2) and weight by the
            constant Z; only with ``weighting='likelihood'``.
        eps: the smallest time; t lies in [eps, T].
    """

    weighting: Literal["sigma2", "likelihood"] = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"Invalid weighting {self.weighting!r}. Must be one of {WEIGHTINGS}.")
        if self.importance_sampling and self.weighting != "likelihood":
            raise ValueError(
                "`importance_sampling=True` needs `weighting='likelihood'` (it samples t proportionally to the "
                "likelihood weight g^2/sigma^2); got weighting='sigma2'."
            )
        if not 0 < self.eps < 1:
            raise ValueError(f"`eps` must lie in (0, 1); got {self.eps}.")

    def sample_t(
        self, sde: SDE, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Draw n training times (float32 [n]) from U[eps, T], or uniformly in log-SNR with importance sampling."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        if not self.importance_sampling:
            return (self.eps + (sde.T - self.eps) * u).float()
        lam_hi, lam_lo = self._snr_range(sde, device)
        t = sde.t_from_log_snr(lam_lo + (lam_hi - lam_lo) * u)
        return t.clamp(self.eps, sde.T).float()

    def _snr_range(self, sde: SDE, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        ends = torch.tensor([self.eps, sde.T], dtype=torch.float64, device=device)
        lam = sde.log_snr(ends)
        return lam[0], lam[1]

    def weight(self, sde: SDE, t: Tensor) -> Tensor:
        """The per-sample weight multiplying || eps_hat - eps ||^2.

        lambda(t) / sigma(t)^2 for uniform t; with importance sampling (density q(t) = (g^2 / sigma^2) / Z) the
        ratio of the uniform density 1 / (T - eps) to q makes the weight the constant Z / (T - eps).
        """
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        if self.importance_sampling:
            lam_hi, lam_lo = self._snr_range(sde, t.device)
            return torch.full_like(t, float(2 * (lam_hi - lam_lo) / (sde.T - self.eps)))
        td = t.double()
        return (sde.g2(td) / sde.sigma(td) ** 2).to(t.dtype)

    def draw(self, model: ScoreModel, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n training times for ``model`` (``sample_t`` on its SDE): the loop-facing twin of ``DDPMLoss.draw``."""
        return self.sample_t(model.sde, n, generator)

    def at(self, model: ScoreModel, x0: Tensor, times: Tensor, noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """Per-sample losses at the drawn ``times`` (from ``draw``) and ``noise``."""
        return self(model, x0, t=times, noise=noise, cond=cond)

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """Per-sample losses [B]: weight(t) * || eps_hat(alpha x0 + sigma eps, t | c) - eps ||^2 summed over dimensions.

        ``t`` [B] and ``noise`` (shape of ``x0``) are drawn from ``generator`` when not given; a given ``t`` must come
        from ``sample_t`` (with importance sampling the weight assumes t's density). ``cond``: the class labels [B]
        of a class-conditional model (K = no label, what condition dropout substitutes; None: all K).
        """
        if not isinstance(model, ScoreModel):
            raise TypeError(f"`model` must be an sdeflow ScoreModel; got {type(model).__name__}.")
        if cond is not None:
            model = model.conditioned(cond)
        _check_x0(x0)
        _check_noise(noise, x0)
        sde = model.sde
        if t is None:
            t = self.sample_t(sde, x0.shape[0], generator, x0.device)
        elif t.shape != (x0.shape[0],):
            raise ValueError(f"`t` must have shape [B] = [{x0.shape[0]}]; got {tuple(t.shape)}.")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tt = t.to(x0.dtype)
        alpha = append_dims(sde.alpha(tt), x0.ndim)
        sigma = append_dims(sde.sigma(tt), x0.ndim)
        eps_hat = model.eps(alpha * x0 + sigma * noise, tt)
        sq = (eps_hat - noise).pow(2).reshape(x0.shape[0], -1).sum(1)
        return self.weight(sde, tt) * sq


@dataclass(frozen=True)
class DDPMLoss:
    """The discrete DDPM eps loss || eps_hat(x_i, i) - eps ||^2 on the schedule of ``model.sde.discrete(N)``.

    ``model`` is a ScoreModel with prediction 'eps', a ``VPSDE`` and a ``DDPMTimesteps(N)`` time label; its network
    is called directly on the integer timestep i (as a float label, or int64 with ``DDPMTimesteps(integer=True)``).
    """

    def sample_timesteps(
        self, n: int, N: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Draw n timesteps uniformly from {0..N-1} (int64 [n])."""
        return torch.randint(0, N, (n,), generator=generator, device=device)

    def draw(self, model: ScoreModel, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n training timesteps for ``model`` (uniform on {0..N-1} of its ``DDPMTimesteps`` label)."""
        label = model.time_label
        if not isinstance(label, DDPMTimesteps):
            raise ValueError(f"The DDPM loss needs a DDPMTimesteps time label; got {label!r}.")
        return self.sample_timesteps(n, label.N, generator)

    def at(self, model: ScoreModel, x0: Tensor, times: Tensor, noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """Per-sample losses at the drawn timesteps ``times`` (from ``draw``) and ``noise``."""
        return self(model, x0, timesteps=times, noise=noise, cond=cond)

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        *,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """Per-sample losses [B]; ``cond`` [B]: class labels of a class-conditional model (K = no label)."""
        if not isinstance(model, ScoreModel) or model.prediction != "eps":
            raise TypeError("`model` must be an sdeflow ScoreModel with prediction='eps' for the DDPM loss.")
        label = model.time_label
        if not isinstance(label, DDPMTimesteps) or not hasattr(model.sde, "discrete"):
            raise ValueError(
                "The DDPM loss needs a VPSDE and a DDPMTimesteps time label (the network is trained on integer "
                f"timesteps); got {model.sde!r} and {label!r}. Use DSMLoss for continuous-time networks."
            )
        _check_x0(x0)
        _check_noise(noise, x0)
        abar = model.sde.discrete(label.N).alphas_cumprod.to(x0.device)  # pyright: ignore[reportAttributeAccessIssue]
        if timesteps is None:
            timesteps = self.sample_timesteps(x0.shape[0], label.N, generator, x0.device)
        elif timesteps.shape != (x0.shape[0],):
            raise ValueError(f"`timesteps` must have shape [B] = [{x0.shape[0]}]; got {tuple(timesteps.shape)}.")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a = append_dims(abar[timesteps].to(x0.dtype), x0.ndim)
        x_i = a.sqrt() * x0 + (1 - a).sqrt() * noise
        net_label = timesteps if label.integer else timesteps.to(x0.dtype)
        if model.num_classes is None:
            if cond is not None:
                raise ValueError("`cond` was given but the model is unconditional (num_classes=None).")
            eps_hat = model.net(x_i, net_label)
        else:
            from .conditioning import check_labels

            lab = check_labels(model.num_classes if cond is None else cond, "cond", model.num_classes,
                               batch=x0.shape[0]).to(x0.device)
            eps_hat = model.net(x_i, net_label, lab.expand(x0.shape[0]) if lab.ndim == 0 else lab)
        return (eps_hat - noise).pow(2).reshape(x0.shape[0], -1).sum(1)
