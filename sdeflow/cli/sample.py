"""``sdeflow sample``: draw samples from a checkpoint (or from the Gaussian-mixture oracle) with any sampler.

sdeflow sample --checkpoint runs/digits --method dpmsolver++ --steps 20 --n 64 --seed 0 --out samples.npy
sdeflow sample --oracle-dim 2 --method ddpm --steps 1000 --n 2000 --out gmm.npy
"""

from __future__ import annotations

import argparse
import json

from ._common import add_ddim_arguments

HELP = "Draw samples with any sampler (ddpm, ddim, dpmsolver++, pc, sde:<torchsde>, ode:<torchdiffeq>)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by `sdeflow train` (sdeflow.load)")
    p.add_argument("--oracle-dim", type=int, default=2, help="without --checkpoint: dimension of the random mixture")
    p.add_argument("--oracle-components", type=int, default=4)
    p.add_argument("--oracle-seed", type=int, default=0, help="seed of the random mixture")
    p.add_argument("--method", default="ddim", help="ddpm, ddim, dpmsolver++, pc, sde[:solver], ode[:solver]")
    p.add_argument("--steps", type=int, default=50)
    add_ddim_arguments(p)
    p.add_argument("--variance", default="posterior", help="ddpm: posterior or beta")
    p.add_argument("--snr", type=float, default=0.16, help="pc: Langevin corrector signal-to-noise ratio")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.npy", help="output .npy (model space); metadata in <out>.json")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .. import VPSDE, GaussianMixture
    from .._utils import atomic_write
    from ..sampling import sample

    if args.checkpoint is not None:
        try:
            from ..checkpoint import load
        except ImportError as err:  # pragma: no cover - the module ships with sdeflow
            raise ValueError("--checkpoint needs sdeflow.checkpoint, which this installation lacks.") from err
        ckpt = load(args.checkpoint, map_location=args.device)
        model, sde, shape = ckpt.score_model, ckpt.sde, ckpt.sample_shape
        source = {"checkpoint": str(args.checkpoint), "data": ckpt.data_info}
    else:
        sde = VPSDE()
        gm = GaussianMixture.random(
            args.oracle_dim, args.oracle_components, generator=torch.Generator().manual_seed(args.oracle_seed)
        )
        model, shape = gm.score_model(sde), (args.oracle_dim,)
        source = {"oracle": {"dim": args.oracle_dim, "components": args.oracle_components, "seed": args.oracle_seed}}
    bars: list = []

    def progress(info) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(
                tqdm(desc=f"sampling ({args.method})", unit="step", total=info.total if info.total > 0 else None)
            )
        bars[0].update(1)

    result = sample(
        model,
        sde,
        shape=(args.n, *shape),
        method=args.method,
        steps=args.steps,
        grid=args.grid,
        eta=args.eta,
        eps=args.eps,
        set_alpha_to_one=args.set_alpha_to_one,
        variance=args.variance,
        snr=args.snr,
        seed=args.seed,
        device=args.device,
        callback=None if args.no_progress else progress,
    )
    for bar in bars:
        bar.close()
    out = Path(args.out)
    atomic_write(out, lambda tmp: _save_npy(tmp, result.samples.cpu().numpy()))
    meta = {
        "method": result.method,
        "solver": result.solver,
        "steps": result.steps,
        "nfe": result.nfe,
        "status": result.status,
        "wall_time_s": round(result.wall_time, 3),
        "seed": args.seed,
        "n": args.n,
        "sample_shape": list(shape),
        **source,
    }
    atomic_write(out.with_suffix(out.suffix + ".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    print(
        f"{args.n} samples -> {out}  (method {result.method}{':' + result.solver if result.solver else ''}, "
        f"{result.steps} steps, NFE {result.nfe}, {result.wall_time:.2f} s, status {result.status})"
    )
    return 0 if result.status == "success" else 1


def _save_npy(path, array) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, array)
