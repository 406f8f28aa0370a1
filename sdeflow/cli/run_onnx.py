"""``sdeflow run-onnx``: samples from an exported sampler graph under onnxruntime (no PyTorch in the loop)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    from sdeflow.export.runtime import OnnxSampler

    from ..images import output_format, picture_extras, save_samples

    out = Path(args.out)
    output_format(out, name="--out")
    sampler = OnnxSampler(args.model, providers=args.providers)
    output_format(out, sampler.info.sample_shape, name="--out")
    labels = None
    if args.classes is not None:
        from ..conditioning import class_labels

        labels = class_labels(args.classes, args.batch, sampler.info.num_classes, "--class").numpy()
    elif args.guidance is not None:
        raise ValueError("--guidance needs --class (the classes to guide towards), e.g. --class 3 --guidance 2.")
    elif sampler.info.num_classes is not None:
        raise ValueError(f"{args.model} is a guided graph of {sampler.info.num_classes} classes: pass --class "
                         "(e.g. --class 3 --guidance 2).")
    if args.guidance is not None:
        from ..conditioning import check_guidance

        check_guidance(args.guidance, "--guidance")
    x0 = sampler.sample(args.batch, seed=args.seed, steps=args.steps, class_labels=labels,
                        guidance=args.guidance or 0.0)
    data = json.loads(sampler.info.properties.get("sdeflow.data", "{}")) or None
    save_samples(out, x0, scale=args.scale, **picture_extras(out, sampler.info.sample_shape, data_info=data))
    print(
        f"{args.batch} samples {list(sampler.info.sample_shape)} from {args.model} on {sampler.device} "
        f"({sampler.info.sampler} {sampler.info.options}, {args.steps or sampler.info.steps} steps"
        + ("" if labels is None else f", classes {sorted(set(labels.tolist()))}, guidance {args.guidance or 0.0:g}")
        + f") -> {out}"
    )
    return 0
