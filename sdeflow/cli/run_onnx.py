"""``sdeflow run-onnx``: samples from an exported DDIM graph under onnxruntime (no PyTorch in the loop)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Draw samples from an ONNX graph written by `sdeflow export`, with onnxruntime (CUDA when available)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--batch", type=int, default=16, help="number of samples (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses numpy's generator seeded with (seed, i)")
    p.add_argument("--steps", type=int, default=None, help="step count (dynamic-steps graphs only)")
    p.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="samples.png", help="output .png (a grid or scatter plot) or .npy")


def run(args: argparse.Namespace) -> int:

    from .._utils import atomic_write
    from ..export.runtime import OnnxSampler

    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise ValueError(f"`--out` must end in .png or .npy; got {out.name!r}.")
    sampler = OnnxSampler(args.model, providers=args.providers)
    x0 = sampler.sample(args.batch, seed=args.seed, steps=args.steps)
    if out.suffix == ".npy":
        atomic_write(out, lambda p: _save_npy(p, x0))
    else:
        data = json.loads(sampler.info.properties.get("sdeflow.data", "{}"))
        atomic_write(out, lambda p: save_png(p, x0, data))
    print(
        f"{args.batch} samples {list(sampler.info.sample_shape)} from {args.model} on {sampler.device} "
        f"({sampler.info.steps} DDIM steps, eta={sampler.info.eta}) -> {out}"
    )
    return 0


def _save_npy(path: Path, x0) -> None:  # noqa: ANN001 - numpy array
    import numpy as np

    with path.open("wb") as f:  # a file object: np.save would append .npy to the temporary name
        np.save(f, x0)


def save_png(path: Path, x0, data: dict) -> None:  # noqa: ANN001 - numpy array
    """Images [B, C, H, W] (C = 1 or 3) as a grid, mapped back to [0, 1] with the data's scale and offset
    (default [-1, 1]); vectors [B, 2] as a scatter plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if x0.ndim == 4 and x0.shape[1] in (1, 3):
        scale, offset = float(data.get("scale", 2.0)), float(data.get("offset", -1.0))
        img = np.clip((x0 - offset) / scale, 0.0, 1.0)
        b, c, h, w = img.shape
        cols = int(np.ceil(np.sqrt(b)))
        rows = int(np.ceil(b / cols))
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
        for i in range(b):
            r, q = divmod(i, cols)
            grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img[i].transpose(
                1, 2, 0
            )
        plt.imsave(
            path, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1, format="png"
        )
    elif x0.ndim == 2 and x0.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x0[:, 0], x0[:, 1], s=4)
        ax.set_aspect("equal")
        fig.savefig(path, dpi=100, format="png")
        plt.close(fig)
    else:
        raise ValueError(f"No PNG view for samples of shape {list(x0.shape[1:])}; use --out samples.npy.")
