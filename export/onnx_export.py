"""``export_ddim``: one ONNX file that turns x_T (and, for eta > 0, the step noise) into x_0 with fixed-step DDIM.

One DDIM step (network + fused update) is traced with ``torch.onnx.export(..., dynamo=False)`` and copied S times
(``onnx_graphs.unrolled_graph``), or wrapped in an ONNX Scan (``dynamic_steps=True``). The schedule is computed in
float64 by ``runtime.ddim_plan`` and enters the graph as constants (unrolled) or as the inputs ``timesteps`` /
``coefficients`` (Scan). After writing, the file is checked (``onnx.checker`` and strict shape inference) and run
under onnxruntime against ``sdeflow.sample(method='ddim')`` on the same x_T and noise at several batch sizes;
``ExportReport`` says how close they came.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .._utils import atomic_write
from ..parametrization import DDPMTimesteps, ScoreModel
from ..sampling.names import DEFAULT_GRIDS
from ..sde import VPSDE
from .graph import DDIMStep, UnrolledDDIM
from .onnx_graphs import has_subgraphs, scan_graph, unrolled_graph
from .runtime import CONTINUOUS_GRIDS, DISCRETE_SPACINGS, FORMAT, DDIMPlan, OnnxSampler, ddim_plan
from .verify import parity

__all__ = ["export_ddim", "ExportReport", "OnnxExportError"]

OPSET = 17


class OnnxExportError(RuntimeError):
    """The network could not be exported to ONNX, or the exported graph does not reproduce PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    """What ``export_ddim`` wrote and how it was verified.

    ``parity`` maps batch size -> relative error ||x0_onnx - x0_torch|| / ||x0_torch|| against ``reference``.
    """

    path: Path
    steps: int
    eta: float
    dynamic_steps: bool
    sample_shape: tuple[int, ...]
    config: dict
    nodes: int
    size_bytes: int
    checker_ok: bool
    shape_inference_ok: bool
    parity: dict[int, float]
    rtol: float
    reference: str
    export_seconds: float
    tracer_warnings: tuple[str, ...] = field(default=())

    @property
    def parity_ok(self) -> bool:
        return bool(self.parity) and max(self.parity.values()) <= self.rtol

    @property
    def verified(self) -> bool:
        return self.checker_ok and self.shape_inference_ok and self.parity_ok

    def summary(self) -> str:
        errs = ", ".join(f"B={b}: {e:.1e}" for b, e in self.parity.items()) or "not run"
        return (
            f"{self.path} ({self.size_bytes / 1e6:.2f} MB, {self.nodes} nodes, "
            f"{'dynamic' if self.dynamic_steps else self.steps} steps, eta={self.eta}): checker "
            f"{'ok' if self.checker_ok else 'FAILED'}, "
            f"shape inference {'ok' if self.shape_inference_ok else 'FAILED'}, "
            f"onnxruntime vs {self.reference}: {errs} (tolerance {self.rtol:g})"
        )


def _resolve(model: Any, sample_shape: tuple[int, ...] | None) -> tuple[ScoreModel, tuple[int, ...], dict | None]:
    """(score model, sample shape, data info) from a ScoreModel, a Checkpoint or a checkpoint folder."""
    data_info = None
    if isinstance(model, (str, Path)):
        try:
            from ..checkpoint import load
        except ImportError as err:
            raise ValueError(
                f"Loading checkpoint {model} needs sdeflow.checkpoint, which is unavailable: {err}"
            ) from None
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


def _broadcasts_label(net: Any, shape: tuple[int, ...], label: float | int, dtype: torch.dtype) -> bool:
    """Whether net(x, label[1]) equals net(x, label.expand(B)) (then the time pathway can be constant-folded)."""
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = net(x, torch.tensor([label], dtype=dtype).expand(3))
        try:
            one = net(x, torch.tensor([label], dtype=dtype))
        except Exception:  # noqa: BLE001 - any failure means "does not broadcast"
            return False
    return isinstance(one, torch.Tensor) and one.shape == full.shape and torch.allclose(one, full, rtol=1e-5, atol=1e-6)


