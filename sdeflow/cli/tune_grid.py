"""``sdeflow tune-grid``: tune a sampler's time grid for each NFE budget and write one JSON grid per budget.

sdeflow tune-grid --checkpoint runs/digits --sampler unipc --order 3 --nfe 5,6,8,10 --out runs/digits/grids/
sdeflow tune-grid --oracle-dim 8 --sampler dpmsolver++ --order 3 --nfe 6 --out grids/dpm3m
sdeflow sample --checkpoint runs/digits --sampler unipc --order 3 --grid runs/digits/grids/unipc-nfe8.json

The search is ``sdeflow.tune_grid`` (sdeflow/sampling/tuning.py); this module parses and prints.
"""

from __future__ import annotations

import argparse

from ._common import SAMPLER_FLAGS

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
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by `sdeflow train` (sdeflow.load)")
    p.add_argument("--oracle-dim", type=int, default=None, help="without --checkpoint: dimension of the random mixture")
    p.add_argument("--oracle-components", type=int, default=4)
    p.add_argument("--oracle-seed", type=int, default=0, help="seed of the random mixture")
    p.add_argument("--sampler", "--method", dest="sampler", default="unipc", help="a deterministic grid sampler")
    for dest, (flag, typ, help_) in SAMPLER_FLAGS.items():
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument(
        "--lower-order-final", action=argparse.BooleanOptionalAction, default=None, help="multistep samplers"
    )
    p.add_argument("--corrector", action=argparse.BooleanOptionalAction, default=None, help="unipc: UniC corrector")
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
    p.set_defaults(grid=None, rho=None, adaptive=None)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import VPSDE, GaussianMixture
    from ..sampling.tuning import (
        calibration_reference,
        grid_paths,
        save_grid,
        steps_for_nfe,
        tunable_sampler,
        tune_grid,
    )
    from ._common import sampler_from_args

    if (args.checkpoint is None) == (args.oracle_dim is None):
        raise ValueError("give --checkpoint DIR (a trained model) or --oracle-dim D (a random mixture), one of them.")
    if args.calibration < 1:
        raise ValueError(f"--calibration must be >= 1 (e.g. 256); got {args.calibration}.")
    sampler = tunable_sampler(sampler_from_args(args)[0])
    paths = grid_paths(args.out, sampler.name, args.nfe, overwrite=args.overwrite)  # before any computing
    g = torch.Generator().manual_seed(args.seed)
    if args.checkpoint is not None:
        from ..checkpoint import load

        ckpt = load(args.checkpoint, map_location=args.device)
        model, sde, shape, dtype = ckpt.score_model, ckpt.sde, tuple(ckpt.sample_shape), torch.float32
        source: dict = {"checkpoint": str(args.checkpoint)}
        tol = 1e-6 if args.reference_tol is None else args.reference_tol
    else:
        sde = VPSDE()
        gm = GaussianMixture.random(
            args.oracle_dim, args.oracle_components, generator=torch.Generator().manual_seed(args.oracle_seed)
        )
        model, shape, dtype = gm.score_model(sde), (args.oracle_dim,), torch.float64
        source = {"oracle": {"dim": args.oracle_dim, "components": args.oracle_components, "seed": args.oracle_seed}}
        tol = 1e-10 if args.reference_tol is None else args.reference_tol
    for nfe in paths:
        steps_for_nfe(sampler, nfe, sde, model.prediction)  # every budget reachable, before any computing
    x_T = sde.prior_sampling((args.calibration, *shape), generator=g, dtype=dtype).to(args.device)
    print(f"reference: dopri5 at {tol:g} on {args.calibration} calibration x_T (seed {args.seed}) ...", flush=True)
    reference = calibration_reference(model, sde, x_T, eps=args.eps, candidates=args.candidates, rtol=tol)
    for nfe, path in paths.items():
        res = tune_grid(model, sde, sampler, nfe, reference=reference, max_evals=args.max_evals)
        info = {**res.info(), "model": source, "sde": sde.config(), "calibration_seed": args.seed}
        save_grid(path, res.grid, info)
        best = min((k for k in res.baselines if k != "dp"), key=lambda k: res.baselines[k])
        print(
            f"NFE {nfe:>3} ({res.steps} steps): calibration error {res.error:.3e}, best built-in grid {best} "
            f"{res.baselines[best]:.3e} ({res.baselines[best] / res.error:.2f}x), from {res.start}, "
            f"{res.evaluations} runs, {res.wall_time:.1f} s -> {path}"
        )
    return 0
