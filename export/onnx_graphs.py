"""Assemble the exported graphs from one traced DDIM step (inputs x, label, coef[, z]; output x_0).

``unrolled_graph``: S renamed copies of the step, chained x_T -> ... -> x_0. Step k reads its label and its
coefficients (A_k, B_k, sig_k) from its own initializers and its noise as noise[k], so every schedule
constant is in the graph and onnxruntime folds the time pathway of each step at session start. Tracing the
step once and copying it is equivalent to tracing the unrolled loop (``graph.UnrolledDDIM``) and ~S times
faster; the exporter falls back to tracing the loop when the step contains control-flow subgraphs.

``scan_graph``: Scan(x_T; timesteps, coefficients[, noise]) with the step as its body, for run-time step counts.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .runtime import DDIMPlan

__all__ = ["unrolled_graph", "scan_graph", "has_subgraphs"]


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether any node carries a graph attribute (If, Loop, Scan), which the copier does not rename."""
    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for n in graph.node for a in n.attribute)


def _io(shape: tuple[int, ...], noise_steps: int | str | None, extra: list) -> tuple[list, list]:
    """Graph inputs x_T [B, *shape], ``extra``, noise [S, B, *shape] (when ``noise_steps``), output x_0."""
    dims = ["B", *shape]
    inputs = [helper.make_tensor_value_info("x_T", TensorProto.FLOAT, dims), *extra]
    if noise_steps is not None:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, [noise_steps, *dims]))
    return inputs, [helper.make_tensor_value_info("x_0", TensorProto.FLOAT, dims)]


def unrolled_graph(
    step: onnx.ModelProto, plan: DDIMPlan, label_dtype: np.dtype, eta: float, shape: tuple[int, ...]
) -> onnx.ModelProto:
    """x_T -> step_0 -> ... -> step_{S-1} -> x_0 with per-step constant labels and coefficients."""
    g = step.graph
    names = [i.name for i in g.input]  # x, label, coef[, z]
    weights = {init.name for init in g.initializer}
    (out_name,) = [o.name for o in g.output]
    nodes: list[onnx.NodeProto] = []
    inits = list(g.initializer)
    prev = "x_T"
    for k in range(plan.steps):
        pre = f"ddim{k}/"
        rename = {names[0]: prev, names[1]: pre + "label", names[2]: pre + "coef"}
        inits.append(numpy_helper.from_array(np.asarray(plan.labels[k], dtype=label_dtype), pre + "label"))
        inits.append(numpy_helper.from_array(plan.coefficients[k].astype(np.float32), pre + "coef"))
        if eta > 0:
            rename[names[3]] = pre + "z"
            inits.append(numpy_helper.from_array(np.asarray(k, dtype=np.int64), pre + "k"))
            nodes.append(helper.make_node("Gather", ["noise", pre + "k"], [pre + "z"], name=pre + "noise", axis=0))
        last = "x_0" if k == plan.steps - 1 else pre + "x"
        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = pre + node.name
            del copy.input[:]
            copy.input.extend(rename.get(i, i if (i in weights or not i) else pre + i) for i in node.input)
            del copy.output[:]
            copy.output.extend(last if o == out_name else (pre + o if o else o) for o in node.output)
            nodes.append(copy)
        prev = last
    inputs, outputs = _io(shape, plan.steps if eta > 0 else None, [])
    graph = helper.make_graph(nodes, "sdeflow_ddim_unrolled", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)


def scan_graph(step: onnx.ModelProto, eta: float, shape: tuple[int, ...], label_elem: int) -> onnx.ModelProto:
    """Scan(x_T; timesteps [S], coefficients [S, 3][, noise [S, B, ...]]) -> x_0 with the traced step as body."""
    body = step.graph
    body.name = "ddim_step"
    extra = [
        helper.make_tensor_value_info("timesteps", label_elem, ["S"]),
        helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, ["S", 3]),
    ]
    inputs, outputs = _io(shape, "S" if eta > 0 else None, extra)
    scan_inputs = [i.name for i in inputs]
    node = helper.make_node("Scan", scan_inputs, ["x_0"], body=body, num_scan_inputs=len(scan_inputs) - 1)
    graph = helper.make_graph([node], "sdeflow_ddim_scan", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
