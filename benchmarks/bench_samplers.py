"""Samplers side by side on random Gaussian-mixture oracles: endpoint error at 10 and 20 NFE.

For each of several random mixtures (D = 2 to 64, 4 components, means ~ N(0, 3^2 I)) and each NFE budget, every
deterministic sampler integrates the VP PF-ODE from the same 256 x_T ~ N(0, I) to eps = 1e-3 on each time grid;
the error is the median over trajectories of ||x - x_ref|| / sqrt(D) against a float64 dopri5 solution at
rtol = atol = 1e-10 (the mean is printed too). Each sampler is then reported on its best grid: the one with the
smallest geometric-mean error over the mixtures at that budget (one grid per sampler and budget, not per mixture).
Heun (torchdiffeq 'heun2', 2 evaluations per step) gets budget // 2 steps.

Also writes docs/sampler_comparison.png (error against NFE, D = 16 mixture) with ``sdeflow.compare``.

    python benchmarks/bench_samplers.py            # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from sdeflow import VPSDE, GaussianMixture, compare, sample

torch.set_num_threads(1)
SDE = VPSDE()
EPS = 1e-3
DIMS = (2, 4, 8, 16, 32, 64)
BUDGETS = (10, 20)
SAMPLERS = {"dpmsolver++": ("dpmsolver++", 1), "ddim": ("ddim", 1), "heun": ("ode:heun2", 2), "euler": ("ode:euler", 1)}
GRIDS = ("uniform", "quadratic", "logsnr", "karras")


def main() -> int:
    t0 = time.perf_counter()
    cases = []
    for i, dim in enumerate(DIMS):
        g = torch.Generator().manual_seed(100 + i)
        gm = GaussianMixture.random(dim, 4, generator=g)
        model = gm.score_model(SDE)
        x_T = torch.randn(256, dim, generator=g, dtype=torch.float64)  # noqa: N806
        ref = sample(model, SDE, x_T, method="ode", solver="dopri5", eps=EPS, rtol=1e-10, atol=1e-10).samples
        cases.append((dim, model, x_T, ref))
    # err[(sampler, budget, grid)] = [(median, mean) per mixture]
    err: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for name, (method, cost) in SAMPLERS.items():
        for budget in BUDGETS:
            for grid in GRIDS:
                for dim, model, x_T, ref in cases:  # noqa: N806
                    r = sample(model, SDE, x_T, method=method, steps=budget // cost, grid=grid, eps=EPS)
                    assert r.nfe == budget, (name, r.nfe)
                    per = (r.samples - ref).norm(dim=1) / math.sqrt(dim)
                    err.setdefault((name, budget, grid), []).append((float(per.median()), float(per.mean())))

    def gmean(v: list[float]) -> float:
        return math.exp(sum(math.log(x) for x in v) / len(v))

    best = {
        (name, b): min(GRIDS, key=lambda gr: gmean([e[0] for e in err[(name, b, gr)]]))
        for name in SAMPLERS
        for b in BUDGETS
    }
    print("Endpoint error (median over 256 trajectories of ||x - x_ref|| / sqrt(D)), each sampler on its best grid")
    print("(geometric mean over the mixtures); VP SDE, PF-ODE from T = 1 to eps = 1e-3.\n")
    lines = [
        "| D | NFE | " + " | ".join(SAMPLERS) + " | DDIM / DPM-Solver++ (median) | (mean) |",
        "|---|---|" + "---|" * (len(SAMPLERS) + 2),
    ]
    worst = {b: math.inf for b in BUDGETS}
    for b in BUDGETS:
        for k, (dim, *_rest) in enumerate(cases):
            vals = {n: err[(n, b, best[(n, b)])][k] for n in SAMPLERS}
            ratio = vals["ddim"][0] / vals["dpmsolver++"][0]
            ratio_mean = vals["ddim"][1] / vals["dpmsolver++"][1]
            worst[b] = min(worst[b], ratio)
            lines.append(
                f"| {dim} | {b} | "
                + " | ".join(f"{vals[n][0]:.2e}" for n in SAMPLERS)
                + f" | {ratio:.2f}x | {ratio_mean:.2f}x |"
            )
    print("\n".join(lines))
    print("\nbest grids: " + ", ".join(f"{n}@{b}: {best[(n, b)]}" for n in SAMPLERS for b in BUDGETS))
    print("\nall grids (geometric-mean median error over the mixtures):")
    for name in SAMPLERS:
        for b in BUDGETS:
            print(
                f"  {name:<12} NFE {b:>3}: "
                + ", ".join(f"{gr} {gmean([e[0] for e in err[(name, b, gr)]]):.2e}" for gr in GRIDS)
            )
    print("\nBoth on the grid uniform in log-SNR (the issue's reference setting), DDIM / DPM-Solver++ per mixture:")
    for b in BUDGETS:
        ratios = [err[("ddim", b, "logsnr")][k][0] / err[("dpmsolver++", b, "logsnr")][k][0] for k in range(len(cases))]
        print(f"  NFE {b}: " + ", ".join(f"D={c[0]} {r:.2f}x" for c, r in zip(cases, ratios, strict=True)))
    ok = worst[10] >= 2 and worst[20] >= 4
    print(
        f"\nDDIM / DPM-Solver++(2M) error ratio, worst mixture: {worst[10]:.2f}x at 10 NFE (need >= 2), "
        f"{worst[20]:.2f}x at 20 NFE (need >= 4): {'PASS' if ok else 'FAIL'}"
    )

    # the README plot: error against NFE on the D = 16 mixture
    dim, model, _, _ = cases[3]
    gm16 = GaussianMixture.random(16, 4, generator=torch.Generator().manual_seed(100 + 3))
    res = compare(
        ("euler", "heun", "rk4", "ddim", "dpmsolver++"),
        (10, 20, 40, 80, 160),
        mixture=gm16,
        n=256,
        grids={
            "euler": best[("euler", 20)],
            "heun": best[("heun", 20)],
            "rk4": best[("heun", 20)],
            "ddim": best[("ddim", 20)],
            "dpmsolver++": best[("dpmsolver++", 20)],
        },
    )
    out = Path(__file__).resolve().parent.parent / "docs" / "sampler_comparison.png"
    res.plot(out, title="VP PF-ODE, 16-D Gaussian-mixture oracle, endpoint error vs NFE")
    print("\n" + res.table())
    print(f"\nwrote {out}  ({time.perf_counter() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
