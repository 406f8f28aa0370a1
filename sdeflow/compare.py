"""``sdeflow.compare``: error against cost for a list of samplers, on the Gaussian-mixture oracle or a trained model.

Deterministic samplers (PF-ODE solvers, DDIM with eta = 0, DPM-Solver++) are scored by their endpoint error against
a float64, tight-tolerance dopri5 solution of the same PF-ODE from the same x_T:
    error = mean_i ||x_i - x_i^ref|| / sqrt(D)       (the median over trajectories is reported too, as ``error_median``)
At low NFE a few trajectories that start near a boundary between modes end in a different mode, with an error of the
order of the distance between modes for every solver; they carry much of the mean and make it noisy (with a few
hundred trajectories, ratios of mean errors at 10-20 NFE move by tens of percent between draws: use n >= 1000 to
compare samplers there), while the median shows the typical trajectory.
Stochastic samplers (DDPM, PC, DDIM with eta > 0, torchsde) are scored by the sliced Wasserstein-2 distance
    SW2(q, p) = ( mean_l W2(<q, u_l>, <p, u_l>)^2 )^(1/2)      (L fixed random unit directions u_l)
between their samples and as many exact samples of p_eps, next to its sampling noise floor: SW2 between the exact
set and independent exact sets of the same size (root mean square over 3 replicates). The convergence order of
each sampler is the slope -d log(error) / d log(NFE) fitted by least squares over its rows (rows at the float64
rounding floor, or for stochastic samplers within 2x of the noise floor, are left out).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ._utils import atomic_write
from ._validate import json_safe
from .oracle import GaussianMixture
from .parametrization import ScoreModel
from .progress import Progress
from .sampling import PC, Heun, ODESolver, Sampler, SDESolver, make_sampler, sample
from .sde import SDE, VPSDE
from .status import Status

__all__ = ["compare", "CompareResult", "CompareRow", "SOLVER_ALIASES", "sliced_wasserstein"]

# Short names for the PF-ODE solvers; anything else is a sampler name of ``sdeflow.sampling.SAMPLERS`` ('ddim',
# 'unipc', 'sde:srk', 'ode:rk4', ...). 'ddim-eta0.5' style suffixes set DDIM's eta.
SOLVER_ALIASES: dict[str, str] = {
    "euler": "ode:euler",
    "midpoint": "ode:midpoint",
    "rk4": "ode:rk4",
    "heun2": "ode:heun2",
    "heun3": "ode:heun3",
}


@dataclass(frozen=True)
class CompareRow:
    """One (solver, NFE budget) measurement. ``kind`` is 'endpoint' (``error``: mean over trajectories of the
    per-coordinate RMS endpoint error, ``error_median``: its median) or 'distribution' (both: the SW2 distance, and
    ``noise_floor`` is set)."""

    solver: str
    steps: int
    nfe: int
    error: float
    error_median: float
    kind: str
    noise_floor: float | None
    wall_time: float
    status: Status


@dataclass(frozen=True)
class CompareResult:
    """All rows, the fitted order per solver (None where fewer than 2 usable rows) and the set-up."""

    rows: tuple[CompareRow, ...]
    orders: dict[str, float | None]
    config: dict = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table for the terminal."""
        head = f"{'solver':<16}{'steps':>6}{'NFE':>6}{'error':>12}{'median':>12}{'floor':>10}{'time s':>9}  kind"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            floor = f"{r.noise_floor:.2e}" if r.noise_floor is not None else "-"
            lines.append(
                f"{r.solver:<16}{r.steps:>6}{r.nfe:>6}{r.error:>12.3e}{r.error_median:>12.3e}{floor:>10}"
                f"{r.wall_time:>9.3f}  {r.kind}{'' if r.status == 'success' else ' ' + r.status}"
            )
        lines.append(
            "fitted order: " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in self.orders.items())
        )
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> Path:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(asdict(self.rows[0]).keys()) + ["fitted_order"])
                w.writeheader()
                for r in self.rows:
                    w.writerow({**asdict(r), "fitted_order": self.orders.get(r.solver)})

        return atomic_write(path, write)

    def to_json(self, path: str | Path) -> Path:
        payload = {"rows": [asdict(r) for r in self.rows], "orders": self.orders, "config": self.config}
        text = json.dumps(json_safe(payload), indent=2, allow_nan=False)  # NaN/inf (e.g. no fitted order) -> null
        return atomic_write(path, lambda tmp: tmp.write_text(text))

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``out_dir``/compare.csv, compare.json and compare.png (each atomically); return the paths."""
        out = Path(out_dir)
        return [self.to_csv(out / "compare.csv"), self.to_json(out / "compare.json"), self.plot(out / "compare.png")]

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """A log-log picture (.png, .pdf or .svg) of error against NFE, one line per solver (noise floors dashed).

        Drawn on a figure with its own Agg canvas (``sdeflow.images.new_figure``): pyplot's state and backend are
        left alone."""
        from .images import new_figure, save_figure

        fig = new_figure(6.4, 4.4)
        ax = fig.subplots()
        for name in self.orders:
            rows = [r for r in self.rows if r.solver == name and r.error > 0 and math.isfinite(r.error)]
            if not rows:
                continue
            order = self.orders[name]
            label = f"{name} (order {order:.2f})" if order is not None else name
            (line,) = ax.loglog([r.nfe for r in rows], [r.error for r in rows], "o-", label=label)
            floors = [r.noise_floor for r in rows if r.noise_floor is not None]
            if floors:
                ax.axhline(sum(floors) / len(floors), color=line.get_color(), ls="--", lw=0.8)
        ax.set_xlabel("NFE (network evaluations)")
        ax.set_ylabel("error (endpoint: mean RMS; stochastic: SW2)")
        ax.set_title(title or self.config.get("title", "error against NFE"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)


def sliced_wasserstein(a: Tensor, b: Tensor, n_proj: int = 64, generator: torch.Generator | None = None) -> float:
    """SW2 between two equal-size sample sets [n, ...]: the root mean over random unit directions of the squared
    1-D Wasserstein-2 distance (sorted projections)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size sets; got {tuple(a.shape)} and {tuple(b.shape)}.")
    u = torch.randn(a.shape[1], n_proj, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, _ = (a @ u).sort(dim=0)
    pb, _ = (b @ u).sort(dim=0)
    return float((pa - pb).pow(2).mean().sqrt())


def fit_order(nfe: Sequence[int], err: Sequence[float]) -> float | None:
    """-slope of log(err) against log(nfe) by least squares; None with fewer than 2 points."""
    pts = [(math.log(n), math.log(e)) for n, e in zip(nfe, err, strict=True) if e > 0 and math.isfinite(e)]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return -sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _resolve(solver: str) -> Sampler:
    """A compare solver name -> a sampler object (through the one name table)."""
    if solver.startswith("ddim-eta"):
        return make_sampler("ddim", eta=float(solver[len("ddim-eta") :]))
    return make_sampler(SOLVER_ALIASES.get(solver, solver))


def _evals_per_step(smp: Sampler) -> int:
    """Network evaluations per grid step, to turn an NFE budget into a number of steps."""
    if isinstance(smp, (ODESolver, SDESolver)):
        return smp.evals_per_step
    if isinstance(smp, Heun):
        return 2
    if isinstance(smp, PC):
        return 1 + smp.n_corrector
    return 1


def compare(
    solvers: Sequence[str] = ("euler", "heun", "rk4", "ddim", "dpmsolver++"),
    nfe: Sequence[int] = (10, 20, 40, 80),
    *,
    mixture: GaussianMixture | None = None,
    model: ScoreModel | None = None,
    sde: SDE | None = None,
    sample_shape: Sequence[int] | None = None,
    grids: dict[str, str] | None = None,
    n: int = 256,
    n_distribution: int = 2000,
    eps: float = 1e-3,
    seed: int = 0,
    reference_tol: float = 1e-10,
    callback: Callable[[Progress], None] | None = None,
) -> CompareResult:
    """Run every solver at every NFE budget (steps = budget // evaluations per step) and score it.

    The oracle is ``mixture`` (default: a random 2-D, 4-component mixture from ``seed``) with its exact score under
    ``sde`` (default VPSDE), or a trained ``model`` (a ``ScoreModel``, e.g. ``sdeflow.load(path).score_model``)
    with ``sample_shape``: then only deterministic solvers are scored (no exact distribution to compare with), and
    the reference runs in the model's float32 at tolerance max(reference_tol, 1e-6). ``grids`` maps a solver to
    its time grid (default: each method's default grid). Samples are seeded per sample from ``seed``.
    ``callback`` gets ``Progress('compare', rows done, rows, {'nfe', 'steps', 'error'}, label=solver)`` after each
    row (every budget of a solver, then the next solver).
    """
    if not solvers:
        raise ValueError("`solvers` must name at least one solver, e.g. ('ddim', 'dpmsolver++').")
    if not nfe or any(int(b) < 1 for b in nfe):
        raise ValueError(f"`nfe` must be a non-empty list of budgets >= 1; got {list(nfe)}.")
    sde = sde if sde is not None else (model.sde if model is not None else VPSDE())
    g = torch.Generator().manual_seed(seed)
    if model is None:
        mixture = mixture if mixture is not None else GaussianMixture.random(2, 4, generator=g)
        model = mixture.score_model(sde)
        shape = (mixture.dim,)
        dtype, tol = torch.float64, reference_tol
    else:
        if sample_shape is None:
            raise ValueError("With `model`, give `sample_shape` (e.g. checkpoint.sample_shape).")
        shape = tuple(sample_shape)
        dtype, tol = torch.float32, max(reference_tol, 1e-6)
    x_T = sde.prior_std * torch.randn(n, *shape, generator=g, dtype=dtype)
    ref = sample(model, sde, x_T, sampler=ODESolver("dopri5", rtol=tol, atol=tol), eps=eps).samples
    exact: Tensor | None = None
    floor: float | None = None  # SW2 noise floor of the stochastic solvers' reference set
    rows: list[CompareRow] = []
    for name in solvers:
        smp = _resolve(name)
        stochastic = not smp.is_deterministic()
        if stochastic and mixture is None:
            raise ValueError(
                f"Stochastic solver {name!r} needs the oracle's exact distribution; compare it on a mixture."
            )
        if stochastic and exact is None:
            assert mixture is not None  # checked just above
            reference = mixture
            exact = reference.sample_t(n_distribution, eps, sde, generator=g, dtype=torch.float64)
            # the noise floor: SW2 between `exact` and independent exact sets, root-mean-square over 3 replicates
            floor = math.sqrt(
                sum(
                    sliced_wasserstein(
                        exact,
                        reference.sample_t(n_distribution, eps, sde, generator=g, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(seed),
                    )
                    ** 2
                    for _ in range(3)
                )
                / 3
            )
        kwargs: dict = {"sampler": smp}
        if grids and name in grids:
            kwargs["grid"] = grids[name]
        for budget in nfe:
            steps = max(1, int(budget) // _evals_per_step(smp))
            if stochastic:
                r = sample(
                    model,
                    sde,
                    shape=(n_distribution, *shape),
                    steps=steps,
                    eps=eps,
                    seed=seed + 1,
                    dtype=dtype,
                    **kwargs,
                )
                assert exact is not None  # drawn before the first stochastic solver
                err = sliced_wasserstein(r.samples, exact, generator=torch.Generator().manual_seed(seed))
                row = CompareRow(name, steps, r.nfe, err, err, "distribution", floor, r.wall_time, r.status)
            else:
                r = sample(model, sde, x_T, steps=steps, eps=eps, **kwargs)
                per = (r.samples - ref).flatten(1).double().norm(dim=1) / math.sqrt(math.prod(shape))
                row = CompareRow(
                    name, steps, r.nfe, float(per.mean()), float(per.median()), "endpoint", None, r.wall_time, r.status
                )
            rows.append(row)
            if callback is not None:
                info = {"nfe": row.nfe, "steps": row.steps, "error": row.error}
                callback(Progress("compare", len(rows), len(solvers) * len(nfe), info, label=name))
    orders: dict[str, float | None] = {}
    for name in solvers:
        use = [
            r
            for r in rows
            if r.solver == name
            and r.status == "success"
            and r.error > (2 * r.noise_floor if r.noise_floor is not None else 1e-12)
        ]
        orders[name] = fit_order([r.nfe for r in use], [r.error for r in use])
    config = {
        "solvers": list(solvers),
        "nfe": [int(b) for b in nfe],
        "n": n,
        "eps": eps,
        "seed": seed,
        "sde": sde.config(),
        "oracle": mixture is not None,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "title": f"{'oracle ' + str(mixture.dim) + '-D mixture' if mixture is not None else 'model'}, "
        f"{type(sde).__name__}, eps={eps}",
    }
    return CompareResult(rows=tuple(rows), orders=orders, config=config)
