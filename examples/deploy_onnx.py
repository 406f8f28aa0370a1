"""Deploy a diffusion model with ONNX: export the DDIM sampler of a checkpoint to one .onnx file, then sample with
onnxruntime the way a torch-free deployment would.

    python examples/deploy_onnx.py --checkpoint runs/quickstart/model --out runs/deploy
    python examples/deploy_onnx.py              # no checkpoint: a small untrained MLP on 2-D data, for a dry run

Step 2 loads ``export/runtime.py`` by its file path, as a machine without torch does after copying that one
file next to model.onnx (it needs only numpy and onnxruntime).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np


def export_step(checkpoint: str | None, out: Path, steps: int, eta: float) -> Path:
    """1. Export (needs torch and sdeflow). Returns the .onnx path."""
    import torch

    from sdeflow import VPSDE, ScoreModel
    from sdeflow.export import export_ddim
    from sdeflow.models import MLP

    if checkpoint is not None:
        model, shape = checkpoint, None
    else:
        torch.manual_seed(0)
        model, shape = ScoreModel(MLP(2, width=64, depth=2), VPSDE(), prediction="eps"), (2,)
    report = export_ddim(model, out / "model.onnx", steps=steps, eta=eta, sample_shape=shape)
    print("export:", report.summary())
    return report.path


def load_runtime(path: Path):
    """The torch-free runner, loaded by file path (register it in sys.modules before executing it)."""
    spec = importlib.util.spec_from_file_location("ddim_runtime", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deploy_step(onnx_path: Path, runtime_py: Path, out: Path, batch: int, seed: int) -> None:
    """2. Run (numpy + onnxruntime only)."""
    runtime = load_runtime(runtime_py)
    sampler = runtime.OnnxSampler(onnx_path, providers="auto")  # CUDA when its provider loads, else CPU
    info = sampler.info
    print(
        f"graph: {info.sampler} {info.options}, {info.steps} steps, sample shape {info.sample_shape}, "
        f"grid {info.grid}, providers {sampler.providers}"
    )
    t0 = time.perf_counter()
    x0 = sampler.sample(batch, seed=seed)  # sample i is seeded by seed + i: the same in any batch and in PyTorch
    print(f"{batch} samples in {1e3 * (time.perf_counter() - t0):.1f} ms (first call includes session set-up)")
    x_T, noise = sampler.draw(batch, seed)  # or pass your own x_T (and noise [K, B, ...] when K > 0)
    assert np.array_equal(sampler.run(x_T, noise), x0)
    np.save(out / "samples.npy", x0)
    data = json.loads(info.properties.get("sdeflow.data", "{}"))  # the data's scale and offset, for the pixels
    (out / "samples.png").write_bytes(runtime.samples_png(x0, data))  # an image grid or 2-D points, numpy only
    print(f"wrote {out / 'samples.npy'} and {out / 'samples.png'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a small untrained MLP)")
    p.add_argument("--out", default="runs/deploy")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    onnx_path = export_step(args.checkpoint, out, args.steps, args.eta)
    runtime_py = Path(__file__).resolve().parent.parent / "export" / "runtime.py"
    deploy_step(onnx_path, runtime_py, out, args.batch, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
