"""``sdeflow run-onnx``: samples from an exported sampler graph under onnxruntime (no PyTorch in the loop)."""

from __future__ import annotations

import argparse

HELP = "Draw samples from an ONNX graph written by `sdeflow export`, with onnxruntime (CUDA when available)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--batch", type=int, default=16, help="number of samples (default: 16)")
    p.add_argument(
        "--seed", type=int, default=0, help="sample i uses seed + i: the same x_T and noise as `sdeflow sample --seed`"
    )
    p.add_argument("--steps", type=int, default=None, help="step count (dynamic-steps graphs only)")
    p.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--out", default="samples.png",
        help="samples.png / .pdf / .svg (an image grid, or 2-D points beside the training data) or .npy / .npz",
    )
    p.add_argument("--scale", type=int, default=None, help="upscaling of image grids (default: long side >= 512 px)")
    p.add_argument("--class", dest="classes", default=None,
                   help="guided graphs: one class for every sample (3), one per sample, or a list whose length divides "
                   "--batch (0,1,...,9)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guided graphs: the guidance weight w (diffusers' guidance_scale = 1 + w; default 0)")


def run(args: argparse.Namespace) -> int:
    from sdeflow.export import onnx_samples_to_file

    res = onnx_samples_to_file(
        args.model, args.out, args.batch, seed=args.seed, steps=args.steps, providers=args.providers,
        classes=args.classes, guidance=args.guidance, scale=args.scale,
        names={"out": "--out", "classes": "--class", "guidance": "--guidance"},
    )
    print(res.summary(args.model))
    return 0
