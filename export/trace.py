"""Tracing a network into ONNX for the exporter: one ``torch.onnx.export(dynamo=False)`` call under ``torch.no_grad``
with the network's modules frozen (eval mode, requires_grad off, restored afterwards), and the tracer's warnings
judged: a tensor turned into a Python value is an error naming its file and line, unless that line only checks a
shape (then the parity check decides)."""

from __future__ import annotations

import contextlib
import io
import linecache
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

__all__ = ["OnnxExportError", "OPSET", "trace", "frozen", "broadcasts_label", "check_model"]

OPSET = 17


class OnnxExportError(RuntimeError):
    """The network could not be exported to ONNX, or the exported graph does not reproduce PyTorch."""


def _modules_of(net: Any) -> list[torch.nn.Module]:
    """The modules a network callable uses: itself, or what a function or lambda closes over (closure cells,
    defaults, the globals it names, a bound method's object, a functools.partial's function and arguments)."""
    seen: list[torch.nn.Module] = []

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, torch.nn.Module):
            if not any(obj is m for m in seen):
                seen.append(obj)
            return
        if depth > 2:
            return
        if hasattr(obj, "func") and hasattr(obj, "args"):  # functools.partial
            for v in (obj.func, *obj.args, *(obj.keywords or {}).values()):
                visit(v, depth + 1)
        if hasattr(obj, "__self__"):
            visit(obj.__self__, depth + 1)
        code = getattr(obj, "__code__", None)
        if code is not None:
            for cell in getattr(obj, "__closure__", None) or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    visit(cell.cell_contents, depth + 1)
            for v in getattr(obj, "__defaults__", None) or ():
                visit(v, depth + 1)
            glb = getattr(obj, "__globals__", {})
            for name in code.co_names:
                if name in glb:
                    visit(glb[name], depth + 1)

    visit(net, 0)
    return seen


@contextlib.contextmanager
def frozen(net: Any) -> Iterator[None]:
    """Eval mode and requires_grad False on every parameter the network uses, restored afterwards: the tracer
    refuses to insert a tensor that requires grad as a constant (parameters of modules a lambda closes over)."""
    modules = _modules_of(net)
    params = {id(p): p for m in modules for p in m.parameters()}
    grads = {k: p.requires_grad for k, p in params.items()}
    modes = [(m, m.training) for m in modules]
    try:
        for m in modules:
            m.eval()
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(grads[k])
        for m, mode in modes:
            m.train(mode)


def broadcasts_label(net: Any, shape: tuple[int, ...], label: torch.Tensor) -> bool:
    """Whether net(x, label[1]) equals net(x, label.expand(B)) (then the time pathway can be constant-folded)."""
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = net(x, label.reshape(1).expand(3))
        try:
            one = net(x, label.reshape(1))
        except Exception:
            return False
    return isinstance(one, torch.Tensor) and one.shape == full.shape and torch.allclose(one, full, rtol=1e-5, atol=1e-6)


def _is_shape_check(filename: str, lineno: int) -> bool:
    """Whether the source line is an ``assert`` or a test on a tensor's shape (diffusers' downsampling.py and
    upsampling.py assert on channel counts and branch on ``hidden_states.shape[0] >= 64`` and ``numel()``): the
    value is frozen in the graph but depends on shapes only, so the parity check (at batch sizes 1, 7, 64 by
    default) decides."""
    line = linecache.getline(filename, lineno).strip()
    return line.startswith("assert ") or any(k in line for k in (".shape", ".size(", ".numel(", ".dim(", ".ndim"))


def trace(
    module: torch.nn.Module, args: tuple, names: list[str], outputs: list[str], dynamic: dict
) -> tuple[onnx.ModelProto, list[str]]:
    """``torch.onnx.export(dynamo=False)`` of ``module`` -> (model, tracer warnings let through as 'file:line: msg')."""
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    buf,  # pyright: ignore[reportArgumentType]  (torch.onnx.export writes to a file object too)
                    input_names=names,
                    output_names=outputs,
                    dynamic_axes=dynamic,
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
        except Exception as err:
            msg = str(err).splitlines()[0][:400] if str(err) else ""
            if "requires grad" in msg:
                raise OnnxExportError(
                    f"Could not trace the network: {msg}. A tensor that requires grad and is not a parameter of the "
                    "traced module (e.g. a tensor a lambda closes over) cannot become a graph constant; call "
                    ".requires_grad_(False) on it or make it a parameter or buffer of an nn.Module network."
                ) from err
            raise OnnxExportError(
                f"Could not trace the network into ONNX ({type(err).__name__}: {msg}). The exporter needs a forward "
                "pass that torch.jit.trace can follow: tensor operations with ONNX equivalents, no data-dependent "
                "Python control flow, no .item()/.numpy()/.tolist() on tensors."
            ) from err
    torch_dir = str(Path(torch.__file__).parent)  # torch's own shape checks (e.g. group_norm's) are benign
    kept: list[str] = []
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):  # pyright: ignore[reportPrivateImportUsage]
            continue
        where = f"{w.filename}:{w.lineno}"
        text = str(w.message).splitlines()[0].split(" might ")[0]
        if text.startswith("Converting a tensor to a") and not str(w.filename).startswith(torch_dir):
            if not _is_shape_check(w.filename, w.lineno):
                src = linecache.getline(w.filename, w.lineno).strip()
                raise OnnxExportError(
                    f"The network's forward turns a tensor into a Python value while tracing at {where} "
                    f"(`{src}`): the ONNX graph would freeze that value (data-dependent control flow or "
                    ".item()/.numpy()). Express it with tensor operations (torch.where instead of if, no .item()) "
                    "and export again."
                )
        kept.append(f"{where}: {text}")
    return onnx.load_from_string(buf.getvalue()), kept


def check_model(model: onnx.ModelProto) -> tuple[bool, bool]:
    try:
        onnx.checker.check_model(model)
        checker_ok = True
    except onnx.checker.ValidationError:
        checker_ok = False
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        shapes_ok = True
    except Exception:
        shapes_ok = False
    return checker_ok, shapes_ok
