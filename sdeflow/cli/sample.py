"""``sdeflow sample``: draw samples from a checkpoint (or from the Gaussian-mixture oracle) with any sampler.

Under ``torchrun --nproc_per_node N -m sdeflow sample ...`` the chunks of ``--batch-size`` samples are dealt to the
processes and gathered on rank 0; sample i uses seed + i, so the file equals a single process's.

sdeflow sample --checkpoint runs/digits --method dpmsolver++ --steps 20 --n 64 --seed 0 --out samples.npy
sdeflow sample --oracle-dim 2 --method ddpm --steps 1000 --n 2000 --out gmm.png
sdeflow sample --checkpoint runs/digits-cond --class 7 --guidance 2.0 --n 16 --out sevens.png
sdeflow sample --checkpoint runs/digits-cond --class 0,1,2,3,4,5,6,7,8,9 --guidance 2 --n 100 --out grid.png
--out writes what its extension says (sdeflow.images.save_samples): .npy / .npz arrays, .png / .pdf / .svg pictures.
"""

from __future__ import annotations

import argparse
import json

from ..progress import ProgressBar
from ._common import add_sampler_arguments, sampler_from_args

HELP = "Draw samples with any sampler (ddim, dpmsolver++, unipc, deis, ipndm, heun, ddpm, pc, ode[:m], sde[:m])."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by `sdeflow train` (sdeflow.load)")
    p.add_argument("--oracle-dim", type=int, default=2, help="without --checkpoint: dimension of the random mixture")
    p.add_argument("--oracle-components", type=int, default=4)
    p.add_argument("--oracle-seed", type=int, default=0, help="seed of the random mixture")
    p.add_argument("--steps", type=int, default=50)
    add_sampler_arguments(p)
    p.add_argument("--num-samples", "--n", dest="n", type=int, default=16, help="number of samples (--n for short)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--class", dest="classes", default=None,
                   help="class-conditional models (and the oracle, whose classes are its components): one class for "
                   "every sample (7), one per sample, or a list whose length divides --n (0,1,...,9: n/10 of each)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w: out_c + w (out_c - out_u) (diffusers' guidance_scale = "
                   "1 + w; default 0 = plain conditional)")
    p.add_argument("--guidance-rescale", type=float, default=None,
                   help="guidance rescale phi in [0, 1] (Lin et al. 2024; diffusers' guidance_rescale)")
    p.add_argument("--guidance-interval", default=None, metavar="T_LO,T_HI",
                   help="guide only while T_LO <= t <= T_HI (Kynkaanniemi et al. 2024), e.g. 0.1,0.7")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per chunk (default min(n, 1024)); under torchrun chunks are dealt to the processes",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out",
        default="samples.npy",
        help="samples.npy / .npz (arrays, model space) or .png / .pdf / .svg (an image grid, or 2-D points beside "
        "the training data or the oracle density); metadata in <out>.json",
    )
    p.add_argument("--scale", type=int, default=None, help="upscaling of image grids (default: long side >= 512 px)")
    p.add_argument(
        "--trajectory",
        default=None,
        metavar="FILE",
        help="also write the denoised estimate x0_hat after each step of the first 8 samples (.png strips, .npy ...)",
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .. import VPSDE, GaussianMixture
    from .. import distributed as D
    from .._utils import atomic_write
    from .._validate import json_safe
    from ..images import output_format, picture_extras, save_samples
    from ..sampling import denoised_trajectory, sample_many

    output_format(args.out, name="--out")
    if args.trajectory is not None:
        output_format(args.trajectory, name="--trajectory")
    sampler, grid = sampler_from_args(args)
    if args.checkpoint is not None:
        from ..checkpoint import load

        ckpt = load(args.checkpoint, map_location=args.device)
        oracle = None
        model, sde, shape = ckpt.score_model, ckpt.sde, ckpt.sample_shape
        source = {"checkpoint": str(args.checkpoint), "data": ckpt.data_info}
    else:
        sde = VPSDE()
        gm = oracle = GaussianMixture.random(
            args.oracle_dim, args.oracle_components, generator=torch.Generator().manual_seed(args.oracle_seed)
        )
        model = gm.score_model(sde) if args.classes is None else gm.conditional_score_model(sde)
        shape = (args.oracle_dim,)
        source = {"oracle": {"dim": args.oracle_dim, "components": args.oracle_components, "seed": args.oracle_seed}}
    from ..conditioning import check_guidance, class_labels

    cond = None if args.classes is None else class_labels(args.classes, args.n, model.num_classes, "--class")
    for flag, value in (("--guidance", args.guidance), ("--guidance-rescale", args.guidance_rescale)):
        if value is not None:
            if cond is None:
                raise ValueError(f"{flag} needs --class (the classes to guide towards), e.g. --class 7 --guidance 2.")
            check_guidance(value, flag)
    interval = None
    if args.guidance_interval is not None:
        if cond is None:
            raise ValueError("--guidance-interval needs --class (the classes to guide towards).")
        try:
            interval = tuple(float(v) for v in args.guidance_interval.split(","))
        except ValueError:
            interval = ()
        if len(interval) != 2:
            raise ValueError(f"`--guidance-interval` must be two times T_LO,T_HI such as 0.1,0.7; got "
                             f"{args.guidance_interval!r}.")
        model.conditioned(cond, 1.0, interval=interval)  # checks the interval against the SDE before sampling
    if args.guidance_rescale is not None and not 0 <= args.guidance_rescale <= 1:
        raise ValueError(f"`--guidance-rescale` must be a number in [0, 1]; got {args.guidance_rescale}.")
    output_format(args.out, shape, name="--out")
    if args.trajectory is not None:
        output_format(args.trajectory, shape, name="--trajectory")
    import time

    t0 = time.perf_counter()
    ctx = D.init_from_env(args.device)
    try:
        bar = ProgressBar(f"sampling ({sampler.name}, rank 0 of {ctx.world_size})", "chunk",
                          enabled=ctx.is_main and not args.no_progress)
        samples, summary = sample_many(
            model,
            sde,
            args.n,
            shape,
            batch_size=args.batch_size or min(args.n, 1024),
            seed=args.seed,
            ctx=ctx,
            progress=bar,
            sampler=sampler,
            steps=args.steps,
            grid=grid,
            eps=args.eps,
            set_alpha_to_one=args.set_alpha_to_one,
            device=ctx.device,
            cond=cond,
            guidance=args.guidance,
            guidance_rescale=args.guidance_rescale,
            guidance_interval=interval,
        )
        bar.close()
    finally:
        D.shutdown()
    if not ctx.is_main:
        return 0
    assert samples is not None
    out = Path(args.out)
    beside = picture_extras(out, shape, data_info=source.get("data"), oracle=oracle)
    save_samples(out, samples, scale=args.scale, **beside)
    meta = {
        "sampler": sampler.name,
        "options": sampler.config(),
        "steps": args.steps,
        "grid": None if grid is None else (grid if isinstance(grid, str) else grid.config()),
        "seed": args.seed,
        "sample_shape": list(shape),
        "classes": None if cond is None else cond.tolist(),
        "guidance": args.guidance,
        "guidance_rescale": args.guidance_rescale,
        "guidance_interval": None if interval is None else list(interval),
        **summary,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        **source,
    }
    text = json.dumps(json_safe(meta), indent=2, allow_nan=False)
    atomic_write(out.with_suffix(out.suffix + ".json"), lambda tmp: tmp.write_text(text))
    if args.trajectory is not None:
        from ..images import save_trajectory

        # the first samples again (same seeds, so the same samples), collecting x0_hat after every step
        _, frames = denoised_trajectory(
            model,
            sde,
            shape=(min(args.n, 8), *shape),
            seed=args.seed,
            sampler=sampler,
            steps=args.steps,
            grid=grid,
            eps=args.eps,
            set_alpha_to_one=args.set_alpha_to_one,
            device=ctx.device,
            cond=None if cond is None else cond[: min(args.n, 8)],
            guidance=args.guidance,
            guidance_rescale=args.guidance_rescale,
            guidance_interval=interval,
        )
        save_trajectory(args.trajectory, frames, data=source.get("data"))
        print(f"trajectory of {min(args.n, 8)} samples ({len(frames)} steps) -> {args.trajectory}")
    print(
        f"{args.n} samples -> {out}  (sampler {sampler.name}, {args.steps} steps, NFE {summary['nfe']} in all, "
        f"{ctx.world_size} process(es), status {summary['status']})"
    )
    return 0 if summary["status"] == "success" else 1
