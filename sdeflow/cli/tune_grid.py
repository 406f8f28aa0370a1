"""``sdeflow tune-grid``: tune a sampler's time grid for each NFE budget and write one JSON grid per budget.

sdeflow tune-grid --checkpoint runs/digits --sampler unipc --order 3 --nfe 5,6,8,10 --out runs/digits/grids/
sdeflow tune-grid --oracle-dim 8 --sampler dpmsolver++ --order 3 --nfe 6 --out grids/dpm3m
sdeflow sample --checkpoint runs/digits --sampler unipc --order 3 --grid runs/digits/grids/unipc-nfe8.json

The work is ``sdeflow.sampling.to_file.grid_tuning`` (the search: sdeflow/sampling/tuning.py); this module
parses and prints.
"""

from __future__ import annotations

import argparse

from ._common import add_sampler_arguments, add_source_arguments, sampler_from_args

HELP = "Tune a sampler's time grid (least endpoint error against the PF-ODE) for each NFE; one JSON per NFE."


def _nfes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"--nfe must be comma-separated integers, e.g. 5,6,8,10; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--nfe must list budgets >= 1, e.g. 5,6,8,10; got {text!r}")
    return sorted(set(values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p, oracle_dim=None)
    add_sampler_arguments(p, "unipc", grid=False, help="a deterministic grid sampler")
    p.add_argument("--nfe", type=_nfes, required=True, help="NFE budgets, comma-separated, e.g. 5,6,8,10")
    p.add_argument(
        "--out", required=True, help="a folder (existing, or ending in '/': <out>/<sampler>-nfe<N>.json) or a prefix "
        "(<out>-nfe<N>.json)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing grid files")
    p.add_argument("--calibration", type=int, default=256, help="calibration batch size (x_T from the prior)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration x_T")
    p.add_argument("--eps", type=float, default=1e-3, help="end time of the grid (default 1e-3)")
    p.add_argument("--candidates", type=int, default=128, help="candidate times of the dynamic programming")
    p.add_argument("--max-evals", type=int, default=400, help="sampler runs of the refinement per NFE (0: none)")
    p.add_argument(
        "--reference-tol",
        type=float,
        default=None,
        help="dopri5 rtol = atol of the reference (default 1e-10 on the float64 oracle, 1e-6 for a checkpoint)",
    )
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..sampling.to_file import grid_tuning
    from ..sources import model_source

    source = model_source(args.checkpoint, oracle_dim=args.oracle_dim, oracle_components=args.oracle_components,
                          oracle_seed=args.oracle_seed, map_location=args.device)
    tuning = grid_tuning(source, sampler_from_args(args)[0], args.nfe, args.out, overwrite=args.overwrite,
                         calibration=args.calibration, seed=args.seed, eps=args.eps, candidates=args.candidates,
                         max_evals=args.max_evals, reference_tol=args.reference_tol, device=args.device)
    print(f"reference: dopri5 at {tuning.reference_tol:g} on {tuning.calibration} calibration x_T (seed {args.seed}) "
          "...", flush=True)
    for res in tuning.run():
        print(f"{res.summary()} -> {tuning.paths[res.nfe]}")
    return 0
