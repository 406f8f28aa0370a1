"""onnxruntime against PyTorch for the same DDIM loop (S = 50 steps) with sdeflow's own networks.

    python benchmarks/bench_onnx.py                 # CPU: MLP and 8x8 UNet, batch 1 and 64
    python benchmarks/bench_onnx.py --cuda          # GPU machine: CUDA EP (I/O binding) vs eager vs CUDA graphs

Contenders, all from the same x_T, all producing the same x_0 (the relative error is printed):
    torch eager (sample)   sdeflow.sample(method='ddim'), what a PyTorch user runs
    torch eager (fused)    the exported loop itself run eagerly (UnrolledDDIM: x <- A x + B net(x) per step)
    torch.compile          torch.compile of the network inside the fused loop (where it compiles)
    ORT unrolled           the default export, CPU execution provider
    ORT scan               the dynamic-steps export (ONNX Scan, step count chosen at run time)
Times are medians over repeats, interleaved round-robin so that load from other processes hits all contenders
alike; ratios are against torch eager (sample). Networks are untrained (random weights, the output layer
perturbed away from zero): the speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sdeflow import VPSDE, ScoreModel
from sdeflow.export import OnnxSampler, export_ddim
from sdeflow.export.graph import UnrolledDDIM
from sdeflow.export.runtime import ddim_plan
from sdeflow.models import build_model, default_model_config
from sdeflow.sampling import sample

STEPS = 50


def _model(kind: str) -> tuple[ScoreModel, tuple[int, ...]]:
    shape = (2,) if kind == "mlp" else (1, 8, 8)
    torch.manual_seed(0)
    net = build_model(default_model_config(shape)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ScoreModel(net, VPSDE(), prediction="eps"), shape


def _timeit(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call for each function, run round-robin; stops early after ``budget_s``."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times[name]) >= 3:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def bench_cpu(kind: str, batches: tuple[int, ...], repeats: int, compile_: bool, threads: int | None,
              tmp: Path) -> list[dict]:
    model, shape = _model(kind)
    sde = model.sde
    t0 = time.perf_counter()
    rep = export_ddim(model, tmp / f"{kind}.onnx", steps=STEPS, sample_shape=shape, batch_sizes=(1, 7))
    export_s = time.perf_counter() - t0
    rep_scan = export_ddim(model, tmp / f"{kind}_scan.onnx", steps=STEPS, sample_shape=shape, dynamic_steps=True,
                           batch_sizes=(1, 7))
    ort_unrolled = OnnxSampler(rep.path, providers="cpu", threads=threads)
    ort_scan = OnnxSampler(rep_scan.path, providers="cpu", threads=threads)
    plan = ddim_plan(rep.config, STEPS)
    fused = UnrolledDDIM(model.net, plan, torch.float32, broadcast_label=False)
    compiled = None
    if compile_:
        try:
            cnet = torch.compile(model.net, dynamic=False)
            compiled = UnrolledDDIM(cnet, plan, torch.float32, broadcast_label=False)
        except Exception as err:  # noqa: BLE001
            print(f"  torch.compile unavailable: {err}")
    rows = []
    for b in batches:
        x_np, _ = ort_unrolled.draw(b, 0, STEPS)
        x = torch.from_numpy(x_np)

        def run_sample() -> torch.Tensor:
            return sample(model, sde, x, method="ddim", steps=STEPS).samples

        fns: dict[str, Callable[[], object]] = {
            "torch eager (sample)": run_sample,
            "torch eager (fused)": lambda: fused(x),
            "ORT unrolled": lambda: ort_unrolled.run(x_np),
            "ORT scan": lambda: ort_scan.run(x_np),
        }
        ref = run_sample().numpy()
        if compiled is not None:
            try:
                with torch.no_grad():
                    t_c = time.perf_counter()
                    compiled(x)
                    print(f"  torch.compile warm-up (B={b}): {time.perf_counter() - t_c:.1f} s")
                fns["torch.compile"] = lambda: compiled(x)
            except Exception as err:  # noqa: BLE001
                print(f"  torch.compile failed: {type(err).__name__}: {str(err)[:200]}")
        with torch.no_grad():
            med = _timeit(fns, repeats, budget_s=60.0)
            errs = {k: float(np.linalg.norm(np.asarray(fn(), np.float32) - ref) / np.linalg.norm(ref))
                    for k, fn in fns.items()}
        base = med["torch eager (sample)"]
        for name, sec in med.items():
            rows.append({"model": kind, "batch": b, "contender": name, "ms": 1e3 * sec, "speedup": base / sec,
                         "rel_err": errs[name]})
    params = sum(p.numel() for p in model.net.parameters())
    print(f"{kind}: {params} parameters; unrolled export {export_s:.1f} s ({rep.nodes} nodes), "
          f"scan export {rep_scan.export_seconds:.1f} s; parity {max(rep.parity.values()):.1e}")
    return rows


def bench_cuda(kind: str, batches: tuple[int, ...], repeats: int, tmp: Path) -> list[dict]:
    """CUDA EP with I/O binding vs PyTorch eager vs PyTorch with a captured CUDA graph (needs a GPU)."""
    model, shape = _model(kind)
    rep = export_ddim(model, tmp / f"{kind}.onnx", steps=STEPS, sample_shape=shape, batch_sizes=(1, 7))
    ort_cuda = OnnxSampler(rep.path, providers="cuda")
    if ort_cuda.device != "cuda":
        raise SystemExit(f"The CUDA execution provider did not load (providers: {ort_cuda.providers}).")
    plan = ddim_plan(rep.config, STEPS)
    net = model.net.cuda()
    fused = UnrolledDDIM(net, plan, torch.float32, broadcast_label=False)
    rows = []
    for b in batches:
        x_np, _ = ort_cuda.draw(b, 0, STEPS)
        x = torch.from_numpy(x_np).cuda()
        static_in = x.clone()
        with torch.no_grad():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    fused(static_in)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fused(static_in)

        def eager() -> np.ndarray:
            with torch.no_grad():
                return fused(x).cpu().numpy()

        def cuda_graph() -> np.ndarray:
            static_in.copy_(x)
            graph.replay()
            return static_out.cpu().numpy()

        fns = {"torch eager (fused, CUDA)": eager, "torch CUDA graph": cuda_graph,
               "ORT CUDA EP + I/O binding": lambda: ort_cuda.run(x_np)}
        med = _timeit(fns, repeats, budget_s=60.0)
        ref = eager()
        base = med["torch eager (fused, CUDA)"]
        for name, sec in med.items():
            err = float(np.linalg.norm(fns[name]() - ref) / np.linalg.norm(ref))
            rows.append({"model": kind, "batch": b, "contender": name, "ms": 1e3 * sec, "speedup": base / sec,
                         "rel_err": err})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,unet")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for ORT (default: all cores)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--cuda", action="store_true", help="benchmark the CUDA execution provider instead")
    args = p.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), DDIM S={STEPS}, batches {batches}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            if args.cuda:
                rows += bench_cuda(kind, batches, args.repeats, Path(tmp))
            else:
                rows += bench_cpu(kind, batches, args.repeats, not args.no_compile, args.threads, Path(tmp))
    print(f"\n| model | batch | contender | ms per DDIM run (S={STEPS}) | speed-up vs eager | rel. error |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['contender']} | {r['ms']:.2f} | {r['speedup']:.2f}x | "
              f"{r['rel_err']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
