"""``sdeflow quickstart``: the main job, end to end on the built-in 8x8 digits, in a few minutes on a laptop CPU.

The stages are library functions (``sdeflow.quickstart``; the ONNX stage ``sdeflow.export.deployment_report``);
this command calls them in order, shows their progress and prints what they return. It writes ``OUT/model`` (the
checkpoint), ``OUT/report.json``, ``OUT/samples.png``, ``OUT/loss.png`` and ``OUT/model.onnx``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import progress_bar

HELP = "Train on the built-in digits, evaluate test bits/dim and sample; write runs/quickstart/ (a few minutes)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--steps", type=int, default=1200, help="training steps (default: 1200)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-test", type=int, default=128, help="test images for bits/dim (default: 128; all: 297)")
    p.add_argument("--n-samples", type=int, default=64, help="samples per sampler (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from sdeflow.export import deployment_report

    from .. import quickstart as qs
    from ..data import load_dataset

    if args.n_test < 2:
        raise ValueError(f"--n-test must be >= 2 (a standard error needs two images); got {args.n_test}.")
    out = Path(args.out)  # checked by sdeflow.cli.check_common
    qs.check_out(out, args.overwrite)
    t_start = time.perf_counter()
    train_set, test_set = load_dataset("digits"), load_dataset("digits", "test")
    print(f"sdeflow quickstart: 8x8 digits ({len(train_set)} train / {len(test_set)} test images, 17 levels), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with progress_bar(args, "train", "step") as bar:
        result, ckpt = qs.train_digits(out / "model", steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                       overwrite=args.overwrite, progress=bar)
    print(f"trained {qs.checkpoint.num_parameters(ckpt.net):,}-parameter UNet for {args.steps} steps in "
          f"{result.seconds:.0f} s; test loss {result.test_loss[-1][1]:.3f}")

    t0 = time.perf_counter()
    with progress_bar(args, "bits/dim", "draw") as bar:
        bpd = qs.evaluate_bits_per_dim(ckpt, train_set, test_set, args.n_test, args.seed, progress=bar)
    test_bpd = bpd.report(time.perf_counter() - t0)
    print(f"test bits/dim on {test_bpd['n_images']} images: model {test_bpd['model']:.3f} +- "
          f"{test_bpd['model_stderr']:.3f} (importance-weighted over {qs.DRAWS} draws "
          f"{test_bpd['model_importance_weighted']:.3f} +- {test_bpd['model_importance_weighted_stderr']:.3f}), "
          f"Gaussian {test_bpd['gaussian']:.3f} +- {test_bpd['gaussian_stderr']:.3f} "
          f"({test_bpd['likelihood']['nfe_per_draw']} NFE per draw, {test_bpd['likelihood']['seconds']:.0f} s)")

    samples, sampler_rows = qs.draw_samples(ckpt, args.n_samples, args.seed, test_set)
    class_grid, conditional = qs.guided_samples(ckpt, train_set, test_set, args.seed)
    print(f"class-conditional samples ({qs.PER_CLASS} per class, DPM-Solver++ 20 steps): classifier accuracy "
          + ", ".join(f"w = {w}: {a:.1%}" for w, a in conditional["guided_accuracy"].items())
          + f" (the classifier: {conditional['classifier_test_accuracy']:.1%} on the test digits; "
          f"{conditional['seconds']:.0f} s)")
    figures = qs.save_figures(out, samples, test_set, result, class_grid)
    report = qs.build_report(out, train_set, test_set, result, ckpt, test_bpd, sampler_rows)
    report["conditional"] = conditional
    report["onnx"] = onnx = deployment_report(out / "model", out, seed=args.seed)
    print(f"ONNX export {onnx['onnx']} (DDIM {onnx['steps']} steps): max rel. error vs PyTorch "
          f"{max(onnx['parity_rel_error'].values()):.1e}; onnxruntime {onnx['speedup']}x PyTorch at batch "
          f"{onnx['batch']}")
    ttq = onnx.get("time_to_quality")
    if ttq and "best" in ttq:
        speed = ", ".join(f"{v['speedup']}x at batch {b}" for b, v in ttq["batches"].items())
        print(f"time to DDIM-50's quality: {ttq['best']} with {ttq['best_steps']} steps under onnxruntime is {speed} "
              "faster than PyTorch eager DDIM-50")
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path = qs.write_report(out, report)
    print(qs.summary_table(report))
    print(f"wrote {path}, {', '.join(map(str, figures))} and the checkpoint {out / 'model'}")
    return 0
