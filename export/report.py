"""A deployment report for a checkpoint: export it, run it under onnxruntime, compare with PyTorch (parity and
speed); and the time to quality of the exported samplers (``time_to_quality``). The quickstart and
benchmarks/bench_onnx.py use both."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdeflow.parametrization import DDPMTimesteps, ScoreModel
from sdeflow.progress import Progress
from sdeflow.sampling import (
    DDIM,
    DEIS,
    IPNDM,
    DPMSolverPP,
    GridSampler,
    ODESolver,
    Sampler,
    Times,
    UniPC,
    calibration_reference,
    compile_plan,
    make_grid,
    sample,
    save_grid,
    tune_grid,
)

from .onnx_export import export_sampler
from .runtime import OnnxSampler, draw_inputs
from .verify import SamplerSpec, relative_error

__all__ = ["deployment_report", "time_to_quality", "CANDIDATES"]

# the exported samplers that compete for DDIM-50's quality in the fewest steps (each on its default grid)
CANDIDATES: dict[str, GridSampler] = {
    "dpmsolver++ (2M)": DPMSolverPP(order=2),
    "dpmsolver++ (3M)": DPMSolverPP(order=3),
    "unipc (bh2, p=2)": UniPC(order=2),
    "unipc (bh2, p=3)": UniPC(order=3),
    "deis (p=3)": DEIS(order=3),
    "ipndm (p=4)": IPNDM(order=4),
}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def deployment_report(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    steps: int = 50,
    batch: int = 16,
    repeats: int = 3,
    seed: int = 0,
    quality: bool = True,
) -> dict:
    """Export ``checkpoint_dir`` to ``out_dir/model.onnx`` (DDIM, ``steps`` steps, verified at batch sizes 1, 7
    and 64), then sample ``batch`` images with onnxruntime and with ``sdeflow.sample`` from the same x_T.

    Returns a JSON-ready dict: the file, the export checks, the relative error per batch size, and the median
    wall time of both, each on one thread, with their ratio ``speedup``; with ``quality`` (continuous-time models)
    also ``time_to_quality``: the best of three exported multistep samplers (default grids) against PyTorch eager
    DDIM-50 at batch 1 and 64.
    """
    from sdeflow.checkpoint import load

    ckpt = load(checkpoint_dir)
    grid = make_grid(None, DDIM(), isinstance(ckpt.score_model.time_label, DDPMTimesteps))  # sample()'s default
    report = export_sampler(ckpt, Path(out_dir) / "model.onnx", sampler=DDIM(), steps=steps, grid=grid, seed=seed)
    runner = OnnxSampler(report.path, threads=1)
    x_T, _ = runner.draw(batch, seed, steps)
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
    result = {
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
    if quality and not isinstance(ckpt.score_model.time_label, DDPMTimesteps):
        try:
            fast = {k: CANDIDATES[k] for k in ("dpmsolver++ (2M)", "unipc (bh2, p=2)", "unipc (bh2, p=3)")}
            result["time_to_quality"] = time_to_quality(
                ckpt.score_model, tuple(ckpt.sample_shape), out_dir, candidates=fast, seed=seed
            )
        except ValueError as err:  # no candidate reached DDIM-50 within max_steps: say so in the report
            result["time_to_quality"] = {"not_reached": str(err)}
    return result


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run round-robin after one warm-up call each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def time_to_quality(
    model: ScoreModel,
    sample_shape: tuple[int, ...],
    out_dir: str | Path,
    *,
    batches: tuple[int, ...] = (1, 64),
    n: int = 64,
    candidates: dict[str, GridSampler] | None = None,
    max_steps: int = 25,
    repeats: int = 5,
    seed: int = 0,
    tune: tuple[str, ...] = (),
    progress: Callable[[Progress], None] | None = None,
) -> dict:
    """How much faster the best exported sampler reaches DDIM-50's quality than PyTorch eager DDIM-50.

    Quality is the endpoint error ||x - x_ref|| / ||x_ref|| over ``n`` samples from the same x_T (seeds seed + i),
    x_ref the probability-flow ODE solved by dopri5 (rtol = atol = 1e-6) on the same network and to the same end
    time t = eps. The target is DDIM-50's error; each candidate's smallest S <= ``max_steps`` that reaches it is
    found in PyTorch, the candidate with the fewest evaluations is exported (unrolled and as a Scan) and timed under
    onnxruntime against ``sdeflow.sample`` DDIM-50 in eager PyTorch at each batch size, one thread each,
    interleaved; ``speedup`` uses the faster graph form. The candidates named in ``tune`` are also tried on grids
    tuned by ``sdeflow.tune_grid`` (32 calibration samples, seeds seed + 1000 + i; the error is on the ``n`` test
    samples), for S below their smallest S on the default grid; a tuned grid is saved as JSON next to the graph,
    which records it as its ``source``.
    Continuous-time networks only (DDPM-timestep networks end at abar = 1, not on the ODE's t = eps).

    ``progress`` gets ``Progress('time to quality', done, total, info, label=...)`` with total = candidates + tuned
    candidates + batch sizes: first (done 0) label 'dopri5 reference', info seconds, and label 'DDIM-50', info error
    (the target); then each candidate searched (label the candidate, info steps, nfe and error when it reached the
    target, max_steps when it did not); each tuned candidate (label '<candidate>, tuned grid', the same info: the
    steps of the tuned grid and its NFE); each batch size timed (label 'B=<batch>', info pytorch_ddim50_ms,
    onnxruntime_unrolled_ms, onnxruntime_scan_ms and speedup).
    """
    if isinstance(model.time_label, DDPMTimesteps):
        raise ValueError("time_to_quality compares with the PF-ODE ending at t = eps; the model uses DDPM timesteps.")
    candidates = CANDIDATES if candidates is None else candidates
    unknown = [k for k in tune if k not in candidates]
    if unknown:
        raise ValueError(f"`tune` must name candidates (one of {sorted(candidates)}); got {unknown}.")
    total, done = len(candidates) + len(tune) + len(batches), 0

    def say(label: str, **info: float) -> None:
        if progress is not None:
            progress(Progress("time to quality", done, total, info, label=label))

    x = torch.from_numpy(draw_inputs([seed + i for i in range(n)], sample_shape, model.sde.prior_std, 0)[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def run(smp: Sampler, steps: int = 50, xb: torch.Tensor = x, grid: Times | None = None) -> torch.Tensor:
            with torch.no_grad():
                return sample(model, model.sde, xb, sampler=smp, steps=steps, grid=grid).samples

        t0 = time.perf_counter()
        ref = run(ODESolver("dopri5", rtol=1e-6, atol=1e-6)).numpy()
        say("dopri5 reference", seconds=time.perf_counter() - t0)
        target = relative_error(run(DDIM()).numpy(), ref)
        say("DDIM-50", error=target)
        reached: dict[str, dict] = {}
        for label, smp in candidates.items():
            done += 1
            for s in range(2, max_steps + 1):
                err = relative_error(run(smp, s).numpy(), ref)
                if err <= target:
                    nfe = compile_plan(model, model.sde, smp, make_grid(None, smp, False), s).nfe
                    reached[label] = {"steps": s, "nfe": nfe, "error": err}
                    say(label, steps=s, nfe=nfe, error=err)
                    break
            else:
                say(label, max_steps=max_steps)
        calib = None
        if tune:  # sdeflow.tune_grid (GITS dynamic programming + compass search) on separate calibration x_T
            x_cal = torch.from_numpy(
                draw_inputs([seed + 1000 + i for i in range(32)], sample_shape, model.sde.prior_std, 0)[0]
            )
            calib = calibration_reference(model, model.sde, x_cal)
        for label in tune:
            done += 1
            smp = candidates[label]
            upto = reached.get(label, {"steps": max_steps + 1})["steps"]
            for s in range(max(2, upto // 2), upto):
                assert calib is not None  # computed above whenever tune is non-empty
                tuned = tune_grid(model, model.sde, smp, s, reference=calib, max_evals=150)
                err = relative_error(run(smp, tuned.steps, grid=tuned.grid).numpy(), ref)
                if err <= target:
                    name = f"tuned_{list(candidates).index(label)}_{smp.name}_{s}.json"  # one file per candidate
                    path = save_grid(Path(out_dir) / name, tuned.grid, tuned.info())
                    reached[f"{label}, tuned grid"] = {"steps": tuned.steps, "nfe": s, "error": err, "grid": str(path)}
                    say(f"{label}, tuned grid", steps=tuned.steps, nfe=s, error=err)
                    break
            else:
                say(f"{label}, tuned grid", max_steps=upto - 1)
        if not reached:
            raise ValueError(f"no candidate reached DDIM-50's error {target:.3e} within {max_steps} steps")
        best = min(reached, key=lambda k: (reached[k]["nfe"], "tuned" not in k))
        smp, steps = candidates[best.split(", tuned")[0]], reached[best]["steps"]
        # rtol 1e-4: a few-step high-order sampler can amplify float32 rounding past 1e-5 (ExportReport.parity)
        args: dict[str, Any] = dict(
            steps=steps, sample_shape=sample_shape, rtol=1e-4, batch_sizes=(1, 7), grid=reached[best].get("grid")
        )
        report = export_sampler(model, Path(out_dir) / "best.onnx", smp, **args)
        scan = export_sampler(model, Path(out_dir) / "best_scan.onnx", smp, dynamic_steps=(steps,), **args)
        runners = {
            f: OnnxSampler(r.path, providers="cpu", threads=1) for f, r in (("unrolled", report), ("scan", scan))
        }
        out = {
            "target_ddim50_error": target,
            "reached": reached,
            "best": best,
            "best_steps": steps,
            "best_onnx": str(report.path),
            "best_grid": report.grid,
            "best_onnx_error": relative_error(runners["unrolled"].run(x.numpy()), ref),
            "best_parity": {str(b): e for b, e in report.parity.items()},
            "batches": {},
        }
        for b in batches:
            done += 1
            xb = x[:b].contiguous()
            fns: dict[str, Callable[[], object]] = {"torch": lambda xb=xb: run(DDIM(), 50, xb)}
            fns.update({f: (lambda xb=xb, r=r: r.run(xb.numpy())) for f, r in runners.items()})
            med = _interleaved(fns, repeats)
            form = min(runners, key=lambda f: med[f])  # the faster graph form at this batch size
            out["batches"][str(b)] = {
                "pytorch_ddim50_ms": round(1e3 * med["torch"], 3),
                "onnxruntime_unrolled_ms": round(1e3 * med["unrolled"], 3),
                "onnxruntime_scan_ms": round(1e3 * med["scan"], 3),
                "form": form,
                "speedup": round(med["torch"] / med[form], 2),
            }
            say(f"B={b}", **{k: v for k, v in out["batches"][str(b)].items() if k != "form"})
    finally:
        torch.set_num_threads(threads)
    return out
