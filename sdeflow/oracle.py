"""Closed-form ground truth: a Gaussian mixture has an exact score and an exact density at every t.

Data p_0 = sum_k w_k N(mu_k, S_k). Under any of the SDEs, x(t) = alpha x0 + sigma eps, so
    p_t = sum_k w_k N(alpha mu_k, C_k(t)),   C_k(t) = alpha^2 S_k + sigma^2 I,
    s(x, t) = sum_k r_k(x) * ( -C_k(t)^{-1} (x - alpha mu_k) ),   r_k = softmax_k(log w_k + log N_k(x)).
With the eigendecomposition S_k = U_k diag(l_k) U_k^T (done once), C_k(t) = U_k diag(alpha^2 l_k + sigma^2) U_k^T, so
inverse and log-determinant cost O(D) per component and time: any t of shape [B] is cheap. Computation is in
float64; results come back in the dtype of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._utils import batch_time
from ._validate import bad_value, check_float, check_int, check_tensor
from .parametrization import ScoreModel
from .sde import SDE

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A Gaussian mixture in R^D with exact samples, log-densities log p_t and scores s(x, t) under each SDE.

    Args:
        weights: [K] positive mixture weights (normalised here).
        means: [K, D].
        covariances: [K, D, D] symmetric positive definite, or [K, D] diagonals, or [K] isotropic variances.
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Tensor, covariances: Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if mu.ndim != 2:
            raise ValueError(f"`means` must have shape [K, D]; got {tuple(mu.shape)}.")
        k, d = mu.shape
        if k < 1 or d < 1:
            raise bad_value("means", "a tensor [K, D] with at least one component (K >= 1) and D >= 1", means,
                            "A mixture needs at least one component.")
        check_tensor(mu, "means")
        check_tensor(cov, "covariances")
        if w.shape != (k,):
            raise ValueError(f"`weights` must have shape [K] = [{k}] to match `means`; got {tuple(w.shape)}.")
        if not torch.isfinite(w).all() or (w <= 0).any():
            raise ValueError("`weights` must be positive and finite.")
        if cov.shape == (k,):
            cov = cov[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif cov.shape == (k, d):
            cov = torch.diag_embed(cov)
        elif cov.shape != (k, d, d):
            raise ValueError(
                f"`covariances` must have shape [K, D, D], [K, D] or [K] with K={k}, D={d}; got {tuple(cov.shape)}."
            )
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-10):
            raise ValueError("`covariances` must be symmetric.")
        evals, evecs = torch.linalg.eigh(cov)
        if (evals <= 0).any():
            raise ValueError("`covariances` must be positive definite (an eigenvalue is <= 0).")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov
        self._evals = evals  # [K, D]
        self._evecs = evecs  # [K, D, D]
        k, d = mu.shape
        # x -> [U_1^T x, ..., U_K^T x] and back as single matrix products (far faster than batched einsums)
        self._rotate = evecs.permute(1, 0, 2).reshape(d, k * d)  # [D, K*D]
        self._unrotate = evecs.transpose(1, 2).reshape(k * d, d)  # [K*D, D]
        self._means_rot = torch.einsum("kji,kj->ki", evecs, mu)  # U_k^T mu_k
        self._chol = torch.linalg.cholesky(cov)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def random(
        cls,
        dim: int,
        n_components: int = 4,
        scale: float = 3.0,
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """A random mixture: means ~ N(0, scale^2 I), random SPD covariances with eigenvalues in [0.05, 0.5]."""
        dim, n_components = check_int(dim, "dim", min=1), check_int(n_components, "n_components", min=1)
        scale = check_float(scale, "scale", min=0)
        g = generator
        means = scale * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
        ev = 0.05 + 0.45 * torch.rand(n_components, dim, generator=g, dtype=torch.float64)
        cov = q @ torch.diag_embed(ev) @ q.transpose(1, 2)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        w = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
        return cls(w, means, cov)

    # --- moments and samples ------------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        m = self.mean()
        outer = self.means[:, :, None] * self.means[:, None]
        second = torch.einsum("k,kij->ij", self.weights, self.covariances + outer)
        return second - m[:, None] * m[None]

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        component: int | None = None,
    ) -> Tensor:
        """Exact samples from p_0 (or from the component ``component``, the class-conditional p_0(x | k)), [n, D]."""
        return self.sample_labelled(n, generator, dtype, component)[0]

    def sample_labelled(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        component: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Exact samples [n, D] with their components [n] (int64): the classes of a labelled data set."""
        if component is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            comp = torch.full((n,), check_int(component, "component", min=0, max=self.n_components - 1))
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self._chol[comp], z)
        return x.to(dtype), comp

    def sample_t(
        self, n: int, t: float, sde: SDE, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Exact samples from the marginal p_t of ``sde``, shape [n, D]."""
        x0 = self.sample(n, generator, torch.float64)
        tt = torch.tensor(float(t), dtype=torch.float64)
        x = sde.alpha(tt) * x0 + sde.sigma(tt) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return x.to(dtype)

    # --- exact density and score --------------------------------------------------------------------------------
    def _terms(self, x: Tensor, t: Tensor | float | None, sde: SDE | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log w_k + log N_k(x) [B, K], rotated residuals y_k / d_k [B, K, D], and d_k [B, K, D]."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape [B, D] with D = {self.dim}; got {tuple(x.shape)}.")
        x = x.to(torch.float64)
        if t is None:
            alpha = torch.ones(x.shape[0], dtype=torch.float64)
            sigma = torch.zeros(x.shape[0], dtype=torch.float64)
        else:
            if sde is None:
                raise ValueError("`sde` is required when `t` is given.")
            sde.check_time(t)
            tb = batch_time(t, x)
            alpha, sigma = sde.alpha(tb), sde.sigma(tb)
        d = alpha[:, None, None] ** 2 * self._evals[None] + sigma[:, None, None] ** 2  # [B, K, D]
        # y_k = U_k^T (x - alpha mu_k)
        y = (x @ self._rotate).reshape(x.shape[0], *self._evals.shape) - alpha[:, None, None] * self._means_rot
        quad = (y**2 / d).sum(-1)
        logn = -0.5 * (quad + torch.log(d).sum(-1) + self.dim * math.log(2 * math.pi))
        return torch.log(self.weights)[None] + logn, y / d, d

    def _classes(self, labels: Tensor | int | None, b: int) -> Tensor | None:
        """Labels [B] in 0..K (K = the null class: the whole mixture), or None."""
        if labels is None:
            return None
        from .conditioning import check_labels

        lab = check_labels(labels, "labels", self.n_components, batch=b)
        return lab.expand(b) if lab.ndim == 0 else lab

    def _log_resp(self, logits: Tensor, labels: Tensor | int | None) -> Tensor:
        """log r_k: the posterior over components (softmax) for null rows, a one-hot on the component for labelled
        rows (the class-conditional density of class k is component k alone)."""
        log_r = torch.log_softmax(logits, dim=1)
        lab = self._classes(labels, logits.shape[0])
        if lab is None:
            return log_r
        onehot = torch.full_like(log_r, -math.inf)
        rows = (lab < self.n_components).nonzero().flatten()
        onehot[rows, lab[rows]] = 0.0
        keep = lab == self.n_components
        return torch.where(keep[:, None], log_r, onehot)

    def log_prob(
        self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None, labels: Tensor | int | None = None
    ) -> Tensor:
        """Exact log p_t(x) (nats, shape [B]); ``t=None`` gives the data density p_0. ``labels`` (0..K-1 per row, or
        K = none) gives the class-conditional log p_t(x | k) = log N(x; alpha mu_k, C_k(t)) instead."""
        logits, _, _ = self._terms(x, t, sde)
        lab = self._classes(labels, x.shape[0])
        if lab is None:
            return torch.logsumexp(logits, dim=1).to(x.dtype)
        cond = (logits - torch.log(self.weights)[None]).gather(1, lab.clamp(max=self.n_components - 1)[:, None])
        out = torch.where(lab == self.n_components, torch.logsumexp(logits, dim=1), cond[:, 0])
        return out.to(x.dtype)

    def score(self, x: Tensor, t: Tensor | float, sde: SDE, labels: Tensor | int | None = None) -> Tensor:
        """Exact score grad_x log p_t(x), shape [B, D]; with ``labels`` (0..K-1 per row, K = none) the conditional
        score of class k, which is component k's own Gaussian score -C_k(t)^{-1} (x - alpha mu_k)."""
        logits, ydiv, _ = self._terms(x, t, sde)
        r = torch.exp(self._log_resp(logits, labels))  # [B, K]
        # sum_k r_k C_k^{-1} (x - alpha mu_k) = sum_k U_k (r_k y_k / d_k)
        weighted = (r[:, :, None] * ydiv).reshape(x.shape[0], -1)
        return -(weighted @ self._unrotate).to(x.dtype)

    def score_model(self, sde: SDE, t_min: float = 1e-7) -> ScoreModel:
        """The exact score as a ``ScoreModel`` (prediction 'score'), ready for every sampler and solver."""
        return ScoreModel(lambda x, t: self.score(x, t, sde), sde, prediction="score", t_min=t_min)

    def conditional_score_model(self, sde: SDE, t_min: float = 1e-7) -> ScoreModel:
        """The exact class-conditional score as a conditional ``ScoreModel`` (prediction 'score', num_classes = K
        components): classes 0..K-1 are the components, the null class K the whole mixture. Guided with weight w it
        is the closed form s_u + (1 + w) (s_k - s_u)."""
        return ScoreModel(lambda x, t, c: self.score(x, t, sde, labels=c), sde, prediction="score", t_min=t_min,
                          num_classes=self.n_components)

    def prior_logp(
        self, sde: SDE, t: float | None = None, labels: Tensor | int | None = None
    ) -> Callable[[Tensor], Tensor]:
        """The exact log p_T (or log p_t) as a function z -> [B], to use as the prior in likelihood computations
        (of class ``labels`` when given)."""
        t_end = sde.T if t is None else t
        return lambda z: self.log_prob(z, t_end, sde, labels=labels)
