"""sdeflow.export: ONNX export of a score network with a fixed-step DDIM loop, and an onnxruntime runner.

    export_ddim(model_or_checkpoint, path, steps=50, eta=0.0, ...) -> ExportReport     (needs torch)
    OnnxSampler(path, providers="auto").sample(batch_size, seed)                       (numpy + onnxruntime)

Names are resolved lazily so that importing this package does not import the exporter (torch, onnx). The runner
lives in ``runtime.py``, a self-contained module: a deployment without torch loads that one file by path (the
parent package ``sdeflow`` imports torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["export_ddim", "ExportReport", "OnnxExportError", "OnnxSampler", "GraphInfo", "quickstart_export"]

_LAZY = {
    "export_ddim": "onnx_export",
    "ExportReport": "onnx_export",
    "OnnxExportError": "onnx_export",
    "OnnxSampler": "runtime",
    "GraphInfo": "runtime",
    "quickstart_export": "quickstart",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
