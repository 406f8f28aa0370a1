"""``sdeflow train``: train a score model on built-in data or a user array and write a checkpoint folder.

    sdeflow train --data digits --sde vp --steps 2000 --out runs/digits
    sdeflow train --data digits --steps 4000 --out runs/digits --resume      # continue (same settings) to 4000
    sdeflow train --data digits --steps 2000 --out runs/digits --overwrite   # replace the run in runs/digits
    sdeflow train --data digits --conditional --p-uncond 0.1 --out runs/digits-cond  # class-conditional
    torchrun --standalone --nproc_per_node 2 -m sdeflow train --data moons --steps 2000 --out runs/moons
"""

from __future__ import annotations

import argparse
import json

from ._common import progress_bar

HELP = "Train a score model (EMA weights, periodic test loss, resumable; multi-process under torchrun)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="digits, gmm, moons, checkerboard, swissroll, or a .npy/.npz path (default: digits)")
    p.add_argument("--levels", type=int, default=None, help="user arrays: K integer levels per dimension (discrete)")
    p.add_argument("--scale", type=float, default=None, help="user arrays: model x = scale * y + offset")
    p.add_argument("--offset", type=float, default=None, help="user arrays: model x = scale * y + offset")
    p.add_argument("--sde", default="vp", help="vp, subvp or ve (default: vp)")
    p.add_argument("--prediction", default="eps", help="eps, x0, v or score (default: eps)")
    p.add_argument("--loss", default="dsm", help="dsm (continuous time) or ddpm (integer timesteps) (default: dsm)")
    p.add_argument(
        "--conditioning", default="noise_level",
        help="dsm network label: noise_level (c_noise = log(sigma/alpha)/4, default) or t (label t, as before)",
    )
    p.add_argument("--weighting", default="sigma2", help="dsm weighting: sigma2 or likelihood (default: sigma2)")
    p.add_argument("--importance-sampling", action="store_true", help="with --weighting likelihood: sample t by weight")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional network (the data's labels; classifier-free guidance at sampling time)")
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="with --conditional: probability of training on the null class (default: 0.1)")
    p.add_argument("--model", default=None,
                   help='network config as JSON, e.g. \'{"type": "unet", "channels": 32}\'')
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-schedule", default="cosine", help="constant or cosine (default: cosine)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip; 0 = none (default: 1.0)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="run folder (a checkpoint for sdeflow.load / --checkpoint)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out up to --steps (the run's total; steps already done are kept)")
    mode.add_argument("--overwrite", action="store_true", help="replace a run that --out already holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..distributed import rank_and_world
    from ..progress import Progress
    from ..train import TrainConfig, train

    bad = f"--model must be a JSON object like '{{\"type\": \"unet\"}}'; got {args.model!r}."
    try:
        model = json.loads(args.model) if args.model else None
    except json.JSONDecodeError as err:
        raise ValueError(bad) from err
    if model is not None and not isinstance(model, dict):
        raise ValueError(bad)
    config = TrainConfig(
        data=args.data, levels=args.levels, scale=args.scale, offset=args.offset, sde=args.sde, model=model,
        prediction=args.prediction, loss=args.loss, conditioning=args.conditioning, weighting=args.weighting,
        importance_sampling=args.importance_sampling, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay, grad_clip=args.grad_clip,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
        conditional=args.conditional, p_uncond=args.p_uncond,
    )
    last_test: dict[str, float] = {}
    with progress_bar(args, "train", "step") as bar:

        def callback(event: Progress) -> None:  # the bar shows the loss and the latest test loss
            loss = event.info["loss"]
            if "test_loss" in event.info:
                last_test["test"] = event.info["test_loss"]
                if not bar.enabled:
                    print(f"step {int(event.done)}: loss {loss:.4f}  test loss {last_test['test']:.4f}", flush=True)
            bar(Progress("train", event.done, event.total, {"loss": loss, **last_test}))

        result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, callback=callback,
                       device=args.device)
    if rank_and_world()[0] == 0:
        print(result.summary())
        print(f"checkpoint: {result.checkpoint}  (sdeflow.load or --checkpoint {result.checkpoint})")
    return 0
