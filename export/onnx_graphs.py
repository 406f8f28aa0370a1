"""Assemble the exported graphs from a coefficient plan and one traced network call.

``unrolled_graph``: the plan's ops written out in ONNX. Every ``Eval`` is a linear-combination chain (Mul by float32
constants, Add) feeding a renamed copy of the network subgraph with its constant label; every ``Update`` is the
combination plus noise[k] * c (Gather). The coefficients are the plan's float64 numbers cast to float32, so the graph
computes what ``sdeflow.sample`` computes, by construction. Tracing one network call and copying it is equivalent to
tracing the unrolled loop (``graph.PlanModule``) and ~NFE times faster; the exporter falls back to tracing the loop
when the network subgraph contains control-flow subgraphs, which the copier does not rename.

``scan_tables`` / ``scan_graph``: the dynamic-steps form. ``scan_tables`` cuts a plan into NFE segments (one
evaluation and the linear algebra up to the next) and writes each as two coefficient rows (``graph.ScanStep``);
``scan_graph`` wraps the traced ``ScanStep`` in an ONNX Scan whose inputs are the per-evaluation labels, rows and
noise. The tables are computed at export for each declared step count and stored in the metadata, so the runtime
picks them and computes no schedule of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdeflow.sampling.plan import STATE, Eval, Key, Langevin, Plan, Update

__all__ = ["unrolled_graph", "scan_graph", "scan_tables", "ScanTables", "has_subgraphs"]


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether any node carries a graph attribute (If, Loop, Scan), which the copier does not rename."""
    kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in kinds for n in graph.node for a in n.attribute)


