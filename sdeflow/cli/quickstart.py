"""``sdeflow quickstart``: the main job, end to end on the built-in 8x8 digits, in a few minutes on a laptop CPU.

The work is ``sdeflow.quickstart.run_quickstart`` (its stages are the library functions of ``sdeflow.quickstart``);
this command shows its progress, prints each stage's line as the stage ends, then the summary. It writes
``OUT/model`` (the checkpoint), ``OUT/report.json``, ``OUT/samples.png``, ``OUT/loss.png`` and ``OUT/model.onnx``.
"""

from __future__ import annotations

import argparse

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
    from ..progress import Progress, StageBars
    from ..quickstart import UNITS, run_quickstart

    with StageBars(UNITS, enabled=not args.no_progress) as bars:  # --out: checked by sdeflow.cli.check_common

        def show(event: Progress) -> None:  # a stage's line as it ends; the stages' bars
            if event.stage == "quickstart":
                bars.close()
                print(event.label, flush=True)
            else:
                bars(event)

        result = run_quickstart(args.out, steps=args.steps, batch_size=args.batch_size, n_test=args.n_test,
                                n_samples=args.n_samples, seed=args.seed, overwrite=args.overwrite, progress=show,
                                names={"n_test": "--n-test"})
    print("\n".join(result.closing_lines()))
    return 0
