"""sdeflow.export: any fixed-grid sampler of a score network as one ONNX graph, and an onnxruntime runner.

    export_sampler(model_or_checkpoint, path, sampler="unipc", steps=10, ...) -> ExportReport   (needs torch)
    export_ddim(model_or_checkpoint, path, steps=50, eta=0.0, ...)   (= export_sampler with DDIM(eta))
    OnnxSampler(path, providers="auto").sample(batch_size, seed)                             (numpy + onnxruntime)
    deployment_report(checkpoint_dir, out_dir)   export + parity + speed + time to DDIM-50's quality, as a dict
    onnx_samples_to_file(path, out, batch=16, ...) -> OnnxSampleFile   samples of a graph in a file (run-onnx)

Names are resolved lazily so that importing this package does not import the exporter (torch, onnx). The runner
lives in ``runtime.py``, a self-contained module: a deployment without torch loads that one file by path (the
parent package ``sdeflow`` imports torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names __getattr__ resolves lazily, for type checkers
    from .onnx_export import ExportReport, OnnxExportError, export_ddim, export_sampler
    from .report import deployment_report
    from .runtime import GraphInfo, NonFiniteOutputError, OnnxSampler
    from .to_file import OnnxSampleFile, onnx_samples_to_file

__all__ = [
    "export_sampler",
    "export_ddim",
    "ExportReport",
    "OnnxExportError",
    "OnnxSampler",
    "GraphInfo",
    "NonFiniteOutputError",
    "deployment_report",
    "onnx_samples_to_file",
    "OnnxSampleFile",
]

_LAZY = {
    "export_sampler": "onnx_export",
    "export_ddim": "onnx_export",
    "ExportReport": "onnx_export",
    "OnnxExportError": "onnx_export",
    "OnnxSampler": "runtime",
    "GraphInfo": "runtime",
    "NonFiniteOutputError": "runtime",
    "deployment_report": "report",
    "onnx_samples_to_file": "to_file",
    "OnnxSampleFile": "to_file",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
