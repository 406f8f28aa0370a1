"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension (MATH.md section 5).

    log p_eps(x) = log p_T(z) + int_eps^T div_x F(x(t), t) dt,    z = x(T),   F = f(t) x - 1/2 g(t)^2 s(x, t)

``log_likelihood`` solves the augmented ODE (x, delta) from eps to T with a torchdiffeq solver (see
``sdeflow.divergence`` for the vector field, the divergence estimators and the time variable), and returns a
``LikelihoodResult``. ``bits_per_dim`` adds uniform dequantisation for data with K levels per dimension:

    y = (k + u) / K,  u ~ U[0,1)^D,   x = a y + b,   bpd = -log p_x(x) / (D ln 2) - log2(a) + log2(K).

Failures never come back as NaN: invalid input raises ``ValueError``/``TypeError``, a failed solve raises
``LikelihoodError`` with the likely cause and a fix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchdiffeq
from torch import Tensor

from . import _validate as V
from .divergence import DIVERGENCES, TIME_VARIABLES, AugmentedFlow, auto_time_variable, draw_probes, example_seeds
from .parametrization import ScoreModel, as_score_model
from .progress import Progress
from .sampling.solvers import ADAPTIVE_ODE_SOLVERS
from .sde import SDE
from .status import Status

__all__ = ["LikelihoodResult", "LikelihoodError", "log_likelihood", "BitsPerDimResult", "bits_per_dim", "per_class",
           "class_log_likelihoods"]

# The adaptive torchdiffeq methods of sdeflow.sampling.solvers (the one list), less scipy_solver: it takes neither
# the per-example norm nor step_t nor the step callbacks the likelihood's error control and counters need.
ADAPTIVE_METHODS: tuple[str, ...] = tuple(m for m in ADAPTIVE_ODE_SOLVERS if m != "scipy_solver")
ERROR_CONTROLS: tuple[str, ...] = ("rms", "all", "log_p")  # the first is the default
BOUNDS: tuple[str, ...] = ("plain", "importance")
# With error_control='log_p' the latent x is held to X_TOL_FACTOR times looser tolerances than the log-density.
X_TOL_FACTOR = 10.0


class LikelihoodError(RuntimeError):
    """The ODE solve or the resulting likelihood failed; the message names the likely cause and a fix."""


@dataclass(frozen=True)
class LikelihoodResult:
    """Result of ``log_likelihood`` for a batch of B examples (all tensors on the device of the input).

    Attributes:
        log_p: [B] log p_eps(x) in nats = ``prior_logp + delta_logp``.
        prior_logp: [B] log p_T(z) under the prior used.
        delta_logp: [B] int_eps^T div F dt (the mean over probes for Hutchinson estimates).
        z: [B, ...] the latent x(T), the PF-ODE encoding of x.
        std_err: [B] standard error of ``log_p`` over the K probes (std / sqrt(K)); 0 for 'exact', NaN for one probe
            (one draw has no spread: use ``probes >= 2`` to get error bars).
        probe_delta_logp: [B, K] the divergence integral of each probe (K = 1 for 'exact').
        nfe: network evaluations (each one forward + one batched VJP).
        n_steps, n_rejected: accepted and rejected solver steps.
        status: 'success' (failures raise ``LikelihoodError``).
        settings: the solver settings used (method, rtol, atol, eps, divergence, probes, time_variable, dtype,
            state_dtype, error_control).
    """

    log_p: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    std_err: Tensor
    probe_delta_logp: Tensor
    nfe: int
    n_steps: int
    n_rejected: int
    status: Status
    settings: dict

    @property
    def nats_per_dim(self) -> Tensor:
        """-log p / D, per example."""
        return -self.log_p / self.z[0].numel()


