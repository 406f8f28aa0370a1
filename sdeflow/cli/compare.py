"""``sdeflow compare``: error against NFE for several samplers, with fitted convergence orders.

    sdeflow compare --solvers euler,heun,rk4,ddim,dpmsolver++ --nfe 10,20,40,80 --out runs/compare
    sdeflow compare --solvers ddpm,pc,ddim-eta1 --nfe 20,40,80,160 --out runs/compare-sde
    sdeflow compare --checkpoint runs/digits --solvers ddim,dpmsolver++,heun --nfe 10,20,40 --out runs/cmp-digits
Writes compare.csv, compare.json and compare.png (log-log error against NFE) to --out and prints the table.
"""

from __future__ import annotations

import argparse

HELP = "Compare samplers' error against NFE on the Gaussian-mixture oracle (or a checkpoint); CSV, JSON, PNG."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--solvers",
        default="euler,heun,rk4,ddim,dpmsolver++",
        help="comma list: euler, heun, midpoint, rk4, ddim, dpmsolver++, ddpm, pc, ddim-eta<x>, "
        "sde:<torchsde method>, ode:<torchdiffeq method>",
    )
    p.add_argument("--nfe", default="10,20,40,80", help="comma list of NFE budgets")
    p.add_argument("--grids", default=None, help="solver=grid pairs, e.g. ddim=uniform,dpmsolver++=logsnr")
    p.add_argument("--checkpoint", default=None, help="compare on a trained model instead of the oracle")
    p.add_argument("--dim", type=int, default=2, help="oracle mixture dimension")
    p.add_argument("--components", type=int, default=4, help="oracle mixture components")
    p.add_argument("--n", type=int, default=256, help="trajectories for endpoint errors")
    p.add_argument("--n-distribution", type=int, default=2000, help="samples for distribution distances")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/compare", help="output folder")


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    from ..compare import compare
    from ..sources import model_source

    try:
        budgets = [int(b) for b in _split(args.nfe)]
    except ValueError as err:
        raise ValueError(f"--nfe must be a comma list of integers like 10,20,40; got {args.nfe!r}.") from err
    if not budgets or min(budgets) < 1:
        raise ValueError(f"--nfe must be a comma list of positive integers like 10,20,40; got {args.nfe!r}.")
    if not _split(args.solvers):
        raise ValueError(f"--solvers must name at least one solver, e.g. ddim,heun; got {args.solvers!r}.")
    pairs = [p.split("=", 1) for p in _split(args.grids or "")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--grids must be solver=grid pairs like ddim=uniform; got {args.grids!r}.")
    src = model_source(args.checkpoint, oracle_dim=None if args.checkpoint else args.dim,
                       oracle_components=args.components, oracle_seed=args.seed)
    result = compare(
        _split(args.solvers), budgets, grids=dict(pairs) or None, n=args.n, n_distribution=args.n_distribution,
        eps=args.eps, seed=args.seed, mixture=src.oracle, model=None if src.oracle else src.model, sde=src.sde,
        sample_shape=src.sample_shape,
        callback=lambda e: print(f"  {e.label:<14} NFE {e.info['nfe']:>5}  error {e.info['error']:.3e}", flush=True),
    )
    paths = result.write(args.out)  # --out checked by sdeflow.cli.check_common
    print(result.table())
    print(f"wrote {', '.join(map(str, paths))}")
    return 0