def _trace(module: torch.nn.Module, args: tuple, names: list[str], dynamic: dict) -> tuple[onnx.ModelProto, list[str]]:
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                args,
                buf,
                input_names=names,
                output_names=["x_0"],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as err:  # noqa: BLE001 - torch raises many types; all mean "not exportable"
            raise OnnxExportError(
                f"Could not trace the network into ONNX ({type(err).__name__}: {str(err).splitlines()[0][:400]}). "
                "export_ddim needs a forward pass that torch.jit.trace can follow: tensor operations with ONNX "
                "equivalents, no data-dependent Python control flow, no .item()/.numpy()/.tolist() on tensors."
            ) from err
    traced = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    tracer = [str(w.message).splitlines()[0] for w in traced]
    torch_dir = str(Path(torch.__file__).parent)  # torch's own shape checks (e.g. group_norm's) are benign
    unsafe = [
        str(w.message).splitlines()[0]
        for w in traced
        if str(w.message).startswith("Converting a tensor to a") and not str(w.filename).startswith(torch_dir)
    ]
    if unsafe:
        raise OnnxExportError(
            f"The network's forward turns a tensor into a Python value while tracing ({unsafe[0]}): the ONNX "
            "graph would freeze that value (data-dependent control flow or .item()/.numpy()). Express it with "
            "tensor operations (torch.where instead of if, no .item()) and export again."
        )
    return onnx.load_from_string(buf.getvalue()), tracer


def _check(model: onnx.ModelProto) -> tuple[bool, bool]:
    try:
        onnx.checker.check_model(model)
        checker_ok = True
    except onnx.checker.ValidationError:
        checker_ok = False
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        shapes_ok = True
    except Exception:  # noqa: BLE001 - onnx raises InferenceError and friends
        shapes_ok = False
    return checker_ok, shapes_ok


def _config(
    score_model: ScoreModel,
    grid: str | None,
    eps: float,
    rho: float,
    set_alpha_to_one: bool | None,
    steps_offset: int,
    eta: float,
) -> dict:
    """The JSON that rebuilds the DDIM plan (``runtime.ddim_plan``), with sdeflow.sample's defaults."""
    sde, label = score_model.sde, score_model.time_label
    discrete_model = isinstance(label, DDPMTimesteps)
    if grid is None:  # sdeflow.sample's default for method='ddim'
        grid = "leading" if discrete_model else DEFAULT_GRIDS["ddim"]
    if grid not in CONTINUOUS_GRIDS + DISCRETE_SPACINGS:
        raise ValueError(f"Invalid grid {grid!r}. Must be one of {CONTINUOUS_GRIDS + DISCRETE_SPACINGS}.")
    if grid in DISCRETE_SPACINGS and not isinstance(sde, VPSDE):
        raise ValueError(
            f"The discrete spacing {grid!r} needs a VPSDE (the DDPM schedule); got {sde!r}. "
            f"Use a continuous grid {CONTINUOUS_GRIDS}."
        )
    if grid in CONTINUOUS_GRIDS and not 0 < eps < sde.T:
        raise ValueError(f"`eps` must lie in (0, T) = (0, {sde.T}); got {eps!r}.")
    if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
        raise ValueError(f"`eta` must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like); got {eta!r}.")
    probe = label(torch.tensor([0.5], dtype=torch.float64))
    return {
        "grid": grid,
        "sde": sde.config(),
        "T": sde.T,
        "eps": float(eps),
        "rho": float(rho),
        "set_alpha_to_one": grid in DISCRETE_SPACINGS if set_alpha_to_one is None else bool(set_alpha_to_one),
        "N": label.N if discrete_model else 1000,
        "steps_offset": int(steps_offset),
        "eta": float(eta),
        "prediction": score_model.prediction,
        "time_label": label.config(),
        "label_dtype": "float32" if probe.is_floating_point() else "int64",
    }


