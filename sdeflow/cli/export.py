"""``sdeflow export``: a checkpoint -> one ONNX graph with the whole sampler loop, verified against PyTorch."""

from __future__ import annotations

import argparse

from ._common import add_sampler_arguments, sampler_from_args

HELP = "Export a checkpoint's sampler (network + fixed-grid loop) to one ONNX file, verified in onnxruntime."


def _step_counts(text: str) -> tuple[int, ...] | bool:
    """'5,10,20' -> (5, 10, 20); '5-50' -> 5..50; 'default' -> True (5, 10, 20, 50 and --steps)."""
    if text == "default":
        return True
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            return tuple(range(lo, hi + 1))
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected step counts like 5,10,20 or a range 5-50 or 'default'; got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--out", default="model.onnx", help="output .onnx file (default: model.onnx)")
    p.add_argument("--steps", type=int, default=50, help="grid steps S (default: 50; a tuned grid has its own)")
    add_sampler_arguments(p, default="ddim")
    p.add_argument(
        "--dynamic-steps",
        nargs="?",
        const="default",
        default=None,
        type=_step_counts,
        metavar="COUNTS",
        help="export an ONNX Scan graph whose step count is chosen at run time among COUNTS (5,10,20 or 5-50; "
        "without a value: 5, 10, 20, 50 and --steps)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch parity check")
    p.add_argument("--guided", action="store_true",
                   help="class-conditional checkpoints: a guided graph with inputs class_labels and guidance (one file "
                   "for every w; run it with sdeflow run-onnx --class 3 --guidance 2)")


def run(args: argparse.Namespace) -> int:
    from sdeflow.export import export_sampler

    sampler, grid = sampler_from_args(args)
    report = export_sampler(
        args.checkpoint,
        args.out,
        sampler=sampler,  # pyright: ignore[reportArgumentType]  (export_sampler refuses non-grid samplers by name)
        steps=args.steps,
        grid=grid,
        eps=args.eps,
        set_alpha_to_one=args.set_alpha_to_one,
        dynamic_steps=args.dynamic_steps,
        verify=not args.no_verify,
        guided=args.guided,
    )
    print(report.summary())
    guided = " --class 3 --guidance 2" if args.guided else ""
    print(f"run it with: sdeflow run-onnx {report.path} --batch 16 --seed 0{guided} --out samples.png")
    return 0
