"""onnxruntime against PyTorch eager for sdeflow's samplers on the trained quickstart UNet (8x8 digits).

    python benchmarks/bench_onnx.py --checkpoint runs/quickstart/model           # CPU, one thread each
    python benchmarks/bench_onnx.py --checkpoint runs/quickstart/model --cuda    # GPU machine

(1) Wall time per sampler at S = 5..50: ``sdeflow.sample`` in PyTorch eager against the exported unrolled graph
    under onnxruntime, from the same x_T, interleaved round-robin so that load from other processes hits all
    contenders alike (medians).
(2) Time to quality: the endpoint error of each sampler against a dopri5 solution (rtol = atol = 1e-6) of the same
    probability-flow ODE on the trained network, from the same x_T (64 samples); the target is DDIM-50's error.
    For each candidate sampler the smallest S that reaches the target is found, the one with the fewest
    evaluations is exported, and its onnxruntime time is compared with PyTorch eager DDIM-50 at batch 1 and 64
    (``sdeflow.export.report.time_to_quality``, which ``sdeflow quickstart`` also reports, without tuning).
    ``--tune``: these candidates are also tried on grids from ``sdeflow.tune_grid`` (32 calibration x_T, separate
    from the 64 test x_T), for S from half their default-grid S upwards.
With ``--cuda``: the CUDA execution provider with I/O binding and with CUDA graphs against PyTorch eager and a
PyTorch CUDA graph of the same plan (``PlanModule``), for DDIM-50 and the best sampler of (2) at its S.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from sdeflow import DDPMTimesteps, load
from sdeflow.export import OnnxSampler, export_sampler
from sdeflow.export.report import CANDIDATES, time_to_quality
from sdeflow.export.verify import relative_error
from sdeflow.progress import Progress
from sdeflow.sampling import DDIM, make_sampler, sample


def _timeit(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call for each function, run round-robin (after one warm-up call each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and min(len(v) for v in times.values()) >= 3:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def _eager(model, x: torch.Tensor, sampler, steps: int) -> np.ndarray:
    with torch.no_grad():
        return sample(model, model.sde, x, sampler=sampler, steps=steps).samples.numpy()


def wall_times(model, shape, samplers: dict, steps: list[int], batches: list[int], repeats: int, tmp: Path) -> list:
    """(1): ms per run of each sampler at each S, eager vs onnxruntime, one thread each."""
    rows = []
    for label, smp in samplers.items():
        for s in steps:
            rep = export_sampler(model, tmp / "m.onnx", smp, steps=s, sample_shape=shape, batch_sizes=(1, 7), rtol=1e-4)
            runner = OnnxSampler(rep.path, providers="cpu", threads=1)
            for b in batches:
                x_np, _ = runner.draw(b, 0)
                x = torch.from_numpy(x_np)
                fns = {"eager": partial(_eager, model, x, smp, s), "ort": partial(runner.run, x_np)}
                med = _timeit(fns, repeats, budget_s=20.0)
                err = relative_error(runner.run(x_np), fns["eager"]())
                row = {
                    "sampler": label,
                    "steps": s,
                    "nfe": rep.nfe,
                    "batch": b,
                    "eager_ms": 1e3 * med["eager"],
                    "ort_ms": 1e3 * med["ort"],
                    "speedup": med["eager"] / med["ort"],
                    "rel_err": err,
                }
                rows.append(row)
                print(
                    f"| {label} | {s} | {rep.nfe} | {b} | {row['eager_ms']:.1f} | {row['ort_ms']:.2f} | "
                    f"{row['speedup']:.1f}x | {err:.0e} |",
                    flush=True,
                )
    return rows


def _draw(model, shape: tuple[int, ...], b: int) -> np.ndarray:
    """x_T of seeds 0..b-1 (the documented per-sample generator)."""
    from sdeflow.export.runtime import draw_inputs

    return draw_inputs(list(range(b)), shape, model.sde.prior_std, 0)[0]


def bench_cuda(model, shape, s_best: int, best, batches: list[int], repeats: int, tmp: Path) -> list:
    """CUDA EP (I/O binding; CUDA graphs) vs PyTorch eager and a PyTorch CUDA graph of the same plan."""
    from sdeflow.export.graph import PlanModule
    from sdeflow.sampling import compile_plan, make_grid, network_labels

    rows = []
    contenders = (("DDIM-50", DDIM(), 50), (f"best ({best})", CANDIDATES[best], s_best))
    paths = [
        export_sampler(model, tmp / f"cuda{i}.onnx", smp, steps=s, sample_shape=shape, batch_sizes=(1,)).path
        for i, (_, smp, s) in enumerate(contenders)
    ]
    model = model.cuda()
    discrete = isinstance(model.time_label, DDPMTimesteps)
    for (label, smp, s), path in zip(contenders, paths, strict=True):
        plain = OnnxSampler(path, providers="cuda")
        graphs = OnnxSampler(path, providers="cuda", cuda_graph=True)
        plan = compile_plan(model, model.sde, smp, make_grid(None, smp, discrete), s)
        labels = [
            (lab.float() if lab.is_floating_point() else lab).cuda()
            for lab in network_labels(model, plan.grid, [e.point for e in plan.evals])
        ]
        module = PlanModule(model.net, plan, labels, broadcast=False)
        for b in batches:
            x_np = _draw(model, shape, b)
            x = torch.from_numpy(x_np).cuda()
            graph, static_in, static_out = _capture(module, x)
            fns = {
                "torch eager CUDA": lambda x=x, module=module: module(x).cpu().numpy(),
                "torch CUDA graph": partial(_replay, graph, static_in, static_out, x),
                "ORT CUDA + I/O binding": partial(plain.run, x_np),
                "ORT CUDA graph": partial(graphs.run, x_np),
            }
            with torch.no_grad():
                med = _timeit(fns, repeats, budget_s=30.0)
            for k, v in med.items():
                rows.append(
                    {
                        "sampler": label,
                        "batch": b,
                        "contender": k,
                        "ms": 1e3 * v,
                        "speedup": med["torch eager CUDA"] / v,
                    }
                )
                print(f"| {label} | {b} | {k} | {1e3 * v:.2f} | {med['torch eager CUDA'] / v:.1f}x |", flush=True)
    return rows


def _capture(module: torch.nn.Module, x: torch.Tensor) -> tuple[object, torch.Tensor, torch.Tensor]:
    static_in = x.clone()
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                module(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(static_in)
    return graph, static_in, static_out


def _replay(graph: object, static_in: torch.Tensor, static_out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    static_in.copy_(x)
    graph.replay()
    return static_out.cpu().numpy()


def print_quality(event: Progress) -> None:
    """One line per ``time_to_quality`` progress event."""
    i, label = event.info, event.label
    if label == "dopri5 reference":
        text = f"dopri5 reference: {i['seconds']:.1f} s"
    elif label == "DDIM-50":
        text = f"target: DDIM-50 endpoint error {i['error']:.3e}"
    elif label.startswith("B="):
        text = (f"  {label}: PyTorch eager DDIM-50 {i['pytorch_ddim50_ms']:.1f} ms; onnxruntime unrolled "
                f"{i['onnxruntime_unrolled_ms']:.2f} ms, Scan {i['onnxruntime_scan_ms']:.2f} ms: {i['speedup']:.1f}x")
    elif "max_steps" in i:
        text = f"  {label}: not within S <= {i['max_steps']:.0f}"
    else:
        nfe = f" (NFE {i['nfe']:.0f})" if "nfe" in i else ""
        text = f"  {label}: S = {i['steps']:.0f}{nfe} reaches it, error {i['error']:.3e}"
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/model")
    p.add_argument("--samplers", default="ddim,dpmsolver++,unipc,deis,ipndm")
    p.add_argument("--steps", default="5,10,20,50")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-wall", action="store_true", help="only the time-to-quality part (2)")
    p.add_argument(
        "--tune",
        default="unipc (bh2, p=2);dpmsolver++ (2M);unipc (bh2, p=3)",
        help="candidates of (2) also tried on tuned grids (labels separated by ';'; '' for none)",
    )
    p.add_argument("--cuda", action="store_true", help="GPU: CUDA EP and CUDA graphs vs PyTorch eager / CUDA graphs")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = load(args.checkpoint)
    model, shape = ckpt.score_model, tuple(ckpt.sample_shape)
    if isinstance(model.time_label, DDPMTimesteps):
        raise SystemExit("time to quality compares with the PF-ODE ending at t = eps: use a continuous-time checkpoint")
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__} (1 thread), onnxruntime CPU (1 thread), checkpoint {args.checkpoint}")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_wall:
            print("\n| sampler | S | NFE | batch | PyTorch eager ms | onnxruntime ms | speed-up | rel. error |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
            samplers = {name: make_sampler(name) for name in args.samplers.split(",")}
            steps = [int(s) for s in args.steps.split(",")]
            results["wall"] = wall_times(model, shape, samplers, steps, batches, args.repeats, Path(tmp))
        print("\ntime to quality:", flush=True)
        results["quality"] = ttq = time_to_quality(
            model,
            shape,
            tmp,
            batches=tuple(batches),
            repeats=args.repeats,
            tune=tuple(t for t in args.tune.split(";") if t),
            progress=print_quality,
        )
        print(f"  best: {ttq['best']}, S = {ttq['best_steps']}", flush=True)
        if args.cuda:
            print("\n| sampler | batch | contender | ms | speed-up |\n|---|---:|---|---:|---:|", flush=True)
            results["cuda"] = bench_cuda(model, shape, ttq["best_steps"], ttq["best"], batches, args.repeats, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
