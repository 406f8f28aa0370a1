"""How a sample forms: the denoised estimate x0_hat along the probability-flow ODE, one strip per sample.

    python examples/denoising_trajectory.py --checkpoint runs/quickstart/model --out docs/trajectory.png
    python examples/denoising_trajectory.py            # checkpoint-free: the 2-D Gaussian-mixture oracle

The PF-ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (docs/math.md section 2) is integrated from x_T ~ p_T down to
t = eps with torchdiffeq (dopri5), saving x_t at ``--frames`` times evenly spaced in log-SNR; at each the model's
denoised estimate x0_hat = E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t) (Tweedie) is one frame, and
``sdeflow.images.save_trajectory`` draws them: images as one row per sample, 2-D points as paths in the plane.
"""

from __future__ import annotations

import argparse

import torch
from torchdiffeq import odeint

import sdeflow
from sdeflow.images import save_trajectory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a folder written by `sdeflow train` or `sdeflow quickstart` (default: oracle)")
    p.add_argument("--n", type=int, default=6, help="samples (strips)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="trajectory.png", help=".png / .pdf / .svg picture, or .npy / .npz frames")
    args = p.parse_args()
    if args.checkpoint:
        ckpt = sdeflow.load(args.checkpoint)
        model, sde, shape, data = ckpt.score_model, ckpt.sde, ckpt.sample_shape, ckpt.data_info
    else:
        sde = sdeflow.VPSDE()
        gm = sdeflow.GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(0))
        model, shape, data = gm.score_model(sde), (2,), None
    eps = 1e-3
    lam = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    times = sde.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), args.frames, dtype=torch.float64))
    times[0], times[-1] = sde.T, eps
    times = times.float()
    x_T = sde.prior_sampling((args.n, *shape), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        xs = odeint(sdeflow.ProbabilityFlowODE(sde, model), x_T, times, method="dopri5", rtol=1e-4, atol=1e-4)
        frames = [model.x0(x, t) for x, t in zip(xs, times, strict=True)]
    path = save_trajectory(args.out, frames, data=data, max_frames=args.frames)
    print(f"x0_hat of {args.n} samples at {args.frames} times from t = {sde.T} to {eps} -> {path}")


if __name__ == "__main__":
    main()
