"""``export_sampler``: one ONNX file that turns x_T (and, for stochastic samplers, the step noise) into x_0 with any
fixed-grid sampler of sdeflow; ``export_ddim`` is its DDIM shortcut.

The sampler is compiled to its float64 coefficient plan (``sdeflow.sampling.compile_plan``, what ``sdeflow.sample``
runs). One network call net(x, label) is traced with ``torch.onnx.export(..., dynamo=False)`` and the plan is
written out around renamed copies of it (``onnx_graphs.unrolled_graph``), or wrapped in an ONNX Scan whose step
count is chosen at run time (``dynamic_steps``). The file is written to a temporary name, checked (``onnx.checker``
and strict shape inference), run under onnxruntime against ``sdeflow.sample`` on the same x_T and noise at several
batch sizes, and only then moved to ``path``: a failed export leaves an existing file untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from sdeflow.parametrization import DDPMTimesteps, ScoreModel
from sdeflow.sampling import DDIM, GridSampler, Times, Timesteps, compile_plan, load_grid, network_labels
from sdeflow.sampling.names import make_grid, make_sampler
from sdeflow.sampling.plan import Plan

from .graph import GuidedCall, NetCall, PlanModule, ScanStep
from .onnx_graphs import ScanTables, has_subgraphs, scan_graph, scan_tables, unrolled_graph
from .runtime import FORMAT, OnnxSampler
from .trace import OnnxExportError, broadcasts_label, check_model, frozen, trace
from .verify import SamplerSpec, float32_floor, parity

__all__ = ["export_sampler", "export_ddim", "ExportReport", "OnnxExportError", "DEFAULT_DYNAMIC_STEPS"]

DEFAULT_DYNAMIC_STEPS = (5, 10, 20, 50)  # dynamic_steps=True: these and the exported `steps`


@dataclass(frozen=True)
class ExportReport:
    """What ``export_sampler`` wrote and how it was verified.

    ``parity`` maps batch size -> relative error ||x0_onnx - x0_torch|| / ||x0_torch|| against ``reference`` at
    the exported ``steps``; ``parity_steps`` maps each other step count of a dynamic-steps graph to its error at
    the first batch size. ``tracer_warnings`` are 'file:line: message' of the tracer warnings that were let
    through (shape assertions: parity decides).
    """

    path: Path
    sampler: str
    options: dict
    grid: dict
    steps: int
    nfe: int
    noise_draws: int
    dynamic_steps: tuple[int, ...]
    sample_shape: tuple[int, ...]
    nodes: int
    size_bytes: int
    checker_ok: bool
    shape_inference_ok: bool
    parity: dict[int, float]
    parity_steps: dict[int, float]
    rtol: float
    reference: str
    export_seconds: float
    tracer_warnings: tuple[str, ...] = field(default=())

    @property
    def parity_ok(self) -> bool:
        errs = [*self.parity.values(), *self.parity_steps.values()]
        return bool(errs) and all(np.isfinite(e) and e <= self.rtol for e in errs)

    @property
    def verified(self) -> bool:
        return self.checker_ok and self.shape_inference_ok and self.parity_ok

    def summary(self) -> str:
        errs = ", ".join(f"B={b}: {e:.1e}" for b, e in self.parity.items()) or "not run"
        errs += "".join(f", S={s}: {e:.1e}" for s, e in self.parity_steps.items())
        form = f"dynamic steps {list(self.dynamic_steps)}" if self.dynamic_steps else f"{self.steps} steps"
        return (
            f"{self.path} ({self.size_bytes / 1e6:.2f} MB, {self.nodes} nodes, {self.sampler} {self.options}, "
            f"{form}, NFE {self.nfe}, K {self.noise_draws}): checker {'ok' if self.checker_ok else 'FAILED'}, "
            f"shape inference {'ok' if self.shape_inference_ok else 'FAILED'}, onnxruntime vs {self.reference}: "
            f"{errs} (tolerance {self.rtol:g})"
        )


def _resolve(model: Any, sample_shape: Sequence[int] | None) -> tuple[ScoreModel, tuple[int, ...], dict | None]:
    """(score model, sample shape, data info) from a ScoreModel, a Checkpoint or a checkpoint folder."""
    data_info = None
    if isinstance(model, (str, Path)):
        from sdeflow.checkpoint import load

        model = load(model)
    if hasattr(model, "score_model") and hasattr(model, "sample_shape"):  # an sdeflow Checkpoint
        data_info = dict(getattr(model, "data_info", None) or {}) or None
        sample_shape = tuple(model.sample_shape) if sample_shape is None else sample_shape
        model = model.score_model
    if not isinstance(model, ScoreModel):
        raise TypeError(
            "`model_or_checkpoint` must be an sdeflow ScoreModel, a Checkpoint (sdeflow.load) or a checkpoint folder; "
            f"got {type(model).__name__}. Wrap a network as ScoreModel(net, sde, prediction=..., time_label=...)."
        )
    if sample_shape is None:
        raise ValueError("`sample_shape` is required with a ScoreModel, e.g. sample_shape=(2,) or (1, 8, 8).")
    shape = tuple(int(d) for d in sample_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"`sample_shape` must be a non-empty tuple of positive ints; got {sample_shape!r}.")
    return model, shape, data_info


def _as_grid(grid: Any, smp: GridSampler, discrete: bool) -> Any:
    if isinstance(grid, Path) or (isinstance(grid, str) and grid.endswith(".json")):
        return load_grid(grid)
    return make_grid(grid, smp, discrete)


def _step_counts(dynamic_steps: Any, steps: int, grid: Any) -> tuple[int, ...]:
    """The declared step counts of a dynamic-steps graph (() for the unrolled form)."""
    if dynamic_steps is None or dynamic_steps is False:
        return ()
    explicit = isinstance(grid, (Times, Timesteps))
    if dynamic_steps is True:
        counts = {steps} if explicit else {steps, *DEFAULT_DYNAMIC_STEPS}
    else:
        if isinstance(dynamic_steps, (str, bytes)) or not isinstance(dynamic_steps, (Sequence, range)):
            raise TypeError(
                f"`dynamic_steps` must be None, True or a sequence of step counts (e.g. (5, 10, 20, 50) or "
                f"range(5, 51)); got {dynamic_steps!r}."
            )
        counts = set()
        for s in dynamic_steps:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise ValueError(f"`dynamic_steps` must hold integers >= 1; got {s!r} in {list(dynamic_steps)}.")
            counts.add(int(s))
        counts.add(steps)
    if explicit and counts != {steps}:
        raise ValueError(
            f"The explicit grid {type(grid).__name__} fixes the step count ({steps}); `dynamic_steps` "
            f"{sorted(counts)} would need other grids. Use a grid family (e.g. 'logsnr') or dynamic_steps=None."
        )
    return tuple(sorted(counts))


def export_sampler(
    model_or_checkpoint: Any,
    path: str | Path,
    sampler: GridSampler | str = "ddim",
    steps: int = 50,
    grid: Any = None,
    *,
    sample_shape: Sequence[int] | None = None,
    eps: float = 1e-3,
    set_alpha_to_one: bool | None = None,
    dynamic_steps: bool | Sequence[int] | None = None,
    fold_time_embedding: bool = True,
    verify: bool = True,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    rtol: float = 1e-5,
    strict: bool = True,
    seed: int = 0,
    guided: bool = False,
    **options: Any,
) -> ExportReport:
    """Export a fixed-grid sampler of a score network to one ONNX graph at ``path``, and verify it.

    The sampler is the one of ``sdeflow.sample(model, sde, sampler=sampler, steps=S, grid=grid, eps=eps,
    set_alpha_to_one=...)`` with the same defaults (grid 'leading' for networks labelled with ``DDPMTimesteps``,
    else ``sdeflow.sampling.DEFAULT_GRIDS[name]``). Graph contract (README, "Deployment"): input ``x_T`` float32
    [B, *sample_shape]; for samplers that draw K > 0 normals (``plan.noise_draws``, in the metadata) also ``noise``
    float32 [K, B, *sample_shape] (the k-th draw, in the order ``sdeflow.sample`` consumes them); output ``x_0``.

    Args:
        model_or_checkpoint: a ``ScoreModel``, an sdeflow ``Checkpoint`` or a checkpoint folder.
        path: the ``.onnx`` file; replaced atomically only once the new graph is verified.
        sampler: a sampler object (``UniPC(order=3)``) or its name with ``options`` (``'unipc', order=3``). PC (a
            nonlinear Langevin corrector) and the torchdiffeq / torchsde solvers cannot be exported.
        steps: the grid's step count S (explicit grids carry their own).
        grid: a grid object, name, explicit times, or a tuned grid file (.json, ``sdeflow.sampling.load_grid``).
        sample_shape: the shape of one sample (taken from a checkpoint when omitted).
        dynamic_steps: None (unrolled graph), or the step counts a Scan graph offers at run time (True:
            ``DEFAULT_DYNAMIC_STEPS`` and ``steps``); their labels and coefficient rows are stored in the metadata
            and ``OnnxSampler.run(..., steps=)`` picks them.
        fold_time_embedding: give the network its label with shape [1] when it broadcasts it (checked on a
            probe batch), so the time pathway of every evaluation is constant and folds away.
        verify, batch_sizes, rtol, strict: run onnxruntime against ``sdeflow.sample`` at these batch sizes; with
            ``strict`` a relative error above ``rtol`` or a failed check raises ``OnnxExportError`` and leaves
            ``path`` as it was.
        guided: a class-conditional model (``num_classes`` = K) exported with classifier-free guidance: the graph
            takes ``class_labels`` int64 [B] (0..K-1; K = no label) and ``guidance`` float32 [] (w, docs/math.md
            section 10: out = out_c + w (out_c - out_u), diffusers' guidance_scale = 1 + w) next to x_T, so one
            file serves every w; each evaluation is one network call on 2B rows. Unrolled graphs only. Parity is
            checked at w = 0 and w = 2 against ``sdeflow.sample(..., cond=, guidance=)``.

    Returns:
        ExportReport: checker, shape inference, relative error per batch size, sizes and timings.
    """
    t0 = time.perf_counter()
    score_model, shape, data_info = _resolve(model_or_checkpoint, sample_shape)
    smp = make_sampler(sampler, **options)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"`rtol` must be a number in (0, 1); got {rtol!r}. Use e.g. rtol=1e-5.")
    if verify and (
        not batch_sizes
        or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in batch_sizes)
    ):
        raise ValueError(f"`batch_sizes` must be a non-empty tuple of integers >= 1; got {batch_sizes!r}.")
    if not isinstance(smp, GridSampler):
        raise ValueError(
            f"`sampler` {smp.name!r} is a torchdiffeq / torchsde solver: its steps are chosen by the solver and "
            "cannot be unrolled into a graph. Export a fixed-grid sampler (ddim, ddpm, dpmsolver++, "
            "sde-dpmsolver++, unipc, ipndm, deis, heun)."
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; got {steps!r}. Use e.g. steps=50.")
    discrete = isinstance(score_model.time_label, DDPMTimesteps)
    gobj = _as_grid(grid, smp, discrete)
    plan = compile_plan(score_model, score_model.sde, smp, gobj, int(steps), eps=eps, set_alpha_to_one=set_alpha_to_one)
    if not plan.linear:
        raise ValueError(
            f"`sampler` {smp.name!r} has a Langevin corrector whose step size depends on norms of the sample: it "
            "is not a linear plan and cannot be exported. Export e.g. 'ddpm' or 'sde-dpmsolver++' instead."
        )
    steps = plan.steps
    if not isinstance(guided, bool):
        raise TypeError(f"`guided` must be True or False; got {guided!r}.")
    if guided and score_model.num_classes is None:
        raise ValueError("`guided=True` needs a class-conditional model (num_classes set; train with --conditional); "
                         "this one is unconditional.")
    if guided and dynamic_steps not in (None, False):
        raise ValueError("`guided=True` exports the unrolled form only; pass dynamic_steps=None.")
    counts = _step_counts(dynamic_steps, steps, gobj)
    spec = SamplerSpec(smp, gobj, float(eps), set_alpha_to_one)
    tables = _tables(score_model, spec, counts) if counts else None

    proto, tracer = _build(score_model.net, plan, score_model, shape, tables, fold_time_embedding, seed, guided)
    _set_metadata(proto, score_model, smp, gobj, plan, shape, eps, set_alpha_to_one, tables, data_info, guided)
    checker_ok, shapes_ok = check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.write_bytes(proto.SerializeToString())
        errors: dict[int, float] = {}
        errors_steps: dict[int, float] = {}
        if verify:
            runner = OnnxSampler(tmp, providers="cpu", threads=1)
            errors = parity(score_model, runner, spec, steps, tuple(batch_sizes), seed)
            if guided:  # the worst of w = 0 (parity above) and w = 2, per batch size
                at2 = parity(score_model, runner, spec, steps, tuple(batch_sizes), seed, guidance=2.0)
                errors = {b: max(errors[b], at2[b]) for b in errors}
            for s in counts:
                if s != steps:
                    errors_steps[s] = parity(score_model, runner, spec, s, tuple(batch_sizes[:1]), seed)[
                        int(batch_sizes[0])
                    ]
        report = ExportReport(
            path=path,
            sampler=smp.name,
            options=smp.config(),
            grid=gobj.config(),
            steps=steps,
            nfe=plan.nfe,
            noise_draws=plan.noise_draws,
            dynamic_steps=counts,
            sample_shape=shape,
            nodes=_count_nodes(proto.graph),
            size_bytes=tmp.stat().st_size,
            checker_ok=checker_ok,
            shape_inference_ok=shapes_ok,
            parity=errors,
            parity_steps=errors_steps,
            rtol=rtol,
            reference=spec.describe() if verify else "not run",
            export_seconds=time.perf_counter() - t0,
            tracer_warnings=tuple(dict.fromkeys(tracer)),
        )
        if strict and not (report.verified if verify else checker_ok and shapes_ok):
            hint = f" Tracer warnings: {'; '.join(report.tracer_warnings)}." if report.tracer_warnings else ""
            if verify and checker_ok and shapes_ok and all(np.isfinite(e) for e in errors.values()):
                bound_runner = runner  # pyright: ignore[reportPossiblyUnboundVariable]  (bound whenever verify)
                floor = float32_floor(score_model, bound_runner, spec, steps, int(batch_sizes[0]), seed)
                if np.isfinite(floor):
                    hint += (
                        f" For scale: sdeflow.sample itself differs from its own float64 run by {floor:.1e} here "
                        "(how much this sampler and grid amplify float32 rounding); if that is near the errors above, "
                        "the graph is right and `rtol` too tight for this sampler and grid: pass a larger rtol."
                    )
            kept = "the previous file there is untouched" if path.exists() else "nothing was written"
            raise OnnxExportError(f"The exported graph failed verification ({kept}): {report.summary()}.{hint}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def export_ddim(
    model_or_checkpoint: Any, path: str | Path, steps: int = 50, eta: float = 0.0, **kwargs: Any
) -> ExportReport:
    """``export_sampler(model_or_checkpoint, path, sampler=DDIM(eta=eta), steps=steps, **kwargs)``."""
    return export_sampler(model_or_checkpoint, path, sampler=DDIM(eta=eta), steps=steps, **kwargs)


@dataclass(frozen=True)
class _Tables:
    """Per step count: labels [NFE], coefficient rows [NFE, 2, 2W + 2], noise index [NFE], K; shared window W."""

    window: int
    labels: dict[int, np.ndarray]
    rows: dict[int, ScanTables]
    stochastic: bool


def _labels(model: ScoreModel, plan: Plan) -> np.ndarray:
    labs = network_labels(model, plan.grid, [e.point for e in plan.evals])
    arr = torch.stack(labs).numpy()
    return arr.astype(np.int64) if not np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float32)


def _tables(model: ScoreModel, spec: SamplerSpec, counts: tuple[int, ...]) -> _Tables:
    plans = {
        s: compile_plan(
            model, model.sde, spec.sampler, spec.grid, s, eps=spec.eps, set_alpha_to_one=spec.set_alpha_to_one
        )
        for s in counts
    }
    try:
        window = max(scan_tables(p).window for p in plans.values())
        rows = {s: scan_tables(p, window) for s, p in plans.items()}
    except ValueError as err:
        raise ValueError(f"`dynamic_steps`: {err} Export the unrolled form (dynamic_steps=None).") from None
    labels = {s: _labels(model, p) for s, p in plans.items()}
    return _Tables(window, labels, rows, any(r.noise_draws > 0 for r in rows.values()))


def _build(
    net: Any,
    plan: Plan,
    model: ScoreModel,
    shape: tuple[int, ...],
    tables: _Tables | None,
    fold: bool,
    seed: int,
    guided: bool = False,
) -> tuple[onnx.ModelProto, list[str]]:
    """Trace one network call (or the Scan body) and assemble the graph."""
    labels = _labels(model, plan)
    label0 = torch.from_numpy(labels[:1]).reshape(())
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))
    if model.num_classes is not None and not guided:  # a conditional network exported unconditionally: null class
        net = model.conditioned(model.num_classes).net
    if guided:
        k = model.num_classes
        assert k is not None  # guided export is refused for unconditional models before this point
        args = (x, label0, torch.tensor([0, k - 1], dtype=torch.int64), torch.tensor(2.0))
        with frozen(net):
            call, tracer = trace(
                GuidedCall(net, k), args, ["x", "label", "class_labels", "guidance"], ["out"],
                {"x": {0: "B"}, "class_labels": {0: "B"}, "out": {0: "B"}},
            )
        if has_subgraphs(call.graph):
            raise OnnxExportError("The network holds control-flow subgraphs; guided export needs the unrolled form, "
                                  "which copies one traced call. Export it unguided.")
        return unrolled_graph(call, plan, labels, shape, guided=True), tracer
    with frozen(net):
        try:
            with torch.no_grad():
                out = net(x, label0.reshape(1).expand(2))
        except Exception as err:
            raise OnnxExportError(
                f"The network failed on a probe batch x {tuple(x.shape)} with labels of dtype {label0.dtype}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"The network must return a tensor of the input's shape {tuple(x.shape)}; got {got}.")
        broadcast = fold and broadcasts_label(net, shape, label0)
        if tables is not None:
            w = tables.window
            hist = torch.zeros((w, *x.shape))
            coef = torch.zeros((2, 2 * w + 2))
            args = (x, x, hist, hist, label0, coef) + ((x,) if tables.stochastic else ())
            names = ["x", "s", "outs", "ins", "label", "coef"] + (["z"] if tables.stochastic else [])
            outs = ["x_next", "s_next", "outs_next", "ins_next"]
            dims = {n: {0: "B"} for n in ("x", "s", "z", "x_next", "s_next")}
            dims.update({n: {1: "B"} for n in ("outs", "ins", "outs_next", "ins_next")})
            step, tracer = trace(ScanStep(net, broadcast, w, tables.stochastic), args, names, outs, dims)
            elem = onnx.TensorProto.INT64 if labels.dtype == np.int64 else onnx.TensorProto.FLOAT
            return scan_graph(step, shape, elem, tables.stochastic, w), tracer
        call, tracer = trace(
            NetCall(net, broadcast), (x, label0), ["x", "label"], ["out"], {"x": {0: "B"}, "out": {0: "B"}}
        )
        if not has_subgraphs(call.graph):
            return unrolled_graph(call, plan, labels, shape), tracer
        # control flow inside the network: trace the whole plan (run_plan) instead of copying one call
        module = PlanModule(
            net, plan, [torch.from_numpy(labels[i : i + 1]).reshape(()) for i in range(plan.nfe)], broadcast
        )
        k = plan.noise_draws
        args = (x, torch.randn((k, 2, *shape))) if k else (x,)
        names = ["x_T"] + (["noise"] if k else [])
        return trace(module, args, names, ["x_0"], {"x_T": {0: "B"}, "x_0": {0: "B"}, "noise": {1: "B"}})


def _set_metadata(
    proto: onnx.ModelProto,
    model: ScoreModel,
    smp: GridSampler,
    gobj: Any,
    plan: Plan,
    shape: tuple[int, ...],
    eps: float,
    set_alpha_to_one: bool | None,
    tables: _Tables | None,
    data_info: dict | None,
    guided: bool = False,
) -> None:
    from sdeflow import __version__

    k = plan.noise_draws
    if tables is None:
        inputs = "x_T float32 [B, *sample_shape]" + ("; noise float32 [K, B, *sample_shape]" if k else "")
        if guided:
            inputs += (
                "; class_labels int64 [B] (0..K-1, K = no label); guidance float32 [] (w: out_c + w (out_c - out_u))"
            )
    else:
        inputs = (
            "x_T float32 [B, *sample_shape]; labels [N]; coefficients float32 [N, 2, 2W + 2]"
            + ("; noise_rows float32 [N, B, *sample_shape]" if tables.stochastic else "")
            + " (filled by OnnxSampler from sdeflow.dynamic_tables)"
        )
    props = {
        "sdeflow.format": FORMAT,
        "sdeflow.version": __version__,
        "sdeflow.sampler": smp.name,
        "sdeflow.sampler_options": json.dumps(smp.config()),
        "sdeflow.grid": json.dumps(gobj.config()),
        "sdeflow.steps": str(plan.steps),
        "sdeflow.nfe": str(plan.nfe),
        "sdeflow.noise_draws": str(k),
        "sdeflow.sample_shape": json.dumps(list(shape)),
        "sdeflow.prior_std": repr(float(model.sde.prior_std)),
        "sdeflow.sde": json.dumps(model.sde.config()),
        "sdeflow.prediction": model.prediction,
        "sdeflow.time_label": json.dumps(model.time_label.config()),
        "sdeflow.eps": repr(float(eps)),
        "sdeflow.set_alpha_to_one": json.dumps(set_alpha_to_one),
        "sdeflow.times": json.dumps([float(t) for t in plan.grid.t]),
        "sdeflow.graph": "scan" if tables is not None else "unrolled",
        "sdeflow.inputs": inputs,
    }
    if tables is not None:
        props["sdeflow.dynamic_tables"] = json.dumps(
            {
                "window": tables.window,
                "steps": {
                    str(s): {
                        "labels": tables.labels[s].tolist(),
                        "coefficients": tables.rows[s].coefficients.tolist(),
                        "noise_index": tables.rows[s].noise_index.tolist(),
                        "noise_draws": tables.rows[s].noise_draws,
                    }
                    for s in sorted(tables.labels)
                },
            }
        )
    if data_info:
        props["sdeflow.data"] = json.dumps(data_info)
    if guided:
        props["sdeflow.num_classes"] = str(model.num_classes)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "sdeflow"


def _count_nodes(graph: onnx.GraphProto) -> int:
    n = 0
    for node in graph.node:
        n += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                n += _count_nodes(attr.g)
    return n