class _Builder:
    """Nodes and initializers of the unrolled graph, with float32 scalar constants shared by value."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[float, str] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value: float) -> str:
        v = float(np.float32(value))
        if v not in self._consts:
            self._consts[v] = f"c/{len(self._consts)}"
            self.inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.float32), self._consts[v]))
        return self._consts[v]

    def combine(self, terms: list[tuple[str, float]], stem: str) -> str:
        """sum_r c_r r as Mul / Add nodes; returns the name of the result (a term with c = 1 needs no Mul)."""
        if not terms:
            raise ValueError("internal: an empty linear combination (the plan has an all-zero row)")
        parts = []
        for src, c in terms:
            if c == 1.0:
                parts.append(src)
                continue
            out = self.name(stem + "/mul")
            self.nodes.append(helper.make_node("Mul", [src, self.const(c)], [out], name=out))
            parts.append(out)
        acc = parts[0]
        for p in parts[1:]:
            out = self.name(stem + "/add")
            self.nodes.append(helper.make_node("Add", [acc, p], [out], name=out))
            acc = out
        return acc


def _copy_subgraph(b: _Builder, g: onnx.GraphProto, prefix: str, rename: dict[str, str], out: str) -> None:
    """Append a copy of graph ``g`` whose internal names get ``prefix``; inputs per ``rename``; output -> ``out``."""
    weights = {init.name for init in g.initializer}
    (out_name,) = [o.name for o in g.output]
    for node in g.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        del copy.input[:]
        copy.input.extend(rename.get(i, i if (i in weights or not i) else prefix + i) for i in node.input)
        del copy.output[:]
        copy.output.extend(out if o == out_name else (prefix + o if o else o) for o in node.output)
        b.nodes.append(copy)


def _io(shape: tuple[int, ...], noise_dim: int | str | None, extra: list) -> tuple[list, list]:
    """Graph inputs x_T [B, *shape], ``extra``, noise [K, B, *shape] (when ``noise_dim``), output x_0."""
    dims = ["B", *shape]
    inputs = [helper.make_tensor_value_info("x_T", TensorProto.FLOAT, dims), *extra]
    if noise_dim is not None:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, [noise_dim, *dims]))
    return inputs, [helper.make_tensor_value_info("x_0", TensorProto.FLOAT, dims)]


def unrolled_graph(
    net: onnx.ModelProto, plan: Plan, labels: np.ndarray, shape: tuple[int, ...], guided: bool = False
) -> onnx.ModelProto:
    """The plan written out: x_T (and noise [K, B, ...] when the plan draws K > 0 times) -> x_0.

    ``net`` is the traced ``graph.NetCall`` (inputs x, label; one output); ``labels`` [NFE] the network label of
    each evaluation (int64 or float32, the dtype the network was traced with). ``guided``: ``net`` is the traced
    ``graph.GuidedCall`` (inputs x, label, class_labels, guidance), and every copy reads the graph inputs
    ``class_labels`` int64 [B] and ``guidance`` float32 [] (shared, not renamed)."""
    g = net.graph
    x_name = g.input[0].name
    names = [i.name for i in g.input]
    label_name = "label" if "label" in names else None  # a network that ignores its label
    shared = {n: n for n in ("class_labels", "guidance") if n in names} if guided else {}
    b = _Builder()
    b.inits.extend(g.initializer)
    regs: dict[Key, str] = {}
    x = "x_T"
    draw = 0

    def terms(op_terms: tuple) -> list[tuple[str, float]]:
        return [(x if key == STATE else regs[key], c) for key, c in op_terms]

    for op in plan.ops:
        if isinstance(op, Eval):
            pre = f"eval{op.index}/"
            x_in = b.combine(terms(op.x), pre + "in")
            lab = pre + "label"
            b.inits.append(numpy_helper.from_array(np.asarray(labels[op.index]), lab))
            out = pre + "out"
            _copy_subgraph(b, g, pre, {x_name: x_in, **({label_name: lab} if label_name else {}), **shared}, out)
            regs[("in", op.index)], regs[("out", op.index)] = x_in, out
        elif isinstance(op, Update):
            parts = terms(op.x)
            if op.noise > 0:
                k = b.name("noise")
                idx = numpy_helper.from_array(np.asarray(draw, dtype=np.int64), k + "/index")
                b.inits.append(idx)
                b.nodes.append(helper.make_node("Gather", ["noise", idx.name], [k], name=k, axis=0))
                parts.append((k, op.noise))
                draw += 1
            x = b.combine(parts, "update")
        else:
            raise ValueError(f"{plan.sampler}: a Langevin corrector is nonlinear and cannot be exported to ONNX.")
    b.nodes.append(helper.make_node("Identity", [x], ["x_0"], name="x_0"))
    extra = [helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["B"]),
             helper.make_tensor_value_info("guidance", TensorProto.FLOAT, [])] if guided else []
    inputs, outputs = _io(shape, plan.noise_draws if plan.noise_draws > 0 else None, extra)
    graph = helper.make_graph(b.nodes, f"sdeflow_{plan.sampler}_unrolled", inputs, outputs, initializer=b.inits)
    return helper.make_model(graph, opset_imports=list(net.opset_import), ir_version=net.ir_version)


@dataclass(frozen=True)
class ScanTables:
    """The dynamic-steps form of one plan: ``coefficients`` [NFE, 2, 2W + 2] (``graph.ScanStep``'s rows, float64),
    ``noise_index`` [NFE] (the noise draw iteration i adds, -1 for none), ``window`` W and ``noise_draws`` K."""

    coefficients: np.ndarray
    noise_index: np.ndarray
    window: int
    noise_draws: int


_X, _Z = "X", "z"  # in a segment's forms: the sample at the segment's start, and its noise draw


def _substitute(op_terms: tuple, cur: dict) -> dict:
    """The op's linear form with STATE replaced by ``cur`` (the current sample as a form of the segment's keys)."""
    out: dict = {}
    for key, c in op_terms:
        for k, v in cur.items() if key == STATE else ((key, 1.0),):
            out[k] = out.get(k, 0.0) + c * v
    return out


def scan_tables(plan: Plan, window: int | None = None) -> ScanTables:
    """Cut ``plan`` into one segment per evaluation and write each segment as ``ScanStep`` rows.

    Segment i starts with x (the sample) and s_i (the input of evaluation i) and ends after the ops up to the next
    evaluation; its x' and s' = s_{i+1} are linear forms of x, out_{i-j}, in_{i-j} (in_i = s_i) and one noise draw.
    Raises ValueError for plans that do not fit: a Langevin corrector, a first evaluation not at x_T, or two noise
    draws between evaluations. ``window`` pads W to a common value (several step counts share one graph)."""
    rows: list[tuple[dict, dict]] = []
    noise_index: list[int] = []
    cur: dict | None = None
    seg_draw = -1
    draws = 0
    for op in plan.ops:
        if isinstance(op, Langevin):
            raise ValueError(f"{plan.sampler}: a Langevin corrector is nonlinear; it has no dynamic-steps form.")
        if isinstance(op, Eval):
            if cur is None:
                if op.x != ((STATE, 1.0),):
                    raise ValueError(f"{plan.sampler}: the first evaluation is not at x_T; no dynamic-steps form.")
            else:
                rows.append((cur, _substitute(op.x, cur)))
                noise_index.append(seg_draw)
            cur, seg_draw = {_X: 1.0}, -1
            continue
        if cur is None:
            raise ValueError(f"{plan.sampler}: the plan updates x before its first evaluation; no dynamic-steps form.")
        cur = _substitute(op.x, cur)
        if op.noise > 0:
            if seg_draw >= 0:
                raise ValueError(f"{plan.sampler}: two noise draws between evaluations; no dynamic-steps form.")
            cur[_Z] = cur.get(_Z, 0.0) + op.noise
            seg_draw, draws = draws, draws + 1
    rows.append((cur or {_X: 1.0}, {}))
    noise_index.append(seg_draw)
    need = 1
    for i, (fx, fs) in enumerate(rows):
        for key in (*fx, *fs):
            if isinstance(key, tuple):
                need = max(need, i - key[1] + 1)
    w = need if window is None else int(window)
    if w < need:
        raise ValueError(f"internal: window {w} < {need} needed by {plan.sampler}")
    table = np.zeros((len(rows), 2, 2 * w + 2), dtype=np.float64)
    for i, forms in enumerate(rows):
        for r, form in enumerate(forms):
            for key, c in form.items():
                if key == _X:
                    col = 0
                elif key == _Z:
                    col = 2 * w + 1
                else:
                    col = (1 if key[0] == "out" else 1 + w) + (i - key[1])
                table[i, r, col] += c
    return ScanTables(table, np.asarray(noise_index, dtype=np.int64), w, draws)


def scan_graph(
    step: onnx.ModelProto, shape: tuple[int, ...], label_elem: int, stochastic: bool, window: int
) -> onnx.ModelProto:
    """Scan over the traced ``ScanStep``: inputs x_T [B, ...], labels [N], coefficients [N, 2, 2W + 2] and (when
    ``stochastic``) noise_rows [N, B, ...] (row i: the noise of evaluation i, zeros where it draws none) -> x_0."""
    body = step.graph
    body.name = "sdeflow_scan_step"
    # the tracer drops inputs the body does not read (the label of a network that ignores it); Scan needs them all
    present = {i.name: i for i in body.input}
    wanted = ["x", "s", "outs", "ins", "label", "coef"] + (["z"] if stochastic else [])
    full = [
        present.get(n) or helper.make_tensor_value_info(n, label_elem if n == "label" else TensorProto.FLOAT, None)
        for n in wanted
    ]
    del body.input[:]
    body.input.extend(full)
    dims = ["B", *shape]
    extra = [
        helper.make_tensor_value_info("labels", label_elem, ["N"]),
        helper.make_tensor_value_info("coefficients", TensorProto.FLOAT, ["N", 2, 2 * window + 2]),
    ]
    if stochastic:
        extra.append(helper.make_tensor_value_info("noise_rows", TensorProto.FLOAT, ["N", *dims]))
    inputs, outputs = _io(shape, None, extra)
    w = numpy_helper.from_array(np.asarray([window], dtype=np.int64), "scan/window")
    nodes = [
        helper.make_node("Shape", ["x_T"], ["scan/shape"]),
        helper.make_node("Concat", [w.name, "scan/shape"], ["scan/hist_shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["scan/hist_shape"],
            ["scan/zeros"],
            value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)),
        ),
    ]
    state = ["x_T", "x_T", "scan/zeros", "scan/zeros"]
    scans = ["labels", "coefficients"] + (["noise_rows"] if stochastic else [])
    nodes.append(
        helper.make_node(
            "Scan",
            state + scans,
            ["x_0", "scan/s", "scan/outs", "scan/ins"],
            body=body,
            num_scan_inputs=len(scans),
        )
    )
    graph = helper.make_graph(nodes, "sdeflow_scan", inputs, outputs, initializer=[w])
    return helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
