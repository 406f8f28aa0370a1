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

from ._common import add_sampler_arguments, add_source_arguments, progress_bar, sampler_from_args

# argument name in sdeflow.sampling.to_file -> the flag that errors name
FLAGS = {"out": "--out", "trajectory": "--trajectory", "classes": "--class", "guidance": "--guidance",
         "guidance_rescale": "--guidance-rescale", "guidance_interval": "--guidance-interval"}
HELP = "Draw samples with any sampler (ddim, dpmsolver++, unipc, deis, ipndm, heun, ddpm, pc, ode[:m], sde[:m])."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p, oracle_dim=2)
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
    from ..sampling.to_file import sample_to_file
    from ..sources import model_source

    sampler, grid = sampler_from_args(args)
    source = model_source(args.checkpoint, oracle_dim=None if args.checkpoint else args.oracle_dim,
                          oracle_components=args.oracle_components, oracle_seed=args.oracle_seed,
                          conditional=args.classes is not None, map_location=args.device)
    with progress_bar(args, f"sampling ({sampler.name}, rank 0 of {{world}})", "chunk") as bar:
        res = sample_to_file(
            source, args.out, args.n, sampler=sampler, steps=args.steps, grid=grid, eps=args.eps,
            set_alpha_to_one=args.set_alpha_to_one, seed=args.seed, classes=args.classes, guidance=args.guidance,
            guidance_rescale=args.guidance_rescale, guidance_interval=args.guidance_interval,
            batch_size=args.batch_size, device=args.device, scale=args.scale, trajectory=args.trajectory,
            progress=bar, names=FLAGS,
        )
    if res is None:  # another torchrun process: rank 0 writes and reports
        return 0
    print("\n".join(res.lines()))
    return 0 if res.status == "success" else 1
