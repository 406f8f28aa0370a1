"""Is sdeflow's DPM-Solver++(2M) faithful, and how much does its advantage over DDIM depend on the mixture?

1. Fidelity: DPM-Solver++(2M) and DDIM transcribed line by line from MATH.md section 4 (float64, alpha, sigma and
   lambda from the closed-form VP schedule, the data prediction D = x0_hat of the exact mixture score) against
   ``sdeflow.sample`` on identical uniform / quadratic / log-SNR grids at 5, 10 and 20 steps: max |difference|.
2. The first-order last step (``lower_order_final``, applied below 15 steps) at 10 NFE: DDIM / DPM-Solver++
   mean-error ratio with and without it.
3. Spread over fresh mixtures: 24 random mixtures (seeds 200-223, D cycling through 2..64, 4 components), both
   samplers on the log-SNR grid, N = 1024 trajectories to eps = 1e-3 against float64 dopri5 (tol 1e-10); the
   DDIM / DPM-Solver++ ratio of mean (and median) endpoint errors ||x - x_ref|| / sqrt(D) at 10 and 20 NFE.

    python benchmarks/bench_dpm_fidelity.py          # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import math
import sys

import torch

from sdeflow import VPSDE, GaussianMixture, sample

torch.set_num_threads(1)
SDE = VPSDE()
EPS = 1e-3
B0, B1 = SDE.beta_min, SDE.beta_max


def log_alpha(t: float) -> float:
    return -0.25 * t * t * (B1 - B0) - 0.5 * t * B0


def alpha(t: float) -> float:
    return math.exp(log_alpha(t))


def sigma(t: float) -> float:
    return math.sqrt(-math.expm1(2 * log_alpha(t)))


def lam(t: float) -> float:
    return math.log(alpha(t)) - math.log(sigma(t))


def t_of_lam(x: float) -> float:
    c = 0.5 * math.log1p(math.exp(-2 * x))  # -log alpha, from alpha^2 = sigmoid(2 lambda)
    a, b = 0.25 * (B1 - B0), 0.5 * B0
    return 2 * c / (b + math.sqrt(b * b + 4 * a * c))


def grid(kind: str, steps: int) -> list[float]:
    u = [k / steps for k in range(steps + 1)]
    if kind == "uniform":
        return [1 + x * (EPS - 1) for x in u]
    if kind == "quadratic":
        return [EPS + (1 - EPS) * (1 - x) ** 2 for x in u]
    l0, l1 = lam(1.0), lam(EPS)
    return [1.0] + [t_of_lam(l0 + x * (l1 - l0)) for x in u[1:-1]] + [EPS]


def ddim(model, x: torch.Tensor, ts: list[float]) -> torch.Tensor:
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        e = model.eps(x, torch.full((x.shape[0],), t, dtype=torch.float64))
        x0 = (x - sigma(t) * e) / alpha(t)
        x = alpha(s) * x0 + sigma(s) * e
    return x


def dpmpp2m(model, x: torch.Tensor, ts: list[float], first_order_last: bool) -> torch.Tensor:
    d_prev = h_prev = None
    for i in range(1, len(ts)):
        d = model.x0(x, torch.full((x.shape[0],), ts[i - 1], dtype=torch.float64))
        h = lam(ts[i]) - lam(ts[i - 1])
        dc = d
        if d_prev is not None and not (first_order_last and i == len(ts) - 1):
            r = h_prev / h
            dc = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
        x = sigma(ts[i]) / sigma(ts[i - 1]) * x - alpha(ts[i]) * math.expm1(-h) * dc
        d_prev, h_prev = d, h
    return x


def case(seed: int, dim: int, n: int):
    g = torch.Generator().manual_seed(seed)
    gm = GaussianMixture.random(dim, 4, generator=g)
    model = gm.score_model(SDE)
    x_T = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return model, x_T


def main() -> int:
    print("1. max |sdeflow - transcription| over 3 mixtures (D = 2, 16, 64), 64 trajectories:")
    worst = {"ddim": 0.0, "dpmsolver++": 0.0}
    for i, dim in ((0, 2), (3, 16), (5, 64)):
        model, x_T = case(100 + i, dim, 64)
        for kind in ("uniform", "quadratic", "logsnr"):
            for steps in (5, 10, 20):
                ts = grid(kind, steps)
                for method, mine in (
                    ("ddim", ddim(model, x_T, ts)),
                    ("dpmsolver++", dpmpp2m(model, x_T, ts, steps < 15)),
                ):
                    r = sample(model, SDE, x_T, method=method, steps=steps, grid=kind, eps=EPS)
                    worst[method] = max(worst[method], float((r.samples - mine).abs().max()))
    print("   " + ", ".join(f"{k}: {v:.1e}" for k, v in worst.items()))

    print("\n2. and 3. DDIM / DPM-Solver++(2M) ratios on fresh mixtures, both on the log-SNR grid (N = 1024):")
    dims = (2, 4, 8, 16, 32, 64)
    ratios: dict[str, list[float]] = {}
    for seed in range(200, 224):
        dim = dims[seed % 6]
        model, x_T = case(seed, dim, 1024)
        ref = sample(model, SDE, x_T, method="ode", solver="dopri5", eps=EPS, rtol=1e-10, atol=1e-10).samples
        line = f"   seed {seed} D={dim:>2}:"
        for steps in (10, 20):
            err = {}
            for method, kw in (("ddim", {}), ("dpmsolver++", {}), ("dpm-2nd-last", {"lower_order_final": False})):
                m = "dpmsolver++" if method == "dpm-2nd-last" else method
                x = sample(model, SDE, x_T, method=m, steps=steps, grid="logsnr", eps=EPS, **kw).samples
                err[method] = (x - ref).norm(dim=1) / math.sqrt(dim)
            mean = float(err["ddim"].mean() / err["dpmsolver++"].mean())
            med = float(err["ddim"].median() / err["dpmsolver++"].median())
            ratios.setdefault(f"mean {steps}", []).append(mean)
            ratios.setdefault(f"median {steps}", []).append(med)
            line += f"  NFE {steps}: mean {mean:.2f}x median {med:.2f}x"
            if steps == 10:
                second = float(err["ddim"].mean() / err["dpm-2nd-last"].mean())
                ratios.setdefault("mean 10, 2nd-order last step", []).append(second)
                line += f" (2nd-order last step: mean {second:.2f}x)"
        print(line, flush=True)
    target = {"10": 2.0, "20": 4.0}
    print("\n   summary over the 24 mixtures (min / median / max, and how many are below issue 3's target):")
    for key, v in ratios.items():
        v = sorted(v)
        below = sum(x < target[key.split()[1].rstrip(",")] for x in v)
        print(f"   {key:<30} {v[0]:.2f}x / {v[len(v) // 2]:.2f}x / {v[-1]:.2f}x, below target: {below} of {len(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
