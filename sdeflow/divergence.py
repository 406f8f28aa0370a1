"""The augmented probability-flow ODE for likelihoods: state (x, delta), divergence estimators and time variables.

Along the PF-ODE dx/dt = F(x, t) = f(t) x - 1/2 g(t)^2 s(x, t) the log-density obeys d log p_t(x(t))/dt = -div F, so
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div_x F(x(t), t) dt                (docs/math.md section 5).
``AugmentedFlow`` integrates (x, delta) with d delta/dtau = b(tau) div_x s in a time variable tau of the caller's
choice. The linear drift's divergence is not integrated: div_x(f(t) x) = D f(t) and int_eps^T f dt = log(alpha(T) /
alpha(eps)) in closed form (docs/math.md section 9), which ``drift_log_det`` returns; only the score
part needs the network (and, for Hutchinson, a probe). The state (x, delta) may be float64 while the network runs in
its own dtype (``net_dtype``): x is cast for the network call and the score and its divergence are cast back.
A monotone change of time variable, dx/dtau = (dt/dtau) F, leaves both x(T) and the integral unchanged;
it only changes where an adaptive solver spends its steps.

Time variables (``TIME_VARIABLES``), with g^2 = -2 sigma^2 dlambda/dt and f = dlog(alpha)/dt:
    'sigma_ratio'  tau = u = sigma/alpha = e^{-lambda} (EDM's noise level) with the scaled state
                   y = x/alpha: dy/du = -sigma s(alpha y, t) (= eps_hat for an eps-network; EDM's and DDIM's ODE). The
                   linear drift is gone from the state's equation (alpha carries it), trajectories are nearly
                   straight, and x(T) = alpha(T) y(T). The divergence part is unchanged: div_y of dy/du is
                   -(sigma^2/u) div_x s, the same integrand as in x.
    't'            tau = t (score_sde's form), state x: dx/dt = f x - 1/2 g^2 s.
    'log_snr'      tau = lambda(t) = log(alpha/sigma), state x:
                   dx/dlambda = -(2 sigma^2 / g^2) f x + sigma^2 s(x, t)   (= sigma^2 (x + s) for VP, sigma^2 s for VE).
Measured (benchmarks/RESULTS.md): with the per-example RMS error control 'sigma_ratio' needs the fewest evaluations
to reach 1e-4 nats/dim on the 16-D mixture oracle, a smooth 64-D eps-MLP and the quickstart UNet (and on VE mixtures);
't' is better on some low-dimensional VP/sub-VP mixtures. A network that embeds 1000 t oscillates in t (period
~0.006), which sets the step size (3x the evaluations of the same network conditioned on c_noise), and is best
integrated in t. ``auto_time_variable`` (``time_variable='auto'``, the default of ``log_likelihood``) picks by that.

Divergence estimators (``DIVERGENCES``), one network forward per evaluation in every case:
    'exact'       sum_i dF_i/dx_i from D vector-Jacobian products with the basis vectors, batched over the shared
                  forward pass (autograd with is_grads_batched, i.e. torch.func.vmap; chunked to bound memory).
    'rademacher', 'gaussian'
                  Hutchinson: div F ~ v^T (dF/dx) v with E[v v^T] = I, K probes per example sharing one forward and
                  one (vmapped) VJP. The probes are fixed for the whole solve (resampling per evaluation breaks step
                  control) and drawn from a generator seeded per example, so an example's estimate does not depend
                  on the batch it is in or on the process that computes it.
Only the score needs a VJP: div_x(a x + b s) = a D + b div_x s for per-time scalars a, b. For a probe,
v^T (a I + b ds/dx) v = a |v|^2 + b v^T (ds/dx) v: the ODE carries the second term and ``log_likelihood`` adds the
first in closed form (int a dtau |v|^2 = log(alpha(T)/alpha(eps)) |v|^2). Dropping |v|^2 (the score part alone) would
be unbiased too but, for Gaussian probes, measured 9-53x more variable on VP/sub-VP models: the a |v|^2 term cancels
the isotropic part of the score's Jacobian. For Rademacher probes |v|^2 = D and the two coincide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .parametrization import LogNoiseLevel, ScoreModel
from .progress import Progress
from .sde import SDE

__all__ = ["DIVERGENCES", "TIME_VARIABLES", "AugmentedFlow", "auto_time_variable", "draw_probes", "example_seeds"]

DIVERGENCES: tuple[str, ...] = ("exact", "rademacher", "gaussian")
TIME_VARIABLES: tuple[str, ...] = ("sigma_ratio", "t", "log_snr")

# Largest number of elements of one vmapped batch of basis vectors in the exact divergence ([chunk, B, D]).
_EXACT_CHUNK_ELEMENTS = 1 << 24


def auto_time_variable(model: ScoreModel) -> str:
    """The integration variable ``time_variable='auto'`` picks: 't' for a network whose time input is t itself (any
    time label but ``LogNoiseLevel``: its embedding of ~1000 t oscillates uniformly in t and sets the step size
    there), else 'sigma_ratio' (networks conditioned on the noise level, closed-form and plain-callable scores).

    Measured (benchmarks/RESULTS.md): the quickstart UNet conditioned on 1000 t needs 416 evaluations in t and 596 in
    sigma_ratio; conditioned on c_noise, 146 in t and 128 in sigma_ratio.
    """
    if isinstance(model.net, nn.Module) and not isinstance(model.time_label, LogNoiseLevel):
        return "t"
    return "sigma_ratio"


def example_seeds(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` independent 62-bit seeds (int64, shape [n]) drawn from ``generator`` (the global generator if None)."""
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def draw_probes(
    kind: str,
    sample_shape: Sequence[int],
    probes: int,
    seeds: Tensor,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Hutchinson probes v of shape [K, B, *sample_shape], example b drawn from ``Generator().manual_seed(seeds[b])``.

    'rademacher': entries +-1 with probability 1/2; 'gaussian': entries N(0, 1). Both have E[v v^T] = I. Drawing on
    the CPU with one generator per example makes the probes independent of batch composition and device.
    """
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"Invalid probe kind {kind!r}. Must be 'rademacher' or 'gaussian'.")
    shape = (probes, *sample_shape)
    out = []
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        if kind == "rademacher":
            v = torch.randint(0, 2, shape, generator=g).to(torch.float64).mul_(2).sub_(1)
        else:
            v = torch.randn(shape, generator=g, dtype=torch.float64)
        out.append(v)
    return torch.stack(out, 1).to(device=device, dtype=dtype)


class _TimeChange:
    """tau(t), t(tau) and the ODE coefficients (a, b) of dx/dtau = a x + b s(x, t) for one time variable."""

    def __init__(self, sde: SDE, name: str) -> None:
        self.sde = sde
        self.name = name

    def tau(self, t: Tensor) -> Tensor:
        if self.name == "t":
            return t
        lam = self.sde.log_snr(t)
        return lam if self.name == "log_snr" else torch.exp(-lam)

    @property
    def scaled(self) -> bool:
        """Whether the state is y = x / alpha(t) ('sigma_ratio') rather than x."""
        return self.name == "sigma_ratio"

    def lam(self, tau: Tensor) -> Tensor:
        return tau if self.name == "log_snr" else -torch.log(tau)

    def coefficients(self, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t, a, b) with dx/dtau = a x + b s(x, t); a = dlog(alpha)/dtau in every time variable."""
        sde = self.sde
        if self.name == "t":
            return tau, sde.drift_coef(tau), -0.5 * sde.g2(tau)
        t = sde.t_from_log_snr(self.lam(tau))
        sigma2 = sde.sigma(t) ** 2
        # dt/dlambda = -2 sigma^2 / g^2, so dx/dlambda = (dt/dlambda) (f x - 1/2 g^2 s)
        #                                              = -(2 sigma^2 / g^2) f x + sigma^2 s
        a, b = -2.0 * sigma2 / sde.g2(t) * sde.drift_coef(t), sigma2
        if self.name == "sigma_ratio":  # u = sigma/alpha = e^{-lambda}: dx/du = -(1/u) dx/dlambda
            return t, -a / tau, -b / tau
        return t, a, b


class AugmentedFlow(nn.Module):
    """torchdiffeq vector field of the augmented state (x [B, ...], delta [B, K]) in time variable ``time_variable``.

    d x / dtau = a(tau) x + b(tau) s(x, t(tau)),
    d delta_k / dtau = b div_x s   (exact; K = 1)   or   b v_k^T (ds/dx) v_k   (Hutchinson, probe k);
    the drift's a D integrates in closed form (``drift_log_det``), so log p = prior + drift_log_det + delta.

    ``tau`` is clamped to the solve interval widened by a margin (lambda +- 1, u * e^{+-1}; t stays in [eps, T]) so
    that a first-step probe or an overshooting step never evaluates an undefined time (solvers may step past the
    end and interpolate back). ``nfe`` counts network evaluations, ``n_accepted`` / ``n_rejected`` the solver's
    steps; ``callback(Progress('likelihood', fraction, 1.0))`` runs after each accepted step with the fraction of the
    interval done.
    """

    def __init__(
        self,
        sde: SDE,
        score: ScoreModel,
        time_variable: str,
        t_span: tuple[float, float],
        divergence: str,
        probes: Tensor | None,
        callback: Callable[[Progress], None] | None = None,
        net_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.sde = sde
        self.net_dtype = net_dtype
        self.t_span = t_span
        self.score = score
        self.time = _TimeChange(sde, time_variable)
        self.divergence = divergence
        self.probes = probes  # [K, B, ...] or None for 'exact'
        self.tau_span = self.time.tau(torch.tensor(t_span, dtype=torch.float64))
        self.tau0, self.tau1 = (float(v) for v in self.tau_span)
        lo, hi = min(self.tau0, self.tau1), max(self.tau0, self.tau1)
        if time_variable == "t":
            self.lo, self.hi = lo, hi
        elif time_variable == "log_snr":
            self.lo, self.hi = lo - 1.0, hi + 1.0
        else:
            self.lo, self.hi = lo / math.e, hi * math.e
        self.callback = callback
        self.nfe = 0
        self.nonfinite = False  # set once the score returns NaN/inf (how a failed solve is told apart)
        self.n_accepted = 0
        self.n_rejected = 0

    # torchdiffeq calls these on the vector-field module when they exist.
    def callback_accept_step(self, t0: Tensor, y0: object, dt: Tensor) -> None:
        self.n_accepted += 1
        if self.callback is not None:
            done = (float(t0 + dt) - self.tau0) / (self.tau1 - self.tau0)
            self.callback(Progress("likelihood", min(max(done, 0.0), 1.0), 1.0))

    def callback_reject_step(self, t0: Tensor, y0: object, dt: Tensor) -> None:
        self.n_rejected += 1

    def _alpha(self, t: float) -> float:
        return float(self.sde.alpha(torch.tensor(t, dtype=torch.float64)))

    def initial_state(self, x: Tensor) -> Tensor:
        """The solver's state at t = eps for data x: x itself, or y = x / alpha(eps) for 'sigma_ratio'."""
        return x / self._alpha(self.t_span[0]) if self.time.scaled else x

    def latent(self, state: Tensor) -> Tensor:
        """z = x(T) from the solver's state at T (alpha(T) y(T) for 'sigma_ratio')."""
        return state * self._alpha(self.t_span[1]) if self.time.scaled else state

    def drift_log_det(self, d: int) -> float:
        """int_eps^T D f(t) dt = D log(alpha(T) / alpha(eps)) for samples of ``d`` elements: the linear drift's share
        of delta, exact (in any time variable, int a dtau = int f dt)."""
        t0, t1 = torch.tensor(self.t_span, dtype=torch.float64)
        return float(d * (self.sde.log_alpha(t1) - self.sde.log_alpha(t0)))

    def forward(self, tau: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        self.nfe += 1
        net_dtype = self.net_dtype or x.dtype
        t, a, b = self.time.coefficients(tau.clamp(self.lo, self.hi))
        t_b = t.to(net_dtype).expand(x.shape[0])
        # the scaled state y = x / alpha moves as dy/dtau = (b / alpha) s(alpha y, t), since a = dlog(alpha)/dtau
        alpha = self.sde.alpha(t) if self.time.scaled else None
        if alpha is not None:
            x = alpha.to(x.dtype) * x

        with torch.enable_grad():
            y = x.detach().to(net_dtype).requires_grad_(True)
            s = self.score.score(y, t_b)
            if not self.nonfinite and not bool(torch.isfinite(s).all()):
                self.nonfinite = True
            if self.divergence == "exact":
                div_s = self._exact_divergence(s, y).unsqueeze(1)  # [B, 1]
            else:
                v = self.probes
                assert v is not None  # drawn at construction for the Hutchinson divergences
                if v.shape[0] == 1:
                    w = torch.autograd.grad(s, y, v[0])[0].unsqueeze(0)
                else:  # K probes share the forward pass: one vmapped VJP
                    w = torch.autograd.grad(s, y, v, is_grads_batched=True)[0]
                div_s = (w * v).flatten(2).sum(2).transpose(0, 1)  # [B, K]
        s, b = s.detach().to(x.dtype), b.to(x.dtype)
        velocity = a.to(x.dtype) * x + b * s if alpha is None else (b / alpha.to(x.dtype)) * s
        return velocity, b * div_s.to(x.dtype)

    @staticmethod
    def _exact_divergence(s: Tensor, y: Tensor) -> Tensor:
        """sum_i (e_i^T ds/dy)_i for the D basis vectors e_i: batched VJPs over the shared forward pass, in chunks."""
        bsz, d = y.shape[0], y[0].numel()
        chunk = max(1, min(d, _EXACT_CHUNK_ELEMENTS // max(1, bsz * d)))
        eye = torch.eye(d, dtype=y.dtype, device=y.device)
        total = torch.zeros(bsz, dtype=y.dtype, device=y.device)
        for start in range(0, d, chunk):
            rows = eye[start : start + chunk]  # [c, D]
            c = rows.shape[0]
            basis = rows[:, None, :].expand(c, bsz, d).reshape(c, *y.shape)
            last = start + c >= d
            if c == 1:
                jac = torch.autograd.grad(s, y, basis[0], retain_graph=not last)[0].unsqueeze(0)
            else:
                jac = torch.autograd.grad(s, y, basis, retain_graph=not last, is_grads_batched=True)[0]
            jac = jac.reshape(c, bsz, d)  # jac[i, b, j] = d s_{b, start+i} / d y_{b, j}
            total = total + jac[:, :, start : start + c].diagonal(dim1=0, dim2=2).sum(1)
        return total