def _check_data(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape [B, ...]; got {type(x).__name__}.")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape [B, *sample_shape] with B >= 1 (add a batch dimension with x[None]); "
            f"got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {x.dtype}.")
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        idx = bad.nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"`{name}` contains NaN or inf in {int(bad.sum())} example(s) (batch indices {idx}...); remove or repair "
            "these examples before computing likelihoods."
        )


def _solver_error(err: AssertionError, flow: AugmentedFlow, settings: dict) -> LikelihoodError:
    """The ``LikelihoodError`` for a failed adaptive solve, told apart by the flow's own records rather than by
    torchdiffeq's messages: a non-finite score seen by the flow, the step count reaching ``max_steps``, or else the
    step size underflowing (the remaining check in torchdiffeq's adaptive step loop)."""
    where = f"after {flow.nfe} evaluations ({flow.n_accepted} steps)"
    if flow.nonfinite:
        return LikelihoodError(
            f"The ODE state became NaN/inf {where}: the score network returned non-finite values. Check the network "
            "on this data (inputs in the range it was trained on), or use dtype=torch.float64."
        )
    if flow.n_accepted + flow.n_rejected >= settings["max_steps"]:
        return LikelihoodError(
            f"The ODE solver exceeded max_steps = {settings['max_steps']} {where}. Raise `max_steps`, loosen "
            f"rtol/atol (now {settings['rtol']}/{settings['atol']}), or use a larger `eps`; a network that is rough "
            "in x or t also causes this."
        )
    return LikelihoodError(
        f"The ODE solver's step size underflowed {where} ({' '.join(str(err).split())}): the vector field is stiff "
        f"or not finite near t = eps = {settings['eps']}. Try a larger `eps` (e.g. 1e-3), dtype=torch.float64, or "
        "check that the score network is finite and smooth at small t."
    )


@contextlib.contextmanager
def _frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Switch off requires_grad of every parameter while the ODE runs (restored afterwards).

    Only d/dx is needed; with trainable parameters autograd also records (and partly computes) weight gradients,
    which costs about a third of the backward pass of a small conv net.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _per_example_norm(error_control: str) -> Callable[[tuple[Tensor, Tensor]], Tensor]:
    """Step-size control norm: the worst example's error, each example's error measured as ``error_control`` says.

    torchdiffeq passes the errors already divided by atol + rtol |y|, so the norm <= 1 accepts a step. Per example:
    'rms' the RMS over its whole augmented state (its D entries of x and its log-density entries together, as
    score_sde's RK45 does over the whole batch); 'all' the larger of its x RMS and its log-density RMS (each held to
    rtol/atol); 'log_p' the same with x held to ``X_TOL_FACTOR`` times looser tolerances. The worst example, not the
    batch RMS (torchdiffeq's default, in which one example's error can hide behind the others' and be sqrt(B) times
    the tolerance): every example is held to rtol/atol whatever its batch.
    """
    x_weight = 1.0 / X_TOL_FACTOR if error_control == "log_p" else 1.0

    def norm(state: tuple[Tensor, Tensor]) -> Tensor:
        x, delta = state
        sq_x, sq_d = x.flatten(1).pow(2), delta.pow(2)
        if error_control == "rms":
            return ((sq_x.sum(1) + sq_d.sum(1)) / (sq_x.shape[1] + sq_d.shape[1])).sqrt().max()
        return torch.maximum(sq_x.mean(1).sqrt() * x_weight, sq_d.mean(1).sqrt()).max()

    return norm


