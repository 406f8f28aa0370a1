"""Few-step samplers side by side: every sdeflow sampler on every built-in grid, diffusers' UniPC / DEIS /
DPM-Solver++(3M) on the same problem, and tuned grids, at 5-20 NFE on random Gaussian-mixture oracles.

Problem. Six random mixtures (``GaussianMixture.random(D, 4, generator=manual_seed(100 + i))``, D = 2..64), VP SDE
(beta 0.1..20), probability-flow ODE with the exact score from T = 1 to eps = 1e-3. Held-out starts: 1024 x_T ~
N(0, I) (``manual_seed(1000 + i)``); reference: float64 dopri5 from the same x_T, rtol = atol = 1e-10. Error = mean
over trajectories of ||x - x_ref|| / sqrt(D). NFE = network evaluations actually made (checked for every run).

sdeflow. Every deterministic sampler (DDIM, DPM-Solver++ 2M and 3M (Taylor D2 weight, and diffusers' weight),
UniPC bh2 orders 2 and 3, UniPC bh1 order 3, DEIS-3, iPNDM orders 2-4, EDM Heun; the stochastic ones have no single
PF-ODE endpoint to compare with) on every built-in grid (uniform, quadratic, logsnr, karras) from T to eps, in
float64. Heun spends 2 NFE per step: even budgets only.

diffusers (0.42), the same ODE. Its schedulers step a discrete schedule of N = 1000 training timesteps; here the
schedule is built so that timestep i IS continuous time t_i = (i + 1) / N of the VP SDE: ``trained_betas`` with
abar_i = alpha(t_i)^2 (so timestep 999 is T = 1 and timestep 0 is eps = 1e-3), and ``final_sigmas_type='sigma_min'``
ends at timestep 0's noise level, i.e. at eps. The network the scheduler calls is the exact eps-prediction
eps(x, t) = -sigma(t) score(x, t) at the noise level the scheduler itself assigns to the step: t = t(lambda) with
lambda = -log(scheduler.sigmas[k]) (diffusers' sigma is sigma/alpha), so no timestep rounding enters and both
libraries integrate the same ODE between the same ends from the same x_T, against the same reference. Grids:
'uniform' = the default 'linspace' timesteps, 'karras' = ``use_karras_sigmas``, 'logsnr' =
``use_exponential_sigmas`` (uniform in log sigma = uniform in log-SNR). With the two sigma grids diffusers repeats
sigma_min as its last sigma (a zero-length last step that would waste one NFE), so those schedulers are set up for
S + 1 steps and their timestep array is cut to its first S entries (their grid then equals sdeflow's Karras /
LogSNR grid with S steps, and the lower-order final steps fall where a real S-step run has them); the script checks
that every diffusers run ends at sigma_min. Samplers: UniPCMultistepScheduler(solver_order=3, solver_type='bh2'),
DEISMultistepScheduler(solver_order=3), DPMSolverMultistepScheduler(solver_order=3) (their best configurations for
few steps), each with its defaults otherwise (lower_order_final etc.). diffusers keeps sigmas in float32 (relative
coefficient rounding ~1e-7, far below every error here).

Tuned grids. ``sdeflow.tune_grid`` for UniPC-2 and -3 (bh2), iPNDM-2 and -3 on a SEPARATE calibration batch
of 256 x_T (``manual_seed(2000 + i)``), then scored on the 1024 held-out x_T above. Per NFE, "tuned" is the sampler
whose tuned grids have the lowest geometric-mean CALIBRATION error (no held-out data enters the choice).

Each sampler is reported on its best grid (lowest geometric-mean error over the six mixtures at that NFE: one grid
per sampler and NFE); "best" = the lowest of those. Targets (issue 9): at every NFE, sdeflow's best on a built-in
grid at least as accurate as diffusers' best (geometric mean over the mixtures); with tuned grids at least 1.3x more
accurate than diffusers' best at every NFE <= 10. Writes the "Samplers" section of benchmarks/RESULTS.md (between
its markers) and docs/sampler_comparison.png; exit status 0 when both targets are met.

``--quickstart DIR`` repeats the comparison on a trained network (``sdeflow quickstart --out runs/quickstart``
writes runs/quickstart/model): 64 held-out x_T, reference dopri5 at rtol = atol = 1e-7 on the network (float32),
tuned grids (NFE <= 10) on 32 calibration x_T with 64 candidates and 100 refinement runs (a network evaluation costs
~1000x the oracle's). No targets are asserted there: one model, 64 trajectories.

    OMP_NUM_THREADS=1 python benchmarks/bench_samplers.py                                      # ~10 min, one core
    OMP_NUM_THREADS=1 python benchmarks/bench_samplers.py --quickstart runs/quickstart/model   # + ~7 min
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path

import torch

from sdeflow import VPSDE, GaussianMixture, sample
from sdeflow._utils import atomic_write
from sdeflow.sampling import DDIM, DEIS, IPNDM, DPMSolverPP, Heun, ODESolver, UniPC, calibration_reference, tune_grid

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
SDE = VPSDE()
EPS = 1e-3
N_TRAIN = 1000
N_HELD, N_CAL = 1024, 256
DIMS = (2, 4, 8, 16, 32, 64)
NFES = (5, 6, 8, 10, 15, 20)
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
SAMPLERS = {
    "DDIM": DDIM(),
    "DPM-Solver++(2M)": DPMSolverPP(order=2),
    "DPM-Solver++(3M)": DPMSolverPP(order=3),
    "DPM-Solver++(3M) diffusers weight": DPMSolverPP(order=3, diffusers_3m=True),
    "UniPC-2 bh2": UniPC(order=2, variant="bh2"),
    "UniPC-3 bh2": UniPC(order=3, variant="bh2"),
    "UniPC-3 bh1": UniPC(order=3, variant="bh1"),
    "DEIS-3": DEIS(order=3),
    "iPNDM-2": IPNDM(order=2),
    "iPNDM-3": IPNDM(order=3),
    "iPNDM-4": IPNDM(order=4),
    "Heun": Heun(),
}
TUNED = ("UniPC-2 bh2", "UniPC-3 bh2", "iPNDM-2", "iPNDM-3")
DIFFUSERS = {
    "UniPC-3 bh2": (
        "UniPCMultistepScheduler",
        {"solver_order": 3, "solver_type": "bh2", "final_sigmas_type": "sigma_min"},
    ),
    "DEIS-3": ("DEISMultistepScheduler", {"solver_order": 3}),
    "DPM-Solver++(3M)": ("DPMSolverMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}),
}
DIFFUSERS_GRIDS = {"uniform": {}, "karras": {"use_karras_sigmas": True}, "logsnr": {"use_exponential_sigmas": True}}
TARGET_TUNED = 1.3


def gmean(v: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in v) / len(v))


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())).mean())


def trained_betas() -> list[float]:
    """betas whose abar_i = alpha(t_i)^2 at t_i = (i + 1) / N: timestep i is continuous time t_i."""
    t = torch.arange(1, N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
    abar = SDE.alpha(t) ** 2
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1 - abar / prev).tolist()


def run_diffusers(cls_name: str, kw: dict, grid_kw: dict, model, x_T: torch.Tensor, nfe: int) -> torch.Tensor:
    import diffusers

    sch = getattr(diffusers, cls_name)(num_train_timesteps=N_TRAIN, trained_betas=trained_betas(), **kw, **grid_kw)
    sch.set_timesteps(nfe)
    if float(sch.sigmas[nfe - 1]) == float(sch.sigmas[nfe]):  # sigma_min repeated: set up S + 1, run S (docstring)
        sch = getattr(diffusers, cls_name)(num_train_timesteps=N_TRAIN, trained_betas=trained_betas(), **kw, **grid_kw)
        sch.set_timesteps(nfe + 1)
        sch.timesteps = sch.timesteps[:nfe]  # S steps: lower-order final steps fall where an S-step run has them
        sch.num_inference_steps = nfe
    sigma_min = math.sqrt((1 - float(sch.alphas_cumprod[0])) / float(sch.alphas_cumprod[0]))
    if abs(float(sch.sigmas[nfe]) / sigma_min - 1) > 1e-4:
        raise RuntimeError(f"{cls_name} {grid_kw}: the run ends at sigma {float(sch.sigmas[nfe])}, not {sigma_min}")
    x = x_T.clone()
    for k in range(nfe):
        lam = -math.log(float(sch.sigmas[k]))
        t = SDE.t_from_log_snr(torch.tensor(lam, dtype=torch.float64)).expand(x.shape[0])
        x = sch.step(model.eps(x, t), sch.timesteps[k], x).prev_sample
    return x


def run_problem(
    model,
    x_T: torch.Tensor,
    x_cal: torch.Tensor,
    ref: torch.Tensor,
    err: dict,
    cal: dict,
    tuned_nfes: tuple[int, ...] | None = None,
    **tune: float,
) -> None:
    """Every sampler on every grid, diffusers, and the tuned grids on one problem; appends to ``err`` / ``cal``."""
    for name, smp in SAMPLERS.items():
        for nfe in NFES:
            if name == "Heun" and nfe % 2:
                continue
            for grid in GRIDS:
                steps = nfe // (2 if name == "Heun" else 1)
                r = sample(model, SDE, x_T, sampler=smp, grid=grid, steps=steps, eps=EPS)
                assert r.nfe == nfe, (name, grid, nfe, r.nfe)
                err.setdefault(("sdeflow", name, grid, nfe), []).append(error(r.samples, ref))
    for name, (cls_name, kw) in DIFFUSERS.items():
        for nfe in NFES:
            for grid, grid_kw in DIFFUSERS_GRIDS.items():
                with torch.no_grad():
                    x = run_diffusers(cls_name, kw, grid_kw, model, x_T, nfe)
                err.setdefault(("diffusers", name, grid, nfe), []).append(error(x, ref))
    rtol, candidates = tune.pop("rtol"), tune.pop("candidates")
    reference = calibration_reference(model, SDE, x_cal, eps=EPS, rtol=rtol, candidates=candidates)
    for name in TUNED:
        for nfe in NFES if tuned_nfes is None else tuned_nfes:
            res = tune_grid(model, SDE, SAMPLERS[name], nfe, reference=reference, **tune)
            r = sample(model, SDE, x_T, sampler=SAMPLERS[name], grid=res.grid)
            assert r.nfe == nfe
            err.setdefault(("tuned", name, "-", nfe), []).append(error(r.samples, ref))
            cal.setdefault((name, nfe), []).append(res.error)


def report(err: dict, cal: dict, problems: list[str]) -> tuple[str, bool, list]:
    """The markdown tables (summary with the targets, every sampler on its best grid, per problem, every grid)."""

    def best_grid(side: str, name: str, nfe: int) -> str | None:
        keys = [k for k in err if k[:2] == (side, name) and k[3] == nfe]
        return min(keys, key=lambda k: gmean(err[k]))[2] if keys else None

    def tuned_choice(nfe: int) -> str:
        return min(TUNED, key=lambda n: gmean(cal[(n, nfe)]))

    rows = []  # (nfe, {label: (gmean, grid)})
    for nfe in NFES:
        row: dict[str, tuple[float, str]] = {}
        for side, names in (("sdeflow", SAMPLERS), ("diffusers", DIFFUSERS), ("tuned", TUNED)):
            for name in names:
                g = best_grid(side, name, nfe)
                if g is not None:
                    row[f"{side}:{name}"] = (gmean(err[(side, name, g, nfe)]), g)
        if (TUNED[0], nfe) in cal:
            row["tuned"] = (row[f"tuned:{tuned_choice(nfe)}"][0], tuned_choice(nfe))
        rows.append((nfe, row))

    def best_of(row: dict, side: str) -> tuple[str, float, str]:
        label = min((k for k in row if k.startswith(side + ":")), key=lambda k: row[k][0])
        return label.split(":", 1)[1], row[label][0], row[label][1]

    ok = True
    summary = [
        "| NFE | sdeflow best, built-in grid | diffusers best | diffusers / sdeflow | tuned grid (sampler chosen on "
        "calibration) | diffusers / tuned |",
        "|---|---|---|---|---|---|",
    ]
    for nfe, row in rows:
        s_name, s_err, s_grid = best_of(row, "sdeflow")
        d_name, d_err, d_grid = best_of(row, "diffusers")
        t_err, t_name = row.get("tuned", (math.nan, "not tuned"))
        met_b, met_t = d_err / s_err >= 1.0, nfe > 10 or d_err / t_err >= TARGET_TUNED
        ok = ok and met_b and met_t
        summary.append(
            f"| {nfe} | {s_err:.2e} {s_name} @ {s_grid} | {d_err:.2e} {d_name} @ {d_grid} | "
            f"**{d_err / s_err:.2f}x**{'' if met_b else ' (target >= 1: NOT met)'} | "
            + (
                "- | - |"
                if math.isnan(t_err)
                else f"{t_err:.2e} {t_name} | **{d_err / t_err:.2f}x**"
                f"{'' if met_t else f' (target >= {TARGET_TUNED}: NOT met)'} |"
            )
        )
    labels = [f"sdeflow:{n}" for n in SAMPLERS] + [f"diffusers:{n}" for n in DIFFUSERS] + [f"tuned:{n}" for n in TUNED]
    table = ["| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for lab in labels:
        side, name = lab.split(":", 1)
        cells = [
            "-" if lab not in row else f"{row[lab][0]:.2e}" + ("" if side == "tuned" else f" {row[lab][1]}")
            for _, row in rows
        ]
        table.append(f"| {side}: {name} | " + " | ".join(cells) + " |")
    # the grid each sampler does best on over all budgets: geometric mean over every NFE and problem
    recommended = []
    for name in SAMPLERS:
        if not any(("sdeflow", name, g, nfe) in err for g in GRIDS for nfe in NFES):
            continue
        scores = {
            g: gmean([e for nfe in NFES for e in err.get(("sdeflow", name, g, nfe), [])]) for g in GRIDS
        }
        best = min(scores, key=lambda g: scores[g])
        recommended.append(f"  {name:<34} {best:<9} (" + ", ".join(f"{g} {v:.2e}" for g, v in scores.items()) + ")")
    per_grid = []
    for side, names in (("sdeflow", SAMPLERS), ("diffusers", DIFFUSERS)):
        for name in names:
            for nfe in NFES:
                keys = [k for k in err if k[:2] == (side, name) and k[3] == nfe]
                if keys:
                    per_grid.append(
                        f"  {side:<9} {name:<34} NFE {nfe:>2}: "
                        + ", ".join(f"{k[2]} {gmean(err[k]):.2e}" for k in keys)
                    )
    per_problem = ["| problem | NFE | sdeflow best (built-in) | diffusers best | tuned |", "|---|---|---|---|---|"]
    for nfe, row in rows:
        s_name, _, s_grid = best_of(row, "sdeflow")
        d_name, _, d_grid = best_of(row, "diffusers")
        if "tuned" not in row:
            continue
        t_name = row["tuned"][1]
        for k, problem in enumerate(problems):
            per_problem.append(
                f"| {problem} | {nfe} | {err[('sdeflow', s_name, s_grid, nfe)][k]:.2e} | "
                f"{err[('diffusers', d_name, d_grid, nfe)][k]:.2e} | {err[('tuned', t_name, '-', nfe)][k]:.2e} |"
            )
    out = io.StringIO()
    print("\n".join(summary), file=out)
    print(f"\nEvery sampler on its best grid (geometric-mean error over {len(problems)} problem(s), grid):\n", file=out)
    print("\n".join(table), file=out)
    if len(problems) > 1:
        print("\nPer problem (each on the grid chosen above):\n", file=out)
        print("\n".join(per_problem), file=out)
    print(
        "\nRecommended grid per sampler (lowest geometric-mean error over every NFE 5-20 and problem):\n\n```\n"
        + "\n".join(recommended) + "\n```",
        file=out,
    )
    print("\nEvery grid (geometric-mean error):\n\n```\n" + "\n".join(per_grid) + "\n```", file=out)
    return out.getvalue(), ok, rows


def mixtures() -> tuple[str, bool, list]:
    err: dict[tuple[str, str, str, int], list[float]] = {}  # (side, name, grid, nfe) -> error per problem
    cal: dict[tuple[str, int], list[float]] = {}
    t0 = time.perf_counter()
    for i, dim in enumerate(DIMS):
        gm = GaussianMixture.random(dim, 4, generator=torch.Generator().manual_seed(100 + i))
        model = gm.score_model(SDE)
        x_T = torch.randn(N_HELD, dim, generator=torch.Generator().manual_seed(1000 + i), dtype=torch.float64)
        x_cal = torch.randn(N_CAL, dim, generator=torch.Generator().manual_seed(2000 + i), dtype=torch.float64)
        ref = sample(model, SDE, x_T, sampler=ODESolver("dopri5", rtol=1e-10, atol=1e-10), eps=EPS).samples
        run_problem(model, x_T, x_cal, ref, err, cal, rtol=1e-10, candidates=128)
        print(f"D = {dim:>2} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    return report(err, cal, [f"D = {d}" for d in DIMS])


def quickstart(path: Path) -> str:
    """The same comparison on the trained quickstart UNet: 64 held-out x_T, reference dopri5 at 1e-7 (float32), tuned
    grids on 32 calibration x_T with 100 refinement runs (the network costs ~1000x the oracle per evaluation)."""
    from sdeflow import load

    ckpt = load(path)
    if ckpt.sde.config() != SDE.config():
        raise ValueError(f"the quickstart benchmark assumes {SDE!r}; the checkpoint has {ckpt.sde!r}")
    model, shape = ckpt.score_model, tuple(ckpt.sample_shape)
    x_T = torch.randn(64, *shape, generator=torch.Generator().manual_seed(3000))
    x_cal = torch.randn(32, *shape, generator=torch.Generator().manual_seed(4000))
    ref = sample(model, SDE, x_T, sampler=ODESolver("dopri5", rtol=1e-7, atol=1e-7), eps=EPS).samples
    err: dict = {}
    cal: dict = {}
    tuned_nfes = tuple(n for n in NFES if n <= 10)
    run_problem(model, x_T, x_cal, ref, err, cal, tuned_nfes, rtol=1e-7, max_evals=100, candidates=64)
    text, _, _ = report(err, cal, ["quickstart"])
    return text


def main() -> int:
    t0 = time.perf_counter()
    text, ok, rows = mixtures()
    print("\n" + text)
    print(f"targets {'met' if ok else 'NOT met'}; {time.perf_counter() - t0:.0f} s")
    write_results("samplers", text, time.perf_counter() - t0)
    plot(rows)
    if "--quickstart" in sys.argv:
        path = Path(sys.argv[sys.argv.index("--quickstart") + 1])
        t1 = time.perf_counter()
        qs = quickstart(path)
        print("\nquickstart model:\n\n" + qs)
        write_results("samplers-quickstart", qs, time.perf_counter() - t1)
    return 0 if ok else 1


def write_results(marker: str, text: str, elapsed: float) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise RuntimeError(f"{path} lacks the markers {begin} / {end} around the Samplers section")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = (
        f"{begin}\nMachine: 2 shared CPU cores, torch 2.13 CPU, one torch thread; diffusers 0.42.1; "
        f"{elapsed / 60:.0f} min. "
        "Errors are deterministic (fixed seeds), so re-runs print the same numbers. Problem, diffusers set-up and "
        "tuning protocol: the script's docstring.\n\n" + text + end
    )
    atomic_write(path, lambda tmp: tmp.write_text(head + body + tail))


def plot(rows: list) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = ["DDIM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2 bh2", "UniPC-3 bh2", "DEIS-3", "iPNDM-3", "Heun"]
    for j, name in enumerate(shown):
        pts = [(nfe, row[f"sdeflow:{name}"][0]) for nfe, row in rows if f"sdeflow:{name}" in row]
        color = f"C{j if j < 7 else j + 1}"  # C7 is grey: kept for diffusers
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.2, color=color, label=f"sdeflow {name}")
    for name in DIFFUSERS:
        pts = [(nfe, row[f"diffusers:{name}"][0]) for nfe, row in rows]
        ax.plot(
            *zip(*pts, strict=True), ls="--", marker="x", ms=4, lw=1.0, color="0.45", alpha=0.9,
            label=f"diffusers {name}",
        )
    pts = [(nfe, row["tuned"][0]) for nfe, row in rows if "tuned" in row]
    ax.plot(*zip(*pts, strict=True), color="black", lw=2.2, marker="s", ms=4, label="sdeflow, tuned grid (held-out)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(NFES))
    ax.set_xticklabels([str(n) for n in NFES])
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel("endpoint error (geometric mean over 6 mixtures)")
    ax.set_title("VP PF-ODE on Gaussian-mixture oracles, D = 2..64: each sampler on its best grid", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = ROOT / "docs" / "sampler_comparison.png"
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
