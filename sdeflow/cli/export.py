"""``sdeflow export``: a checkpoint -> one ONNX graph with the whole DDIM loop, verified against PyTorch."""

from __future__ import annotations

import argparse

HELP = "Export a checkpoint's DDIM sampler (network + fixed-step loop) to one ONNX file, verified in onnxruntime."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--out", default="model.onnx", help="output .onnx file (default: model.onnx)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps S (default: 50)")
    p.add_argument("--grid", default=None, help="uniform, quadratic, logsnr, karras; leading, trailing, linspace")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (> 0 adds the graph input `noise`)")
    p.add_argument("--eps", type=float, default=1e-3, help="end time of continuous grids (default: 1e-3)")
    p.add_argument(
        "--set-alpha-to-one",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="last step to abar = 1 (the denoised x0_hat) or stop at abar_0 / eps (default: yes on DDPM spacings)",
    )
    p.add_argument(
        "--dynamic-steps",
        action="store_true",
        help="export an ONNX Scan graph whose step count is chosen at run time (slower)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch parity check")


def run(args: argparse.Namespace) -> int:
    from sdeflow.export import export_ddim

    report = export_ddim(
        args.checkpoint,
        args.out,
        steps=args.steps,
        eta=args.eta,
        grid=args.grid,
        eps=args.eps,
        set_alpha_to_one=args.set_alpha_to_one,
        dynamic_steps=args.dynamic_steps,
        verify=not args.no_verify,
    )
    print(report.summary())
    print(f"run it with: sdeflow run-onnx {report.path} --batch 16 --seed 0 --out samples.png")
    return 0
