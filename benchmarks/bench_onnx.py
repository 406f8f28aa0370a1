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
from functools import partial
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


def _rel(a: object, ref: np.ndarray) -> float:
    return float(np.linalg.norm(_as_numpy(a).astype(np.float64) - ref) / np.linalg.norm(ref))


def _rows(kind: str, b: int, fns: dict[str, Callable[[], object]], base: str, repeats: int) -> list[dict]:
    with torch.no_grad():
        ref = np.asarray(_as_numpy(fns[base]()), np.float64)
        med = _timeit(fns, repeats, budget_s=45.0)
        errs = {k: _rel(fn(), ref) for k, fn in fns.items()}
    return [
        {"model": kind, "batch": b, "contender": k, "ms": 1e3 * v, "speedup": med[base] / v, "rel_err": errs[k]}
        for k, v in med.items()
    ]


def _as_numpy(a: object) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def bench_cpu(kind: str, batches: tuple[int, ...], repeats: int, compile_: bool, threads: int, tmp: Path) -> list[dict]:
    model, shape = _model(kind)
    rep = export_ddim(model, tmp / f"{kind}.onnx", steps=STEPS, sample_shape=shape, batch_sizes=(1, 7))
    scan = export_ddim(
        model, tmp / f"{kind}_scan.onnx", steps=STEPS, sample_shape=shape, dynamic_steps=True, batch_sizes=(1, 7)
    )
    params = sum(p.numel() for p in model.net.parameters())
    print(
        f"{kind}: {params} parameters; unrolled export {rep.export_seconds:.1f} s ({rep.nodes} nodes, parity "
        f"{max(rep.parity.values()):.1e}); scan export {scan.export_seconds:.1f} s ({scan.nodes} nodes)",
        flush=True,
    )
    ort_unrolled = OnnxSampler(rep.path, providers="cpu", threads=threads)
    ort_scan = OnnxSampler(scan.path, providers="cpu", threads=threads)
    plan = ddim_plan(rep.config, STEPS)
    fused = UnrolledDDIM(model.net, plan, torch.float32, broadcast_label=False)
    compiled = None
    if compile_:
        compiled = UnrolledDDIM(torch.compile(model.net, dynamic=False), plan, torch.float32, broadcast_label=False)
    rows: list[dict] = []
    for b in batches:
        x_np, _ = ort_unrolled.draw(b, 0, STEPS)
        x = torch.from_numpy(x_np)
        t0 = time.perf_counter()
        ort_unrolled.run(x_np)  # first use of this batch size builds its session
        ort_scan.run(x_np)
        print(f"  B={b}: ORT session start-up (unrolled + scan) {time.perf_counter() - t0:.1f} s", flush=True)
        fns: dict[str, Callable[[], object]] = {
            "torch eager (sdeflow.sample)": partial(sample, model, model.sde, x, method="ddim", steps=STEPS),
            "torch eager (fused loop)": partial(fused, x),
            "ORT unrolled": partial(ort_unrolled.run, x_np),
            "ORT scan (dynamic steps)": partial(ort_scan.run, x_np),
        }
        fns["torch eager (sdeflow.sample)"] = partial(_samples, fns["torch eager (sdeflow.sample)"])
        if compiled is not None:
            try:
                t0 = time.perf_counter()
                with torch.no_grad():
                    compiled(x)
                print(f"  B={b}: torch.compile warm-up {time.perf_counter() - t0:.1f} s", flush=True)
                fns["torch.compile (fused loop)"] = partial(compiled, x)
            except Exception as err:
                print(f"  torch.compile failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
        rows += _rows(kind, b, fns, "torch eager (sdeflow.sample)", repeats)
    return rows


def _samples(fn: Callable[[], object]) -> torch.Tensor:
    return fn().samples


def bench_cuda(kind: str, batches: tuple[int, ...], repeats: int, tmp: Path) -> list[dict]:
    """CUDA EP with I/O binding vs PyTorch eager vs PyTorch with a captured CUDA graph (needs a GPU)."""
    model, shape = _model(kind)
    rep = export_ddim(model, tmp / f"{kind}.onnx", steps=STEPS, sample_shape=shape, batch_sizes=(1, 7))
    ort_cuda = OnnxSampler(rep.path, providers="cuda")
    if ort_cuda.device != "cuda":
        raise SystemExit(f"The CUDA execution provider did not load (providers: {ort_cuda.providers}).")
    fused = UnrolledDDIM(model.net.cuda(), ddim_plan(rep.config, STEPS), torch.float32, broadcast_label=False)
    rows: list[dict] = []
    for b in batches:
        x_np, _ = ort_cuda.draw(b, 0, STEPS)
        x = torch.from_numpy(x_np).cuda()
        graph, static_in, static_out = _capture(fused, x)
        fns: dict[str, Callable[[], object]] = {
            "torch eager CUDA (fused loop)": partial(_sync, fused, x),
            "torch CUDA graph (fused loop)": partial(_replay, graph, static_in, static_out, x),
            "ORT CUDA EP + I/O binding": partial(ort_cuda.run, x_np),
        }
        rows += _rows(kind, b, fns, "torch eager CUDA (fused loop)", repeats)
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


def _sync(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return module(x).cpu().numpy()  # .cpu() synchronises, like the ORT call that returns host memory


def _replay(graph: object, static_in: torch.Tensor, static_out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    static_in.copy_(x)
    graph.replay()
    return static_out.cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,unet")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="threads for torch and ORT alike (default: 1)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--cuda", action="store_true", help="benchmark the CUDA execution provider instead")
    args = p.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), DDIM S={STEPS}, batches {batches}")
    print(f"\n| model | batch | contender | ms per DDIM run (S={STEPS}) | speed-up | rel. error |")
    print("|---|---:|---|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            if args.cuda:
                rows = bench_cuda(kind, batches, args.repeats, Path(tmp))
            else:
                rows = bench_cpu(kind, batches, args.repeats, not args.no_compile, args.threads, Path(tmp))
            for r in rows:
                print(
                    f"| {r['model']} | {r['batch']} | {r['contender']} | {r['ms']:.2f} | {r['speedup']:.2f}x | "
                    f"{r['rel_err']:.1e} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