def export_ddim(
    model_or_checkpoint: Any,
    path: str | Path,
    steps: int = 50,
    eta: float = 0.0,
    *,
    sample_shape: tuple[int, ...] | None = None,
    grid: str | None = None,
    eps: float = 1e-3,
    rho: float = 7.0,
    set_alpha_to_one: bool | None = None,
    steps_offset: int = 0,
    dynamic_steps: bool = False,
    fold_time_embedding: bool = True,
    verify: bool = True,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    rtol: float = 1e-5,
    strict: bool = True,
    seed: int = 0,
) -> ExportReport:
    """Export DDIM with S = ``steps`` steps of a score network to one ONNX graph at ``path``, and verify it.

    The DDIM is the one of ``sdeflow.sample(model, sde, method='ddim', steps=S, eta=eta, grid=grid, ...)``, with
    the same defaults: grid 'leading' (diffusers' DDIM spacing on the discrete DDPM schedule) for networks
    labelled with ``DDPMTimesteps``, else ``sdeflow.sampling.DEFAULT_GRIDS['ddim']`` on [eps, T]; the last step
    goes to abar = 1 on the discrete schedule and stops at t = eps on continuous grids unless
    ``set_alpha_to_one`` says otherwise.

    Args:
        model_or_checkpoint: a ``ScoreModel``, an sdeflow ``Checkpoint`` or a checkpoint folder.
        steps, eta: S DDIM steps and eta in [0, 1] (eta > 0 adds the input ``noise`` [S, B, *sample_shape]).
        sample_shape: the shape of one sample (taken from a checkpoint when omitted).
        grid, eps, rho, set_alpha_to_one, steps_offset: the time grid, as in ``sdeflow.sample``.
        dynamic_steps: export an ONNX Scan over one traced step that takes ``timesteps`` [S] and
            ``coefficients`` [S, 3], so the step count is chosen at run time (``OnnxSampler.run(..., steps=)``);
            slower than the unrolled default (see the README).
        fold_time_embedding: give the network its label with shape [1] when it broadcasts it (checked on a
            probe batch), so the time pathway of every unrolled step is constant and folds away.
        verify, batch_sizes, rtol, strict: run onnxruntime against ``sdeflow.sample`` at these batch sizes; with
            ``strict`` a relative error above ``rtol`` or a failed check raises ``OnnxExportError`` and removes
            the file.

    Returns:
        ExportReport: checker, shape inference, relative error per batch size, sizes and timings.
    """
    t0 = time.perf_counter()
    score_model, shape, data_info = _resolve(model_or_checkpoint, sample_shape)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; got {steps!r}. Use e.g. steps=50.")
    steps = int(steps)
    config = _config(score_model, grid, eps, rho, set_alpha_to_one, steps_offset, eta)
    plan = ddim_plan(config, steps)
    label_dtype = torch.int64 if config["label_dtype"] == "int64" else torch.float32
    proto, tracer = _build(score_model.net, plan, shape, label_dtype, eta, dynamic_steps, fold_time_embedding, seed)
    _set_metadata(proto, config, steps, shape, score_model, dynamic_steps, data_info)
    checker_ok, shapes_ok = _check(proto)
    path = Path(path)
    atomic_write(path, lambda p: p.write_bytes(proto.SerializeToString()))
    errors: dict[int, float] = {}
    reference = "not run"
    if verify:
        sampler = OnnxSampler(path, providers="cpu", threads=1)
        errors, reference = parity(score_model, sampler, config, steps, batch_sizes, seed)
    report = ExportReport(
        path=path,
        steps=steps,
        eta=float(eta),
        dynamic_steps=dynamic_steps,
        sample_shape=shape,
        config=config,
        nodes=_count_nodes(proto.graph),
        size_bytes=path.stat().st_size,
        checker_ok=checker_ok,
        shape_inference_ok=shapes_ok,
        parity=errors,
        rtol=rtol,
        reference=reference,
        export_seconds=time.perf_counter() - t0,
        tracer_warnings=tuple(dict.fromkeys(tracer)),
    )
    if strict and verify and not report.verified:
        path.unlink(missing_ok=True)
        hint = f" Tracer warnings: {'; '.join(report.tracer_warnings)}." if report.tracer_warnings else ""
        raise OnnxExportError(f"The exported graph failed verification and was removed: {report.summary()}.{hint}")
    return report


