"""The quickstart's export step: export the trained checkpoint, run it under onnxruntime, compare with PyTorch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..parametrization import DDPMTimesteps
from ..sampling import DDIM, make_grid
from .onnx_export import export_sampler
from .runtime import OnnxSampler
from .verify import SamplerSpec, relative_error

__all__ = ["quickstart_export"]


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quickstart_export(
    checkpoint_dir: str | Path, out_dir: str | Path, steps: int = 50, batch: int = 16, repeats: int = 3, seed: int = 0
) -> dict:
    """Export ``checkpoint_dir`` to ``out_dir/model.onnx`` (DDIM, ``steps`` steps, verified at batch sizes 1, 7
    and 64), then sample ``batch`` images with onnxruntime and with ``sdeflow.sample`` from the same x_T.

    Returns a JSON-ready dict: the file, the export checks, the relative error per batch size, and the median
    wall time of both, each on one thread, with their ratio ``speedup``.
    """
    from ..checkpoint import load

    ckpt = load(checkpoint_dir)
    grid = make_grid(None, DDIM(), isinstance(ckpt.score_model.time_label, DDPMTimesteps))  # sample()'s default
    report = export_sampler(ckpt, Path(out_dir) / "model.onnx", sampler=DDIM(), steps=steps, grid=grid, seed=seed)
    runner = OnnxSampler(report.path, threads=1)
    x_T, _ = runner.draw(batch, seed, steps)  # noqa: N806
    x_t = torch.from_numpy(x_T)
    spec = SamplerSpec(DDIM(), grid, 1e-3, None)

    def run_torch() -> torch.Tensor:
        return spec.reference(ckpt.score_model, steps, x_t, None)

    parity = relative_error(runner.run(x_T), run_torch().numpy())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread each: on a shared machine more threads spin against other jobs
    try:
        ort_s = _median_seconds(lambda: runner.run(x_T), repeats)
        torch_s = _median_seconds(run_torch, repeats)
    finally:
        torch.set_num_threads(threads)
    return {
        "onnx": str(report.path),
        "size_mb": round(report.size_bytes / 1e6, 2),
        "steps": steps,
        "grid": report.grid["type"],
        "verified": report.verified,
        "checker": report.checker_ok,
        "shape_inference": report.shape_inference_ok,
        "parity_rel_error": {**{str(b): e for b, e in report.parity.items()}, str(batch): parity},
        "export_seconds": round(report.export_seconds, 1),
        "providers": runner.providers,
        "batch": batch,
        "threads": 1,
        "onnxruntime_ms": round(1e3 * ort_s, 3),
        "pytorch_ms": round(1e3 * torch_s, 3),
        "speedup": round(torch_s / ort_s, 2),
    }
