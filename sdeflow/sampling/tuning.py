"""Tuned time grids: the S + 1 times that minimise a sampler's endpoint error, stored as small JSON files.

``tune_grid(model, sde, sampler, nfe, x_T_calibration=...)`` searches the grid T = t_0 > t_1 > ... > t_S = eps that
minimises the mean endpoint error of the actual sampler against an accurate solution of the same probability-flow
ODE (torchdiffeq dopri5 at a tight tolerance) on a calibration batch, in two stages (docs/math.md, "Samplers"):

1. Dynamic programming along reference trajectories (GITS, Zhou et al. 2024). On a fine candidate grid
   c_0 = T > c_1 > ... > c_{K-1} = eps, uniform in lambda = log(alpha/sigma), the reference trajectories
   x_ref(c_i) are solved once; the cost of jumping c_i -> c_j in one step is the local error of a DDIM (first-order
   exponential integrator) step started on the reference,
       C_ij = mean_b || alpha_j x0_hat(y_b, c_i) + sigma_j eps_hat(y_b, c_i) - x_ref,b(c_j) || / sqrt(d),
   with y_b = x_ref,b(c_i),
   and the S-step path c_0 -> ... -> c_{K-1} of least total cost sum_k C_{i_k i_{k+1}} is found exactly,
       V_s(j) = min_{i < j} V_{s-1}(i) + C_ij,  V_0 = [0, inf, ..., inf],  path = argmin chain of V_S(K - 1).
2. Refinement on the actual objective: starting from the best of that path and the built-in grids (uniform,
   quadratic, log-SNR, Karras), a compass search over the S - 1 interior log-SNR values lambda_1 < ... < lambda_{S-1}
   minimises E(grid) = mean_b ||x_S,b(grid) - x_ref,b(eps)|| / sqrt(d), the endpoint error of the sampler itself
   (multistep memory and correctors included): each coordinate is moved by +-delta while that lowers E and keeps
   the order, and delta halves after a sweep without progress.

A tuned grid is specific to a model, an SDE, a sampler and an NFE budget. It must generalise beyond its calibration
batch: measure it on held-out x_T (``benchmarks/bench_samplers.py`` does). ``save_grid`` / ``load_grid`` store it as
JSON ("sdeflow-grid/1") with where it came from; ``sample(..., grid=load_grid(path))`` uses it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchdiffeq
from torch import Tensor

from .._utils import atomic_write
from ..parametrization import ScoreModel, as_score_model
from ..processes import ProbabilityFlowODE
from ..sde import SDE
from .grids import Karras, LogSNR, Quadratic, Times, Uniform
from .methods import GridSampler, Sampler

__all__ = [
    "save_grid",
    "load_grid",
    "tune_grid",
    "TuneResult",
    "CalibrationReference",
    "calibration_reference",
    "endpoint_error",
    "grid_paths",
    "tunable_sampler",
    "steps_for_nfe",
]

FORMAT = "sdeflow-grid/1"
BUILTIN_STARTS: dict[str, Callable[[], Any]] = {
    "uniform": Uniform,
    "quadratic": Quadratic,
    "logsnr": LogSNR,
    "karras": Karras,
}


# ----------------------------------------------------------------------------------------------------------------
# Storage


def save_grid(path: str | Path, grid: Times, info: dict | None = None) -> Path:
    """Write ``grid`` (its times and where they came from, ``info``) to a JSON file, atomically."""
    if not isinstance(grid, Times):
        raise TypeError(f"`grid` must be a Times grid (e.g. tune_grid(...).grid); got {type(grid).__name__}.")
    times = [float(t) for t in grid.times]
    if not all(math.isfinite(t) for t in times):
        raise ValueError("the grid has non-finite times; nothing was written.")
    doc = {"format": FORMAT, "times": times, **({"info": info} if info else {})}
    text = json.dumps(doc, indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_grid(path: str | Path) -> Times:
    """A ``Times`` grid from a file written by ``save_grid`` (or ``sdeflow tune-grid``); ``source`` is the path."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"grid file {str(p)!r} does not exist; write one with `sdeflow tune-grid`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"grid file {str(p)!r} is not JSON: {err}.") from None
    _check_times_field(p, doc)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("times"), list):
        raise ValueError(f'grid file {str(p)!r} is not an sdeflow grid (needs "format": {FORMAT!r} and "times").')
    return Times(tuple(float(t) for t in doc["times"]), source=str(p))