def _build(
    net: Any,
    plan: DDIMPlan,
    shape: tuple[int, ...],
    label_dtype: torch.dtype,
    eta: float,
    dynamic_steps: bool,
    fold: bool,
    seed: int,
) -> tuple[onnx.ModelProto, list[str]]:
    """Trace the unrolled loop (or one step wrapped in a Scan) into an ONNX model."""
    was_training = getattr(net, "training", False)
    if isinstance(net, torch.nn.Module):
        net.eval()
    try:
        x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))
        first = plan.labels[0].item()
        try:
            with torch.no_grad():
                out = net(x, torch.full((2,), first, dtype=label_dtype))
        except Exception as err:  # noqa: BLE001 - the user's network failed on a plain call
            raise OnnxExportError(
                f"The network failed on a probe batch x {tuple(x.shape)} with labels of dtype {label_dtype}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"The network must return a tensor of the input's shape {tuple(x.shape)}; got {got}.")
        broadcast = fold and _broadcasts_label(net, shape, first, label_dtype)
        with torch.no_grad():
            args = (x, torch.tensor(first, dtype=label_dtype), torch.zeros(3)) + ((x,) if eta > 0 else ())
            names = ["x", "label", "coef"] + (["z"] if eta > 0 else [])
            step, tracer = _trace(
                DDIMStep(net, broadcast, eta > 0), args, names, {"x": {0: "B"}, "z": {0: "B"}, "x_0": {0: "B"}}
            )
            if dynamic_steps:
                elem = onnx.TensorProto.INT64 if label_dtype == torch.int64 else onnx.TensorProto.FLOAT
                return scan_graph(step, eta, shape, elem), tracer
            if not has_subgraphs(step.graph):
                dtype = np.int64 if label_dtype == torch.int64 else np.float32
                return unrolled_graph(step, plan, dtype, eta, shape), tracer
            noise = torch.randn((plan.steps, 2, *shape)) if eta > 0 else None  # trace the whole loop instead
            names = ["x_T"] + (["noise"] if eta > 0 else [])
            dims = {"x_T": {0: "B"}, "x_0": {0: "B"}, "noise": {1: "B"}}
            module = UnrolledDDIM(net, plan, label_dtype, broadcast)
            return _trace(module, (x, noise) if eta > 0 else (x,), names, dims)
    finally:
        if isinstance(net, torch.nn.Module):
            net.train(was_training)


def _set_metadata(
    proto: onnx.ModelProto,
    config: dict,
    steps: int,
    shape: tuple[int, ...],
    score_model: ScoreModel,
    dynamic_steps: bool,
    data_info: dict | None,
) -> None:
    from .. import __version__

    eta = config["eta"]
    inputs = "x_T float32 [B, *sample_shape]"
    inputs += "; noise float32 [S, B, *sample_shape]" if eta > 0 else ""
    inputs += f"; timesteps {config['label_dtype']} [S]; coefficients float32 [S, 3]" if dynamic_steps else ""
    props = {
        "sdeflow.format": FORMAT,
        "sdeflow.version": __version__,
        "sdeflow.config": json.dumps(config),
        "sdeflow.sde": json.dumps(config["sde"]),
        "sdeflow.grid": config["grid"],
        "sdeflow.spacing": config["grid"] if config["grid"] in DISCRETE_SPACINGS else "none (continuous grid)",
        "sdeflow.schedule": f"discrete DDPM (abar_i, N={config['N']})"
        if config["grid"] in DISCRETE_SPACINGS
        else f"continuous alpha(t), sigma(t) on [eps={config['eps']}, T={config['T']}]",
        "sdeflow.set_alpha_to_one": str(config["set_alpha_to_one"]).lower(),
        "sdeflow.steps": str(steps),
        "sdeflow.eta": repr(float(eta)),
        "sdeflow.sample_shape": json.dumps(list(shape)),
        "sdeflow.time_label": json.dumps(config["time_label"]),
        "sdeflow.prediction": config["prediction"],
        "sdeflow.prior_std": repr(float(score_model.sde.prior_std)),
        "sdeflow.graph": "scan" if dynamic_steps else "unrolled",
        "sdeflow.inputs": inputs,
    }
    if data_info:
        props["sdeflow.data"] = json.dumps(data_info)
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