def log_likelihood(
    sde: SDE,
    score: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    divergence: str = "exact",
    probes: int = 1,
    dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = torch.float64,
    error_control: str = "rms",
    generator: torch.Generator | None = None,
    seeds: Tensor | Sequence[int] | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    time_variable: str = "auto",
    max_steps: int = 10_000,
    callback: Callable[[Progress], None] | None = None,
    cond: Tensor | int | Sequence[int] | None = None,
) -> LikelihoodResult:
    """log p_eps(x) (nats) of each example through the probability-flow ODE, with its latent z = x(T).

        log p_eps(x) = log p_T(z) + int_eps^T div_x F(x(t), t) dt,   F(x, t) = f(t) x - 1/2 g(t)^2 s(x, t)
                     = log p_T(z) + D log(alpha(T) / alpha(eps)) - 1/2 int_eps^T g(t)^2 div_x s(x(t), t) dt

    The linear drift's divergence D f(t) is integrated in closed form; the ODE carries only the score part (for
    Hutchinson probes v the drift's share a |v|^2 is added in closed form too, see the comment in the code).

    Args:
        sde: the forward SDE the score belongs to.
        score: a ``ScoreModel`` or a callable score(x, t) (x [B, ...], t [B]).
        x: data [B, *sample_shape] in model space.
        method: an adaptive torchdiffeq solver, one of ``ADAPTIVE_METHODS`` (default dopri5).
        rtol, atol: solver tolerances (torchdiffeq's own defaults, 1e-7/1e-9, are far tighter than needed).
        eps: the start time; the result is the density of p_eps, the data perturbed by N(0, sigma(eps)^2).
        divergence: 'exact' (D VJPs, vmapped; fine for D up to a few thousand) or the Hutchinson estimators
            'rademacher' / 'gaussian' with ``probes`` probes per example.
        dtype: the network's dtype (default: that of ``x``); float64 needs a network that accepts float64.
        state_dtype: dtype of the ODE state (x, delta) and of the solver's arithmetic (default float64: the
            accumulated log-density has no float32 rounding floor, and it costs nothing measurable next to the
            network); None keeps the state in ``dtype``. The network always runs in ``dtype``.
        error_control: what the step-size control holds to rtol/atol, for every example (the worst one decides):
            'rms' (default) the RMS error over the example's whole state (its x entries and its log-density
            together); 'all' x and the log-density each; 'log_p' the log-density, with x held to ``X_TOL_FACTOR``
            (10) times looser tolerances. Measured against a float64 solution (benchmarks/RESULTS.md), 'rms' needs
            the fewest evaluations at a given accuracy; 'log_p' saves evaluations at a given tolerance but not at a
            given accuracy on networks: the reported log p includes log p_T(z), whose error is that of z
            (d log p_T / dz = -z / sigma_T^2), so x matters as much as the divergence integral.
        generator: draws the per-example probe seeds when ``seeds`` is not given.
        seeds: per-example probe seeds [B] (int); the same seed gives the same probes whatever the batch. The CLI
            uses seed + dataset index.
        prior_logp: log-density of the prior z -> [B] (default: the SDE's p_T, ``sde.prior_logp``); pass e.g.
            ``GaussianMixture.prior_logp(sde)`` for the exact p_T of an oracle.
        time_variable: the integration variable: 'sigma_ratio' (u = sigma/alpha with the state x / alpha, EDM's
            ODE, nearly straight trajectories), 't' (score_sde's) or 'log_snr' (lambda); 'auto' (default):
            'sigma_ratio', or 't' for a network conditioned on t rather than the noise level
            (``sdeflow.divergence.auto_time_variable``). The likelihood is the same up to solver tolerance; see
            ``sdeflow.divergence`` for the formulas and benchmarks/RESULTS.md for measured step counts.
        max_steps: most solver steps before ``LikelihoodError``.
        callback: called with ``Progress('likelihood', fraction of the interval done, 1.0)`` after every accepted
            step.
        cond: for a class-conditional model (``num_classes`` = K): the class of every example or one per example
            ([B]); the result is then log p_eps(x | c), through the PF-ODE of the conditional score s(x, t | c)
            (docs/math.md section 10). K (no label), or None, gives the model's unconditional log p_eps(x). Pass
            the matching prior (e.g. ``GaussianMixture.prior_logp(sde, labels=c)``) when the prior is not p_T.

    Raises:
        ValueError/TypeError for bad arguments or data; ``LikelihoodError`` if the solve fails.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"`sde` must be an sdeflow SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}.")
    # boundary checks in the shared style (sdeflow._validate; sample() makes the same ones)
    shape, device = V.model_signature(score)
    V.check_batch(x, "x", sample_shape=shape, device=device, finite=False)
    rtol, atol = V.check_float(rtol, "rtol", min=0, min_open=True), V.check_float(atol, "atol", min=0, min_open=True)
    eps = V.check_float(eps, "eps")  # its range is checked below
    probes, max_steps = V.check_int(probes, "probes", min=1), V.check_int(max_steps, "max_steps", min=1)
    model = as_score_model(score, sde)
    if time_variable not in ("auto", *TIME_VARIABLES):
        raise ValueError(f"Invalid time_variable {time_variable!r}. Must be one of {('auto', *TIME_VARIABLES)}.")
    if time_variable == "auto":  # decided by the network itself, before a condition wraps it
        time_variable = auto_time_variable(model)
    if cond is not None or model.num_classes is not None:
        if model.num_classes is None:
            raise ValueError("`cond` was given but the model is unconditional (num_classes=None).")
        from .conditioning import check_labels

        cond = check_labels(model.num_classes if cond is None else cond, "cond", model.num_classes,
                            batch=x.shape[0] if isinstance(x, Tensor) and x.ndim else None)
        model = model.conditioned(cond)
    _check_data(x)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"Invalid method {method!r}. Must be one of {ADAPTIVE_METHODS} (adaptive solvers; fixed-step likelihoods "
            "are not valid)."
        )
    if divergence not in DIVERGENCES:
        raise ValueError(f"Invalid divergence {divergence!r}. Must be one of {DIVERGENCES}.")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"`{name}` must be a positive number such as 1e-5; got {tol}.")
    if not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps}. The usual value is 1e-5.")
    if int(probes) != probes or probes < 1:
        raise ValueError(f"`probes` must be a positive integer; got {probes}.")
    if divergence == "exact" and probes != 1:
        raise ValueError(f"`probes` applies to Hutchinson estimators only; got probes={probes} with 'exact'.")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps}.")
    if error_control not in ERROR_CONTROLS:
        raise ValueError(f"Invalid error_control {error_control!r}. Must be one of {ERROR_CONTROLS}.")
    dtype = x.dtype if dtype is None else dtype
    for name, dt in (("dtype", dtype), ("state_dtype", state_dtype or dtype)):
        if dt not in (torch.float32, torch.float64):
            raise ValueError(f"`{name}` must be torch.float32 or torch.float64; got {dt}.")
    state_dtype = state_dtype or dtype
    x = x.to(dtype).to(state_dtype)
    bsz, sample_shape = x.shape[0], tuple(x.shape[1:])

    probe_tensor = None
    if divergence != "exact":
        seed_t = example_seeds(bsz, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.int64)
        if seed_t.shape != (bsz,):
            raise ValueError(f"`seeds` must have shape [B] = [{bsz}]; got {tuple(seed_t.shape)}.")
        probe_tensor = draw_probes(divergence, sample_shape, int(probes), seed_t.cpu(), dtype, x.device)

    settings = {
        "method": method, "rtol": rtol, "atol": atol, "eps": eps, "divergence": divergence, "probes": int(probes),
        "time_variable": time_variable, "dtype": str(dtype).replace("torch.", ""), "max_steps": int(max_steps),
        "state_dtype": str(state_dtype).replace("torch.", ""), "error_control": error_control,
    }
    flow = AugmentedFlow(sde, model, time_variable, (eps, sde.T), divergence, probe_tensor, callback, dtype)
    tau_span = flow.tau_span.to(x.device)

    n_probe = 1 if divergence == "exact" else int(probes)
    state0 = (flow.initial_state(x), torch.zeros(bsz, n_probe, dtype=state_dtype, device=x.device))
    try:
        with torch.no_grad(), _frozen_parameters(model):
            xs, deltas = torchdiffeq.odeint(
                flow, state0, tau_span, method=method, rtol=rtol, atol=atol,
                # step_t: land exactly on T instead of stepping past it and interpolating back (the field beyond T
                # is only a clamped continuation).
                options={"max_num_steps": int(max_steps), "norm": _per_example_norm(error_control),
                         "step_t": tau_span[1:]},
            )
    except AssertionError as err:
        raise _solver_error(err, flow, settings) from err
    except RuntimeError as err:
        if flow.nfe <= 1:
            raise ValueError(
                f"The score model could not be evaluated on `x` of shape {tuple(x.shape)} and dtype {dtype}: {err}. "
                "Check that the data has the sample shape and dtype the network was built for."
            ) from err
        raise
    # The linear drift's part of each probe's quadratic form, v^T (a I) v = a |v|^2, integrates in closed form to
    # L |v|^2 with L = log(alpha(T)/alpha(eps)) (= L D for 'exact' and Rademacher probes, |v|^2 = D). Keeping |v|^2
    # (Hutchinson on the whole field F, not on the score part alone) cancels the isotropic part of the score's
    # Jacobian, ~ -I / sigma^2 near the data: for Gaussian probes the score-only estimate has 9x (quickstart UNet)
    # to 53x (VP mixtures) the variance (benchmarks/bench_likelihood.py); it is free either way.
    d = x[0].numel()
    sq_norm = torch.full((1,), float(d), dtype=state_dtype, device=x.device) if probe_tensor is None else (
        probe_tensor.to(state_dtype).flatten(2).pow(2).sum(2).T)  # [B, K]
    z, probe_delta = flow.latent(xs[-1]), deltas[-1] + flow.drift_log_det(d) / d * sq_norm
    prior = (prior_logp or sde.prior_logp)(z)
    if not isinstance(prior, Tensor) or prior.shape != (bsz,):
        raise ValueError(
            f"`prior_logp` must map z of shape {tuple(z.shape)} to a tensor of shape [B] = [{bsz}]; got "
            f"{getattr(prior, 'shape', type(prior).__name__)}."
        )
    prior = prior.to(state_dtype)
    delta = probe_delta.mean(1)
    if n_probe > 1:
        std_err = probe_delta.std(1) / math.sqrt(n_probe)
    else:
        std_err = torch.full_like(delta, 0.0 if divergence == "exact" else float("nan"))
    log_p = prior + delta
    if not torch.isfinite(log_p).all():
        bad = (~torch.isfinite(log_p)).nonzero().flatten()[:10].tolist()
        cause = "the prior log-density" if not torch.isfinite(prior).all() else "the divergence integral"
        raise LikelihoodError(
            f"log p is not finite for batch indices {bad} ({cause} is NaN/inf): the latent z reached values the "
            "prior cannot score or the network returned extreme values. Check the data range and the network."
        )
    return LikelihoodResult(
        log_p=log_p, prior_logp=prior, delta_logp=delta, z=z, std_err=std_err, probe_delta_logp=probe_delta,
        nfe=flow.nfe, n_steps=flow.n_accepted, n_rejected=flow.n_rejected, status="success", settings=settings,
    )


@dataclass(frozen=True)
class BitsPerDimResult:
    """Result of ``bits_per_dim`` for B examples of discrete data with K levels per dimension.

    Both bounds on -log2 P(k) / D are always computed from the same draws; ``bound`` picks which one ``bpd`` is.

    Attributes:
        bpd, std_err: [B] the bound chosen by ``bound`` and its standard error.
        plain_bpd: [B] the mean over draws of the per-draw bpd (the uniform-dequantisation bound, its expectation does
            not depend on the number of draws).
        plain_std_err: [B] its standard error: over draws (std / sqrt(draws)) when draws >= 2, which includes the
            Hutchinson noise; with one draw the Hutchinson standard error (0 for 'exact', NaN for one probe).
        importance_bpd: [B] the importance-weighted bound -(log (1/K) sum_j p_y(y_j)) / (D ln 2) (log-mean-exp over
            the K draws); <= ``plain_bpd`` (Jensen), equal at K = 1, and tighter as K grows.
        importance_std_err: [B] its standard error by the delta method, std_j(w_j) / (sqrt(K) mean_j(w_j)) / (D ln 2)
            with w_j = p_y(y_j); at K = 1 it is ``plain_std_err``.
        bound: 'plain' or 'importance'.
        log_p: [B] mean over draws of log p_x(x) in nats (model space).
        draw_bpd: [B, draws] bpd of each draw.
        nfe: network evaluations over all draws.
        levels, scale, offset, draws: the dequantisation settings.
        results: the ``LikelihoodResult`` of each draw.
    """

    bpd: Tensor
    std_err: Tensor
    plain_bpd: Tensor
    plain_std_err: Tensor
    importance_bpd: Tensor
    importance_std_err: Tensor
    bound: str
    log_p: Tensor
    draw_bpd: Tensor
    nfe: int
    levels: int
    scale: float
    offset: float
    draws: int
    results: tuple[LikelihoodResult, ...]


def bits_per_dim(
    sde: SDE,
    score: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    levels: int,
    scale: float = 2.0,
    offset: float = -1.0,
    draws: int = 1,
    bound: str = "plain",
    generator: torch.Generator | None = None,
    seeds: Tensor | Sequence[int] | None = None,
    **kwargs: Any,
) -> BitsPerDimResult:
    """Bits/dim of discrete data with uniform dequantisation (MATH.md section 5).

        k = floor(K (x - b) / a),  y = (k + u) / K,  u ~ U[0,1)^D,   x' = a y + b,
        bpd = -log p_x(x') / (D ln 2) - log2(a) + log2(K)

    Args:
        x: the data in model space (bin centres a (k + 1/2)/K + b, or any point inside its bin), or an integer
            tensor of the levels k in {0..K-1}.
        levels: K, the number of levels per dimension (17 for the 8x8 digits, 256 for 8-bit images).
        scale, offset: a and b of the model-space map x = a y + b (default [-1, 1]: a = 2, b = -1).
        draws: K, the dequantisation draws per example; several lower the variance and give a standard error.
        bound: which bound ``bpd`` reports (both are always in the result): 'plain', the mean of the K per-draw bounds
            E_u[-log2 p_y((k + u)/K_levels)] / D, or 'importance', the importance-weighted bound with the uniform
            proposal (as evaluated in the Flow Matching paper, Lipman et al. 2023; docs/math.md section 9):
                log P(k) >= E[ log (1/K) sum_j p_y((k + u_j) / K_levels) ],
            tighter than the plain one for K > 1 and equal at K = 1. With a Hutchinson divergence each log p_y is
            an unbiased estimate, so the log-mean-exp of estimates is biased upward (towards a lower bpd), by less
            the more probes per draw; use several probes, or divergence='exact' where the bound must hold strictly.
        generator, seeds: per-example seeds [B] drive both the dequantisation noise and the probes of every draw,
            so results do not depend on the batch (``seeds`` default: drawn from ``generator``).
        **kwargs: passed to ``log_likelihood`` (method, rtol, atol, eps, divergence, probes, dtype, prior_logp, ...).

    Raises ``ValueError`` for data outside [b, b + a], and ``LikelihoodError`` for a negative or non-finite bpd.
    """
    # boundary checks in the shared style (sdeflow._validate)
    levels, draws = V.check_int(levels, "levels", min=2), V.check_int(draws, "draws", min=1)
    scale, offset = V.check_float(scale, "scale", min=0, min_open=True), V.check_float(offset, "offset")
    if not isinstance(x, Tensor):
        raise V.bad_value("x", "a torch.Tensor [B, *sample_shape]", x, error=TypeError)
    if int(levels) != levels or levels < 2:
        raise ValueError(f"`levels` must be an integer K >= 2 (256 for 8-bit images); got {levels}.")
    if int(draws) != draws or draws < 1:
        raise ValueError(f"`draws` must be a positive integer; got {draws}.")
    if bound not in BOUNDS:
        raise ValueError(f"Invalid bound {bound!r}. Must be one of {BOUNDS} (the result holds both).")
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
        raise ValueError(f"`scale` must be positive and `offset` finite; got scale={scale}, offset={offset}.")
    levels, draws = int(levels), int(draws)
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor of shape [B, ...]; got {type(x).__name__}.")
    if x.is_floating_point():
        _check_data(x)
        k = torch.floor((x.double() - offset) / scale * levels)
        lo, hi = x.min().item(), x.max().item()
        if lo < offset or hi > offset + scale:
            raise ValueError(
                f"`x` lies outside the declared range [offset, offset + scale] = [{offset}, {offset + scale}]: got "
                f"values in [{lo:.4g}, {hi:.4g}]. Pass the `scale`/`offset` the data was mapped with (x = scale * y "
                "+ offset, y in [0, 1]), e.g. scale=1, offset=0 for data in [0, 1]."
            )
        k = k.clamp(0, levels - 1)  # y = 1 exactly belongs to the top bin
        dtype = x.dtype
    else:
        k = x.double()
        if x.ndim < 2 or k.min() < 0 or k.max() > levels - 1:
            raise ValueError(
                f"Integer `x` must hold levels k in 0..{levels - 1} with shape [B, ...]; got shape "
                f"{tuple(x.shape)} and values in [{k.min().item()}, {k.max().item()}]. Pass the right `levels`."
            )
        dtype = torch.get_default_dtype()
    bsz, d = k.shape[0], k[0].numel()
    seed_t = example_seeds(bsz, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.int64)
    if seed_t.shape != (bsz,):
        raise ValueError(f"`seeds` must have shape [B] = [{bsz}]; got {tuple(seed_t.shape)}.")
    gens = [torch.Generator().manual_seed(int(s)) for s in seed_t.tolist()]
    const = -math.log2(scale) + math.log2(levels)
    results, bpds = [], []
    for _ in range(draws):
        # Per example: the dequantisation noise, then the probe seed of this draw, from the example's generator.
        u = torch.stack([torch.rand(k.shape[1:], generator=g, dtype=torch.float64) for g in gens])
        probe_seeds = torch.stack([torch.randint(0, 2**62, (), generator=g) for g in gens])
        xq = (scale * (k.cpu() + u) / levels + offset).to(device=k.device, dtype=dtype)
        res = log_likelihood(sde, score, xq, generator=None, seeds=probe_seeds, **kwargs)
        bpd = (-res.log_p.double() / (d * math.log(2)) + const).to(res.log_p.dtype)
        results.append(res)
        bpds.append(bpd)
    draw_bpd = torch.stack(bpds, 1)
    mean = draw_bpd.mean(1)
    if draws > 1:
        std_err = draw_bpd.std(1) / math.sqrt(draws)
    else:
        std_err = results[0].std_err / (d * math.log(2))
    # importance-weighted: -log2((1/K) sum_j p_j) / D + const, from the per-draw log p_j (nats)
    log_pj = torch.stack([r.log_p.double() for r in results], 1)  # [B, K]
    log_mean_p = torch.logsumexp(log_pj, 1) - math.log(draws)
    iw = (-log_mean_p / (d * math.log(2)) + const).to(mean.dtype)
    if draws > 1:
        w = torch.exp(log_pj - log_pj.max(1, keepdim=True).values)
        iw_err = (w.std(1) / (math.sqrt(draws) * w.mean(1)) / (d * math.log(2))).to(mean.dtype)
    else:
        iw_err = std_err
    if not torch.isfinite(mean).all():
        raise LikelihoodError("Non-finite bits/dim: the likelihood overflowed; check the data range and network.")
    if (draw_bpd < 0).any():
        bad = (draw_bpd < 0).any(1).nonzero().flatten()[:10].tolist()
        raise LikelihoodError(
            f"Negative bits/dim for batch indices {bad} (min {draw_bpd.min().item():.4g}): the density exceeds the "
            f"discrete bound K^D. Likely causes: `levels` (={levels}) or `scale`/`offset` do not match the data "
            "(e.g. data in [0, 1] declared as [-1, 1]), or the model was trained without dequantisation and "
            "concentrates mass on the bin values."
        )
    chosen = (mean, std_err) if bound == "plain" else (iw, iw_err)
    return BitsPerDimResult(
        bpd=chosen[0], std_err=chosen[1], plain_bpd=mean, plain_std_err=std_err, importance_bpd=iw,
        importance_std_err=iw_err, bound=bound, log_p=torch.stack([r.log_p for r in results], 1).mean(1),
        draw_bpd=draw_bpd,
        nfe=sum(r.nfe for r in results), levels=levels, scale=float(scale), offset=float(offset), draws=draws,
        results=tuple(results),
    )


def per_class(values: Tensor, labels: Tensor) -> dict[int, dict[str, float]]:
    """Mean and standard error of per-example ``values`` (bits/dim, nats/dim) for each class in ``labels``:
    {class: {"n", "mean", "std_err"}} (std_err = std / sqrt(n), NaN for a single example)."""
    out: dict[int, dict[str, float]] = {}
    for c in sorted(set(labels.tolist())):
        v = values[labels == c].double()
        out[int(c)] = {"n": int(v.numel()), "mean": float(v.mean()),
                       "std_err": float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")}
    return out


def class_log_likelihoods(
    sde: SDE,
    model: ScoreModel,
    x: Tensor,
    *,
    seeds: Tensor | Sequence[int] | None = None,
    **kwargs: Any,
) -> Tensor:
    """log p_eps(x | c) for every example and every class c = 0..K-1 of a class-conditional model: [B, K] (nats).

    One PF-ODE solve on the batch of B K rows (example b under class c in row b K + c) through the conditional score
    (``log_likelihood(..., cond=c)``). With a Hutchinson divergence the K rows of an example share its probes
    (``seeds`` [B], repeated), so class differences log p(x | c) - log p(x | c') carry little probe noise. Bayes'
    rule then gives log p(c | x) = log p(x | c) + log p(c) - log p(x) (``examples/classify_digits.py``).
    ``kwargs`` go to ``log_likelihood`` (method, rtol, atol, divergence, probes, ...).
    """
    k = getattr(model, "num_classes", None)
    if k is None:
        raise ValueError("`model` must be class-conditional (a ScoreModel with num_classes) to score classes.")
    if "cond" in kwargs:
        raise ValueError("class_log_likelihoods evaluates every class itself; do not pass `cond`.")
    V.check_batch(x, "x", finite=False)
    b = x.shape[0]
    rows = x.repeat_interleave(k, dim=0)
    labels = torch.arange(k, device=x.device).repeat(b)
    row_seeds = None
    if seeds is not None:
        seed_t = torch.as_tensor(seeds, dtype=torch.int64)
        if seed_t.shape != (b,):
            raise V.bad_value("seeds", f"one seed per example ([B] = [{b}])", seeds)
        row_seeds = seed_t.repeat_interleave(k)
    elif kwargs.get("divergence", "exact") != "exact":
        row_seeds = example_seeds(b, kwargs.pop("generator", None)).repeat_interleave(k)
    res = log_likelihood(sde, model, rows, cond=labels, seeds=row_seeds, **kwargs)
    return res.log_p.reshape(b, k)