def _check_times_field(p: Path, doc: Any) -> None:
    """The "times" of an sdeflow grid file: at least 2 numbers, strictly decreasing (other documents: the caller)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("times"), list):
        return
    times = doc["times"]
    if len(times) < 2 or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
        raise ValueError(f'grid file {str(p)!r}: "times" must be a list of at least 2 numbers; got {times[:8]!r}.')
    if any(b >= a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError(f'grid file {str(p)!r}: "times" must be strictly decreasing; got {times[:8]!r}.')


def grid_paths(out: str | Path, sampler: str, nfes: Sequence[int], *, overwrite: bool = False) -> dict[int, Path]:
    """Where ``sdeflow tune-grid`` writes the grid of each NFE, checked before any computing.

    ``out`` is a folder (an existing directory, or a path ending in '/'): files ``<out>/<sampler>-nfe<N>.json``;
    otherwise a prefix: ``<out>-nfe<N>.json``. Existing files are an error unless ``overwrite``; so is a path whose
    parent is an existing file."""
    s = str(out)
    if not s:
        raise ValueError("`out` must be a folder or a file prefix, e.g. --out grids/ or --out grids/unipc; got ''.")
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", sampler)
    p = Path(s)
    if p.is_dir() or s.endswith(("/", "\\")):
        paths = {int(n): p / f"{stem}-nfe{int(n)}.json" for n in nfes}
    else:
        paths = {int(n): p.parent / f"{p.name}-nfe{int(n)}.json" for n in nfes}
    for path in paths.values():
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"`out` {s!r}: {str(parent)!r} is a file, not a folder; choose another --out.")
        if path.exists() and not overwrite:
            raise ValueError(f"`out`: {str(path)!r} exists; remove it, choose another --out or pass --overwrite.")
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Reference trajectories


def endpoint_error(x: Tensor, ref: Tensor) -> float:
    """Mean endpoint error (1/B) sum_b ||x_b - ref_b|| / sqrt(d), the per-coordinate RMS of each sample, averaged."""
    d = x[0].numel()
    return float(((x - ref).flatten(1).norm(dim=1) / math.sqrt(d)).mean())


@dataclass(frozen=True)
class CalibrationReference:
    """What ``tune_grid`` needs from the calibration batch, computed once and shared across samplers and NFEs.

    x_T: the calibration starting points [B, *sample_shape]; x_eps: their PF-ODE solutions at eps (dopri5, ``rtol``);
    times: the K candidate times (float64, T down to eps, uniform in log-SNR); cost: the [K, K] float64 matrix
    C_ij of DDIM jump errors (module docstring; inf for j <= i); eps, rtol: what it was computed with."""

    x_T: Tensor
    x_eps: Tensor
    times: Tensor
    cost: Tensor
    eps: float
    rtol: float
    sde_config: dict = field(default_factory=dict)


def calibration_reference(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x_T: Tensor,
    *,
    eps: float = 1e-3,
    candidates: int = 128,
    rtol: float = 1e-10,
) -> CalibrationReference:
    """Solve the PF-ODE from ``x_T`` (dopri5 at rtol = atol = ``rtol``) through ``candidates`` times uniform in
    lambda from T to eps, and the DDIM jump costs C_ij between them (module docstring). Costs K network evaluations
    on the batch beyond the reference solve."""
    _check_batch("x_T_calibration", x_T)
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 3:
        raise ValueError(f"`candidates` must be an integer >= 3 (e.g. 128); got {candidates!r}.")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1e-2:
        raise ValueError(f"`rtol` (reference_tol) must lie in (0, 1e-2) (e.g. 1e-10 in float64); got {rtol!r}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps!r}. Use e.g. eps=1e-3.")
    score = as_score_model(model, sde)
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), int(candidates), dtype=torch.float64)
    times = sde.t_from_log_snr(lam)
    times[0], times[-1] = sde.T, eps
    with torch.no_grad():
        ode = ProbabilityFlowODE(sde, score)
        t_dev = times.to(dtype=x_T.dtype, device=x_T.device)
        xs = torchdiffeq.odeint(ode, x_T, t_dev, method="dopri5", rtol=rtol, atol=rtol)
        assert isinstance(xs, Tensor)  # a tensor state gives a tensor solution
        k = times.shape[0]
        cost = torch.full((k, k), math.inf, dtype=torch.float64)
        d = x_T[0].numel()
        flat = xs.flatten(2).to(torch.float64)  # [K, B, d]
        alpha, sigma = sde.alpha(times).to(flat.device), sde.sigma(times).to(flat.device)
        for i in range(k - 1):
            t_i = times[i].to(dtype=x_T.dtype, device=x_T.device).expand(x_T.shape[0])
            eps_i = score.eps(xs[i], t_i).flatten(1).to(torch.float64)
            x0_i = (flat[i] - sigma[i] * eps_i) / alpha[i]
            # DDIM from c_i to every later c_j at once: alpha_j x0 + sigma_j eps - x_ref(c_j)
            pred = alpha[i + 1 :, None, None] * x0_i + sigma[i + 1 :, None, None] * eps_i
            err = (pred - flat[i + 1 :]).norm(dim=2) / math.sqrt(d)
            cost[i, i + 1 :] = err.mean(dim=1).cpu()
    return CalibrationReference(
        x_T=x_T, x_eps=xs[-1], times=times, cost=cost, eps=float(eps), rtol=float(rtol), sde_config=sde.config()
    )


def _check_batch(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor [B, *sample_shape]; got {type(x).__name__}.")
    if x.ndim < 2 or x.shape[0] < 1 or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"`{name}` must be a finite floating tensor [B, *sample_shape] (at least 2-D); got {x.dtype} of shape "
            f"{tuple(x.shape)}. Draw it with sde.prior_sampling((B, *sample_shape), generator=...)."
        )


# ----------------------------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class TuneResult:
    """The result of ``tune_grid``.

    grid: the tuned ``Times`` grid (T down to eps; ``source`` names the sampler and NFE); sampler; nfe; steps (S);
    error: its mean endpoint error on the calibration batch; baselines: the calibration error of each built-in grid
    and of the dynamic-programming path ('dp') with the same sampler and NFE; start: the one refinement began from;
    evaluations: sampler runs spent on refinement; calibration: the batch size; eps, reference_tol: the end time
    and the dopri5 tolerance of the reference; wall_time: seconds."""

    grid: Times
    sampler: GridSampler
    nfe: int
    steps: int
    error: float
    baselines: dict[str, float]
    start: str
    evaluations: int
    calibration: int
    eps: float
    reference_tol: float
    wall_time: float

    def summary(self) -> str:
        """One line: the NFE and steps, the calibration error against that of the best built-in grid (and the
        ratio), the grid refinement began from, its sampler runs and the seconds."""
        best = self.best_builtin
        return (f"NFE {self.nfe:>3} ({self.steps} steps): calibration error {self.error:.3e}, best built-in grid "
                f"{best} {self.baselines[best]:.3e} ({self.baselines[best] / self.error:.2f}x), from {self.start}, "
                f"{self.evaluations} runs, {self.wall_time:.1f} s")

    @property
    def best_builtin(self) -> str:
        """The built-in grid with the least calibration error (the key of ``baselines`` other than 'dp')."""
        return min((k for k in self.baselines if k != "dp"), key=lambda k: self.baselines[k])

    def info(self) -> dict:
        """A JSON-friendly record of how the grid was made (what ``save_grid`` stores next to the times)."""
        return {
            "sampler": self.sampler.name,
            "options": self.sampler.config(),
            "nfe": self.nfe,
            "steps": self.steps,
            "eps": self.eps,
            "calibration_n": self.calibration,
            "calibration_error": self.error,
            "baseline_errors": dict(self.baselines),
            "start": self.start,
            "evaluations": self.evaluations,
            "reference": {"solver": "dopri5", "rtol": self.reference_tol, "atol": self.reference_tol},
            "method": "GITS dynamic programming on DDIM jump costs, then compass search on the endpoint error",
        }


def tunable_sampler(sampler: Sampler | str, **options: Any) -> GridSampler:
    """The sampler object ``tune_grid`` tunes for: a deterministic fixed-grid sampler (name with options, or object)."""
    from .names import make_sampler

    smp = make_sampler(sampler, **options)
    if not isinstance(smp, GridSampler) or not smp.is_deterministic():
        raise ValueError(
            f"tune_grid: `sampler` must be a deterministic fixed-grid sampler (ddim with eta=0, dpmsolver++, unipc, "
            f"deis, ipndm, heun): the target is the endpoint error against the PF-ODE; got {smp!r}."
        )
    return smp


def steps_for_nfe(sampler: GridSampler, nfe: int, sde: SDE, prediction: str = "score") -> int:
    """The number of grid steps S with which ``sampler`` makes exactly ``nfe`` evaluations on a grid ending at eps
    (S = nfe for the multistep samplers, nfe / 2 for Heun)."""
    from .grids import time_grid

    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"`nfe` must be an integer >= 1 (e.g. nfe=8); got {nfe!r}.")
    nfe = int(nfe)
    made = {}
    for s in range(1, nfe + 1):
        n = sampler.plan(time_grid(sde, s, "uniform"), prediction, sde).nfe
        made[s] = n
        if n == nfe:
            return s
    raise ValueError(
        f"`nfe` {nfe} cannot be spent exactly by {sampler!r} (it makes {sorted(set(made.values()))[:8]} evaluations "
        f"for 1..{nfe} steps); choose one of those NFE budgets."
    )


def _dp_path(cost: Tensor, steps: int) -> list[int]:
    """The indices 0 = i_0 < i_1 < ... < i_S = K - 1 minimising sum_k cost[i_k, i_{k+1}] (exactly S jumps)."""
    c = cost.numpy()
    k = c.shape[0]
    value = np.full(k, np.inf)
    value[0] = 0.0
    back = np.zeros((steps + 1, k), dtype=np.int64)
    for s in range(1, steps + 1):
        total = value[:, None] + c  # [from, to]
        back[s] = np.argmin(total, axis=0)
        value = total[back[s], np.arange(k)]
    path = [k - 1]
    for s in range(steps, 0, -1):
        path.append(int(back[s][path[-1]]))
    return path[::-1]


def tune_grid(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    sampler: Sampler | str,
    nfe: int,
    *,
    x_T_calibration: Tensor | None = None,
    reference: CalibrationReference | None = None,
    eps: float | None = None,
    candidates: int = 128,
    refine: bool = True,
    max_evals: int = 400,
    reference_tol: float = 1e-10,
    **options: Any,
) -> TuneResult:
    """Search the time grid T = t_0 > ... > t_S = eps on which ``sampler`` spends ``nfe`` network evaluations with
    the least mean endpoint error (1/B) sum_b ||x_S,b - x_ref,b(eps)|| / sqrt(d) on a calibration batch, x_ref the
    dopri5 solution of the same PF-ODE at rtol = atol = ``reference_tol`` (method: module docstring).

    Args:
        model: a ``ScoreModel`` or a plain callable score(x, t).
        sde: the forward SDE.
        sampler: a deterministic fixed-grid sampler object or name (``UniPC(order=3)``, 'dpmsolver++', ...; options
            of a name as keyword arguments, e.g. ``order=3``).
        nfe: the network evaluations the sampler spends (S = nfe steps; Heun: S = nfe / 2).
        x_T_calibration: the calibration starting points [B, *sample_shape] (e.g. 256 draws from the prior, in the
            dtype the model runs in), or ``reference``: a ``calibration_reference`` computed once for several
            samplers and NFEs (then ``eps``, ``candidates`` and ``reference_tol`` come from it).
        candidates: K, the candidate times of the dynamic programming (uniform in log-SNR, T to eps).
        refine: run the compass search on the sampler's endpoint error after the dynamic programming.
        max_evals: at most this many sampler runs on the calibration batch in the refinement.

    Returns a ``TuneResult``; ``result.grid`` is a ``Times`` grid for ``sample(..., grid=result.grid)`` and
    ``save_grid(path, result.grid, result.info())`` stores it.
    """
    from .api import sample

    t_start = time.perf_counter()
    smp = tunable_sampler(sampler, **options)
    score = as_score_model(model, sde)
    steps = steps_for_nfe(smp, nfe, sde, score.prediction)
    nfe = int(nfe)
    if isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer)) or max_evals < 0:
        raise ValueError(f"`max_evals` must be an integer >= 0 (0: no refinement runs); got {max_evals!r}.")
    if (x_T_calibration is None) == (reference is None):
        raise ValueError(
            "tune_grid needs the calibration batch: give `x_T_calibration` (a tensor [B, *sample_shape]) or "
            "`reference` (from calibration_reference), exactly one of them."
        )
    if reference is None:
        assert x_T_calibration is not None  # exactly one of the two, checked above
        reference = calibration_reference(
            score, sde, x_T_calibration, eps=1e-3 if eps is None else eps, candidates=candidates, rtol=reference_tol
        )
    else:
        if not isinstance(reference, CalibrationReference):
            raise TypeError(f"`reference` must come from calibration_reference(); got {type(reference).__name__}.")
        if eps is not None and float(eps) != reference.eps:
            raise ValueError(f"`eps` {eps} differs from the reference's eps {reference.eps}; give one of them.")
        if reference.sde_config and reference.sde_config != sde.config():
            raise ValueError(f"`reference` was computed for {reference.sde_config}, not for {sde.config()}.")
    eps_ = reference.eps
    k = reference.times.shape[0]
    if k - 1 < steps:
        raise ValueError(f"`candidates` ({k}) must exceed the steps ({steps}); use e.g. candidates=128.")
    x_T, x_ref = reference.x_T, reference.x_eps

    def run(times: Sequence[float]) -> float:
        out = sample(score, sde, x_T, sampler=smp, grid=Times(tuple(times)), eps=eps_).samples
        err = endpoint_error(out, x_ref)
        return err if math.isfinite(err) else math.inf

    lam_ends = sde.log_snr(torch.tensor([sde.T, eps_], dtype=torch.float64))

    def to_times(lam_inner: np.ndarray) -> list[float]:
        t = sde.t_from_log_snr(torch.as_tensor(lam_inner, dtype=torch.float64)).tolist() if len(lam_inner) else []
        return [float(sde.T), *t, eps_]

    def to_lam(times: Sequence[float]) -> np.ndarray:
        return sde.log_snr(torch.tensor(list(times[1:-1]), dtype=torch.float64)).numpy().astype(np.float64)

    starts: dict[str, list[float]] = {}
    path = _dp_path(reference.cost, steps)
    starts["dp"] = [float(reference.times[i]) for i in path]
    starts["dp"][0], starts["dp"][-1] = float(sde.T), eps_
    for name, make in BUILTIN_STARTS.items():
        tg = make().build(sde, steps, eps=eps_, set_alpha_to_one=False, N=1000)
        starts[name] = [float(v) for v in tg.t]
    baselines = {name: run(times) for name, times in starts.items()}
    start = min(baselines, key=lambda n: baselines[n])
    best_times, best = starts[start], baselines[start]
    evaluations = 0
    if refine and steps > 1 and max_evals > 0:
        lo, hi = float(lam_ends[0]), float(lam_ends[1])
        gap = 1e-4 * (hi - lo)
        lam = to_lam(best_times)
        delta = 0.25 * (hi - lo) / steps
        while evaluations < max_evals and delta > 1e-4 * (hi - lo) / steps:
            improved = False
            for j in range(steps - 1):
                for sign in (1.0, -1.0):
                    moved = False
                    while evaluations < max_evals:  # keep going while the move pays
                        cand = lam.copy()
                        cand[j] += sign * delta
                        left = lo if j == 0 else cand[j - 1]
                        right = hi if j == steps - 2 else cand[j + 1]
                        if not left + gap < cand[j] < right - gap:
                            break
                        f = run(to_times(cand))
                        evaluations += 1
                        if not f < best:
                            break
                        lam, best, improved, moved = cand, f, True, True
                    if moved:  # the opposite direction leads back uphill
                        break
            if not improved:
                delta /= 2
        best_times = to_times(lam)
    source = f"tune_grid({smp.name} {smp.config()}, nfe={nfe}, calibration B={x_T.shape[0]}, start={start})"
    return TuneResult(
        grid=Times(tuple(best_times), source=source),
        sampler=smp,
        nfe=nfe,
        steps=steps,
        error=best,
        baselines=baselines,
        start=start,
        evaluations=evaluations,
        calibration=int(x_T.shape[0]),
        eps=eps_,
        reference_tol=reference.rtol,
        wall_time=time.perf_counter() - t_start,
    )
