"""Run an sdeflow sampler graph under onnxruntime. Needs only numpy and onnxruntime: no torch, no other sdeflow module.

This file is self-contained on purpose. Importing ``sdeflow.export`` imports the parent package ``sdeflow`` and
with it torch, so a deployment without torch copies this one file next to its ``model.onnx`` and loads it by
path (or runs it as a script: ``python runtime.py model.onnx --batch 16 --out samples.npy``). It computes no
schedule: every label and coefficient is in the graph or its metadata, written by ``sdeflow.export.export_sampler``.

The graph contract:
    inputs   x_T    float32 [B, *sample_shape]        (B dynamic)
             noise  float32 [K, B, *sample_shape]     (only when the sampler draws K > 0 normals;
                                                       K = metadata 'sdeflow.noise_draws')
    output   x_0    float32 [B, *sample_shape]
A dynamic-steps graph ('sdeflow.graph' = 'scan') takes instead of ``noise`` the per-evaluation inputs ``labels``
[N], ``coefficients`` [N, 2, 2W + 2] and ``noise_rows`` [N, B, ...]; ``OnnxSampler.run(x_T, noise, steps=S)``
fills them from the table of step count S in the metadata 'sdeflow.dynamic_tables' (row i of noise_rows is
noise[noise_index[i]], zeros where noise_index is -1).
A guided graph (metadata 'sdeflow.num_classes' = K) also takes ``class_labels`` int64 [B] (0..K-1, K = no label) and
``guidance`` float32 [] (w: out = out_c + w (out_c - out_u), diffusers' guidance_scale = 1 + w):
``run(..., class_labels=, guidance=)``.

Seeds (``draw``; the generator ``sdeflow.sample(seed=)`` uses, ``sdeflow.sampling.noise``): sample i has the seed
seed_i = (seed + i) mod 2**62 and
    x_T[i]      = float32(prior_std) * float32(np.random.default_rng([seed_i, 0]).standard_normal(sample_shape))
    noise[:, i] = float32(np.random.default_rng([seed_i, 1]).standard_normal((K, *sample_shape)))
so the same seed gives the same samples in PyTorch and here, whatever the batch size.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "OnnxSampler",
    "GraphInfo",
    "StepTable",
    "NonFiniteOutputError",
    "draw_inputs",
    "main",
    "image_grid",
    "points_raster",
    "encode_png",
    "encode_arrays",
    "samples_png",
]

FORMAT = "sdeflow-sampler/1"  # value of the metadata key "sdeflow.format"
_SEED_MOD = 2**62
MAX_PRIOR_STD = 1e5  # a larger prior std is an edited or corrupt metadata value (VE sigma_max is at most ~1e3)


class NonFiniteOutputError(ValueError):
    """The graph returned NaN or inf for some samples (``indices``); ``OnnxSampler.run(allow_nonfinite=True)``
    returns such outputs instead of raising."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


def draw_inputs(
    seeds: list[int], sample_shape: tuple[int, ...], prior_std: float, noise_draws: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """x_T [B, ...] and noise [K, B, ...] (None when K = 0) for the per-sample seeds (module docstring)."""
    b = len(seeds)
    x_T = np.empty((b, *sample_shape), np.float32)
    noise = np.empty((noise_draws, b, *sample_shape), np.float32) if noise_draws > 0 else None
    std = np.float32(prior_std)
    for i, s in enumerate(seeds):
        x_T[i] = std * np.random.default_rng([int(s) % _SEED_MOD, 0]).standard_normal(sample_shape).astype(np.float32)
        if noise is not None:
            z = np.random.default_rng([int(s) % _SEED_MOD, 1]).standard_normal((noise_draws, *sample_shape))
            noise[:, i] = z.astype(np.float32)
    return x_T, noise


# --- metadata -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepTable:
    """A dynamic-steps graph's inputs for one step count: ``labels`` [N], ``coefficients`` float32 [N, 2, 2W + 2],
    ``noise_index`` [N] (-1: no noise on that evaluation), ``noise_draws`` K."""

    labels: np.ndarray
    coefficients: np.ndarray
    noise_index: np.ndarray
    noise_draws: int


@dataclass(frozen=True)
class GraphInfo:
    """What the metadata of an sdeflow graph says (``OnnxSampler.info``); every key is validated on load."""

    sampler: str
    options: dict
    grid: dict
    steps: int
    nfe: int
    noise_draws: int
    sample_shape: tuple[int, ...]
    prior_std: float
    dynamic_steps: tuple[int, ...]
    tables: dict[int, StepTable]
    sdeflow_version: str
    properties: dict
    num_classes: int | None = None  # K of a guided graph (inputs class_labels, guidance); None otherwise

    def noise_draws_for(self, steps: int) -> int:
        """K, the normals the sampler draws with ``steps`` steps (the first dimension of ``noise``)."""
        return self.tables[steps].noise_draws if self.tables else self.noise_draws


def _bad(key: str, expected: str, got: Any, path: Path) -> ValueError:
    return ValueError(
        f"{path}: metadata key {key!r} must be {expected}; got {got!r}. The file was edited or is corrupt: "
        "re-export it with sdeflow.export.export_sampler or `sdeflow export`."
    )


def _get(meta: dict[str, str], key: str, path: Path) -> str:
    if key not in meta:
        raise ValueError(
            f"{path}: metadata key {key!r} is missing. The file was edited or written by an older sdeflow: "
            "re-export it with sdeflow.export.export_sampler or `sdeflow export`."
        )
    return meta[key]


def _json(meta: dict[str, str], key: str, path: Path, kind: type) -> Any:
    raw = _get(meta, key, path)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise _bad(key, f"JSON ({kind.__name__})", raw[:80], path) from None
    if not isinstance(value, kind):
        raise _bad(key, f"a JSON {kind.__name__}", raw[:80], path)
    return value


def _int(meta: dict[str, str], key: str, path: Path, lo: int) -> int:
    raw = _get(meta, key, path)
    try:
        value = int(raw)
    except ValueError:
        raise _bad(key, f"an integer >= {lo}", raw, path) from None
    if value < lo:
        raise _bad(key, f"an integer >= {lo}", raw, path)
    return value


def _table(key: str, s: str, doc: Any, window: int, path: Path) -> StepTable:
    where = f"{key}[steps][{s}]"
    if not isinstance(doc, dict):
        raise _bad(where, "an object", doc, path)
    try:
        labels = np.asarray(doc["labels"])
        coefs = np.asarray(doc["coefficients"], dtype=np.float64)
        index = np.asarray(doc["noise_index"], dtype=np.int64)
        k = int(doc["noise_draws"])
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(where, "an object with labels, coefficients, noise_index, noise_draws", str(err), path) from None
    n = labels.shape[0] if labels.ndim == 1 else -1
    if n < 1 or coefs.shape != (n, 2, 2 * window + 2) or index.shape != (n,):
        raise _bad(
            where,
            f"N labels, coefficients [N, 2, {2 * window + 2}] and noise_index [N]",
            (labels.shape, coefs.shape, index.shape),
            path,
        )
    if not np.isfinite(coefs).all() or np.abs(coefs).max() > 1e12:
        raise _bad(where + "[coefficients]", "finite numbers", "NaN, inf or huge values", path)
    if not np.isfinite(labels.astype(np.float64)).all():
        raise _bad(where + "[labels]", "finite numbers", "NaN or inf", path)
    if k < 0 or index.min() < -1 or index.max() >= k:
        raise _bad(where + "[noise_index]", f"indices in [-1, {k})", index.tolist(), path)
    return StepTable(labels, coefs.astype(np.float32), index, k)


def _read_info(meta: dict[str, str], path: Path, inputs: dict[str, list]) -> GraphInfo:
    """Validate the metadata against itself and the graph's inputs (``inputs``: name -> dims)."""
    if meta.get("sdeflow.format") != FORMAT:
        raise ValueError(
            f"{path} is an ONNX model but not an sdeflow sampler graph (metadata 'sdeflow.format' is "
            f"{meta.get('sdeflow.format')!r}, expected {FORMAT!r}). Export one with sdeflow.export.export_sampler "
            "or `sdeflow export` (graphs of older sdeflow versions must be re-exported)."
        )
    shape = _json(meta, "sdeflow.sample_shape", path, list)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise _bad("sdeflow.sample_shape", "a list of positive integers", shape, path)
    if inputs.get("x_T", [None])[1:] != shape:
        raise _bad("sdeflow.sample_shape", f"the shape of one x_T sample {inputs.get('x_T', [None])[1:]}", shape, path)
    raw_std = _get(meta, "sdeflow.prior_std", path)
    try:
        prior_std = float(raw_std)
    except ValueError:
        raise _bad("sdeflow.prior_std", "a number", raw_std, path) from None
    if not (math.isfinite(prior_std) and 0 < prior_std <= MAX_PRIOR_STD):
        raise _bad("sdeflow.prior_std", f"a finite number in (0, {MAX_PRIOR_STD:g}]", raw_std, path)
    graph = _get(meta, "sdeflow.graph", path)
    if graph not in ("unrolled", "scan"):
        raise _bad("sdeflow.graph", "'unrolled' or 'scan'", graph, path)
    steps = _int(meta, "sdeflow.steps", path, 1)
    nfe = _int(meta, "sdeflow.nfe", path, 1)
    k = _int(meta, "sdeflow.noise_draws", path, 0)
    tables: dict[int, StepTable] = {}
    if graph == "unrolled":
        has_noise = "noise" in inputs
        if has_noise != (k > 0) or (has_noise and inputs["noise"][0] != k):
            want = f"the first dimension of the graph input noise ({inputs['noise'][0]})" if has_noise else "0"
            raise _bad("sdeflow.noise_draws", want, k, path)
    else:
        doc = _json(meta, "sdeflow.dynamic_tables", path, dict)
        window = doc.get("window")
        if not isinstance(window, int) or window < 1:
            raise _bad("sdeflow.dynamic_tables[window]", "an integer >= 1", window, path)
        if inputs.get("coefficients", [None, None, None])[2] != 2 * window + 2:
            raise _bad("sdeflow.dynamic_tables[window]", "the window of the graph's coefficients input", window, path)
        steps_doc = doc.get("steps")
        if not isinstance(steps_doc, dict) or not steps_doc:
            raise _bad("sdeflow.dynamic_tables[steps]", "a non-empty object step count -> table", steps_doc, path)
        for s, tab in steps_doc.items():
            if not s.isdigit() or int(s) < 1:
                raise _bad("sdeflow.dynamic_tables[steps]", "step counts >= 1 as keys", s, path)
            tables[int(s)] = _table("sdeflow.dynamic_tables", s, tab, window, path)
        if steps not in tables:
            raise _bad("sdeflow.steps", f"one of the dynamic step counts {sorted(tables)}", steps, path)
        if tables[steps].noise_draws != k or tables[steps].labels.shape[0] != nfe:
            raise _bad("sdeflow.noise_draws / sdeflow.nfe", "those of the table of sdeflow.steps", (k, nfe), path)
        if ("noise_rows" in inputs) != any(t.noise_draws > 0 for t in tables.values()):
            raise _bad(
                "sdeflow.dynamic_tables", "noise draws exactly when the graph has the input noise_rows", "", path
            )
    if "sdeflow.data" in meta:  # optional (checkpoints record their data); read by picture writers
        _json(meta, "sdeflow.data", path, dict)
    num_classes = None
    if "class_labels" in inputs or "sdeflow.num_classes" in meta:  # a guided graph: both, and the guidance input
        num_classes = _int(meta, "sdeflow.num_classes", path, 1)
        if "class_labels" not in inputs or "guidance" not in inputs:
            raise _bad("sdeflow.num_classes", "a graph with the inputs class_labels and guidance", num_classes, path)
    return GraphInfo(
        sampler=_get(meta, "sdeflow.sampler", path),
        options=_json(meta, "sdeflow.sampler_options", path, dict),
        grid=_json(meta, "sdeflow.grid", path, dict),
        steps=steps,
        nfe=nfe,
        noise_draws=k,
        sample_shape=tuple(shape),
        prior_std=prior_std,
        dynamic_steps=tuple(sorted(tables)),
        tables=tables,
        sdeflow_version=meta.get("sdeflow.version", "?"),
        properties=dict(meta),
        num_classes=num_classes,
    )


# --- sessions -----------------------------------------------------------------------------------------------------
def _cuda_loadable() -> bool:
    """Whether the CUDA execution provider library and its CUDA/cuDNN dependencies load (checked quietly:
    onnxruntime itself logs a loud error when they are missing)."""
    import ctypes

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.is_file():  # Windows or an unusual layout: let onnxruntime decide
        return True
    try:
        ctypes.CDLL(str(lib.parent / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(lib))
    except OSError:
        return False
    return True


def _wanted_providers(providers: str | list[str]) -> list[str]:
    if providers == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if _cuda_loadable() else ["CPUExecutionProvider"]
    if providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if isinstance(providers, (list, tuple)) and all(isinstance(p, str) for p in providers):
        return list(providers)
    raise ValueError(f"Invalid providers {providers!r}. Must be 'auto', 'cpu', 'cuda' or a list of EP names.")


class OnnxSampler:
    """Turn noise into samples with an sdeflow sampler graph under onnxruntime.

    Args:
        path: the ``.onnx`` file written by ``sdeflow.export.export_sampler``.
        providers: 'auto' (CUDA when its provider actually loads, else the CPU, quietly), 'cpu', 'cuda', or a
            list of onnxruntime execution-provider names.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        specialize_batch: build one session per batch size with the batch dimension fixed
            (``add_free_dimension_override_by_name``). onnxruntime then plans static shapes: session start-up
            of an unrolled UNet graph drops from minutes (symbolic batch) to seconds, and runs are faster.
            Sessions are created on first use of a batch size and the last ``max_sessions`` are kept.
        cuda_graph: capture the unrolled graph as a CUDA graph (onnxruntime's ``enable_cuda_graph``) and replay
            it: inputs and output live in device buffers bound once per batch size (static shapes). Needs the
            CUDA provider and an unrolled graph (a Scan graph cannot be captured).

    ``device`` is 'cuda' or 'cpu'; on CUDA ``run`` binds inputs and output on the device (I/O binding).
    """

    def __init__(
        self,
        path: str | Path,
        providers: str | list[str] = "auto",
        threads: int | None = None,
        specialize_batch: bool = True,
        max_sessions: int = 4,
        cuda_graph: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No ONNX model at {self.path}; export one with `sdeflow export`.")
        self._model = self.path.read_bytes()
        self._threads = threads
        self._specialize = bool(specialize_batch) or bool(cuda_graph)
        self._max_sessions = max(1, int(max_sessions))
        self._sessions: dict[int | None, ort.InferenceSession] = {}
        self._bound: dict[int, tuple[Any, dict[str, Any], Any]] = {}
        self._auto = providers == "auto"
        self._providers = _wanted_providers(providers)
        self._cuda_graph = False
        first = self._session(1 if self._specialize else None)
        self._providers = first.get_providers()  # what actually loaded; later sessions ask for just that
        self._auto = False
        dims = {i.name: list(i.shape) for i in first.get_inputs()}
        types = {i.name: i.type for i in first.get_inputs()}
        self._label_dtype = np.int64 if types.get("labels") == "tensor(int64)" else np.float32  # Scan graphs
        self.info = _read_info(first.get_modelmeta().custom_metadata_map, self.path, dims)
        self.device = "cuda" if self._providers[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = list(dims)
        if cuda_graph:
            if self.device != "cuda":
                raise ValueError(
                    "`cuda_graph=True` needs the CUDA execution provider, but this session runs on the CPU "
                    f"(providers {self._providers}); use cuda_graph=False or a machine with a CUDA onnxruntime."
                )
            if self.info.dynamic_steps:
                raise ValueError(
                    "`cuda_graph=True` needs static shapes: a dynamic-steps (Scan) graph cannot be captured. "
                    "Export the unrolled form (dynamic_steps=None) or use cuda_graph=False."
                )
            self._cuda_graph = True
            self._sessions.clear()

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses (``session.get_providers()``)."""
        return list(self._providers)

    def _session(self, batch: int | None) -> ort.InferenceSession:
        key = batch if self._specialize else None
        if key in self._sessions:
            return self._sessions[key]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if self._threads is not None:
            opts.intra_op_num_threads = int(self._threads)
            opts.inter_op_num_threads = 1
        if key is not None:
            opts.add_free_dimension_override_by_name("B", int(key))
        try:
            session = self._create(opts)
        except (ValueError, TypeError):
            raise
        except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            raise ValueError(
                f"{self.path} is not a loadable ONNX model ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:300]}). Re-export it with `sdeflow export`."
            ) from None
        if len(self._sessions) >= self._max_sessions:
            old = next(iter(self._sessions))
            self._sessions.pop(old)
            self._bound.pop(old, None)  # type: ignore[arg-type]
        self._sessions[key] = session
        return session

    def _create(self, opts: ort.SessionOptions) -> ort.InferenceSession:
        options = [
            {"enable_cuda_graph": "1"} if p == "CUDAExecutionProvider" and self._cuda_graph else {}
            for p in self._providers
        ]
        if self._providers[0] != "CUDAExecutionProvider" or not self._auto:
            return ort.InferenceSession(self._model, opts, providers=self._providers, provider_options=options)
        # A CUDA EP that passed the library probe can still fail to start (no device): onnxruntime logs an error
        # and falls back to the CPU. With providers='auto' keep that quiet through this session's own log level;
        # session.get_providers() tells. The process-wide default logger is left alone: onnxruntime has no getter,
        # so a changed level could not be given back to whoever set it.
        level = opts.log_severity_level
        opts.log_severity_level = 4
        try:
            return ort.InferenceSession(self._model, opts, providers=self._providers)
        except Exception:
            self._providers = ["CPUExecutionProvider"]
            opts.log_severity_level = level
            return ort.InferenceSession(self._model, opts, providers=self._providers)

    def _check(self, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"`{name}` must be a numpy array; got {type(value).__name__}.")
        if value.dtype != np.float32:
            raise TypeError(f"`{name}` must have dtype float32; got {value.dtype}. Convert with .astype(np.float32).")
        if value.shape != shape:
            raise ValueError(
                f"`{name}` must have shape [{', '.join(str(d) for d in shape)}] ([K, B, *sample_shape] for noise, "
                f"[B, *sample_shape] for x_T; sample_shape = {list(self.info.sample_shape)}); got {list(value.shape)}."
            )
        if not np.isfinite(value).all():
            bad = np.flatnonzero(~np.isfinite(value.reshape(-1))).size
            raise ValueError(
                f"`{name}` contains {bad} NaN or inf values; pass finite standard normal draws (x_T times the prior "
                "std), e.g. from OnnxSampler.draw(batch_size, seed)."
            )
        return np.ascontiguousarray(value)

    def _steps(self, steps: int | None) -> int:
        info = self.info
        if steps is None:
            return info.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise TypeError(f"`steps` must be an integer; got {steps!r}.")
        if info.dynamic_steps:
            if int(steps) not in info.tables:
                raise ValueError(
                    f"This dynamic-steps graph offers steps in {list(info.dynamic_steps)}; got steps={steps}. "
                    "Re-export with dynamic_steps=(...) including it."
                )
        elif steps != info.steps:
            raise ValueError(
                f"This graph unrolls {info.steps} steps; got steps={steps}. Export with dynamic_steps=(...) to "
                "choose the step count at run time, or re-export with the steps you need."
            )
        return int(steps)

    def run(
        self,
        x_T: np.ndarray,
        noise: np.ndarray | None = None,
        steps: int | None = None,
        allow_nonfinite: bool = False,
        class_labels: np.ndarray | None = None,
        guidance: float = 0.0,
    ) -> np.ndarray:
        """x_0 [B, *sample_shape] from x_T [B, *sample_shape] (and noise [K, B, *sample_shape] when the sampler
        draws K > 0 normals: ``info.noise_draws_for(steps)``).

        A guided graph (``info.num_classes`` = C) needs ``class_labels`` int [B] (0..C-1, C = no label) and takes
        the guidance weight w (``guidance``: out = out_c + w (out_c - out_u), diffusers' guidance_scale = 1 + w).

        ``steps`` may differ from the exported S only for a dynamic-steps graph, among ``info.dynamic_steps``.
        Non-finite outputs raise ``NonFiniteOutputError`` naming the samples, unless ``allow_nonfinite``.
        """
        info = self.info
        if not isinstance(x_T, np.ndarray) or x_T.ndim < 1:
            raise TypeError(f"`x_T` must be a numpy array of shape [B, *{list(info.sample_shape)}].")
        b = x_T.shape[0]
        s = self._steps(steps)
        k = info.noise_draws_for(s)
        feeds = {"x_T": self._check("x_T", x_T, (b, *info.sample_shape))}
        feeds.update(self._condition(b, class_labels, guidance))
        if k > 0:
            if noise is None:
                raise ValueError(
                    f"This {info.sampler} graph draws K = {k} normals and needs `noise` float32 [K, B, *sample_shape] "
                    f"= [{k}, {b}, {', '.join(map(str, info.sample_shape))}]; or call sample(batch_size, seed)."
                )
            noise = self._check("noise", noise, (k, b, *info.sample_shape))
        elif noise is not None:
            raise ValueError(f"This {info.sampler} graph is deterministic (K = 0) and takes no `noise`; pass None.")
        if info.dynamic_steps:
            table = info.tables[s]
            feeds["labels"] = table.labels.astype(self._label_dtype)
            feeds["coefficients"] = table.coefficients
            if "noise_rows" in self.input_names:
                rows = np.zeros((table.labels.shape[0], b, *info.sample_shape), np.float32)
                drawn = table.noise_index >= 0
                if drawn.any():
                    assert noise is not None  # checked above: a graph that draws is given its noise
                    rows[drawn] = noise[table.noise_index[drawn]]
                feeds["noise_rows"] = rows
        elif noise is not None:
            feeds["noise"] = noise
        out = self._execute(b, feeds)
        if not allow_nonfinite:
            bad = np.flatnonzero(~np.isfinite(out.reshape(b, -1)).all(axis=1)).tolist()
            if bad:
                raise NonFiniteOutputError(
                    f"The graph returned NaN or inf for {len(bad)} of {b} samples (indices {bad[:10]}): the network "
                    "or the sampler diverged. Check the inputs, try more steps or another sampler; "
                    "run(..., allow_nonfinite=True) returns the output as is.",
                    bad,
                )
        return out

    def _condition(self, b: int, class_labels: Any, guidance: Any) -> dict[str, np.ndarray]:
        """The feeds class_labels int64 [B] and guidance float32 [] of a guided graph, checked."""
        k = self.info.num_classes
        if k is None:
            if class_labels is not None or (guidance not in (None, 0, 0.0)):
                raise ValueError(f"{self.path} is not a guided graph (no class_labels input); pass no class labels or "
                                 "guidance, or export with guided=True (`sdeflow export --guided`).")
            return {}
        if class_labels is None:
            raise ValueError(f"{self.path} is a guided graph of {k} classes: pass class_labels, int [B] in 0..{k - 1} "
                             f"({k} = no label), e.g. np.full(B, 3).")
        lab = np.asarray(class_labels)
        if lab.shape != (b,) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"`class_labels` must be an integer array of shape [B] = [{b}]; got shape "
                             f"{list(lab.shape)}, dtype {lab.dtype}.")
        if lab.size and (lab.min() < 0 or lab.max() > k):
            raise ValueError(f"`class_labels` must lie in 0..{k - 1} ({k} = no label); got {lab.min()}..{lab.max()}.")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)) or not \
                math.isfinite(float(guidance)):
            raise ValueError(f"`guidance` must be a finite number (the weight w); got {guidance!r}.")
        return {"class_labels": np.ascontiguousarray(lab.astype(np.int64)),
                "guidance": np.asarray(float(guidance), dtype=np.float32)}

    def _execute(self, b: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self._session(b)
        if self.device != "cuda":
            return np.asarray(session.run(["x_0"], feeds)[0])
        if not self._cuda_graph:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
            binding.bind_output("x_0", "cuda", 0)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        # CUDA graphs: the captured graph reads and writes fixed device addresses, so the buffers are bound once
        # per batch size and refilled in place; the first run captures, later runs replay.
        if b not in self._bound:
            binding = session.io_binding()
            values = {n: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for n, v in feeds.items()}
            out = ort.OrtValue.ortvalue_from_shape_and_type([b, *self.info.sample_shape], np.float32, "cuda", 0)
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("x_0", out)
            self._bound[b] = (binding, values, out)
        binding, values, out = self._bound[b]
        for name, value in feeds.items():
            values[name].update_inplace(value)
        session.run_with_iobinding(binding)
        return out.numpy()

    def sample(
        self,
        batch_size: int,
        seed: int = 0,
        steps: int | None = None,
        class_labels: np.ndarray | None = None,
        guidance: float = 0.0,
    ) -> np.ndarray:
        """Draw ``batch_size`` samples with the per-sample seeds seed + i (module docstring): sample i is the same
        whatever the batch size, and the same as ``sdeflow.sample(..., seed=seed)`` gives in PyTorch
        (``class_labels`` and ``guidance``: guided graphs, as in ``run``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}.")
        s = self._steps(steps)
        x_T, noise = self.draw(int(batch_size), seed, s)
        return self.run(x_T, noise, s, class_labels=class_labels, guidance=guidance)

    def draw(self, batch_size: int, seed: int, steps: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The x_T [B, ...] (times the prior std) and noise [K, B, ...] (None when K = 0) that ``sample`` uses."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an integer; got {seed!r}.")
        k = self.info.noise_draws_for(self._steps(steps))
        seeds = [(int(seed) + i) % _SEED_MOD for i in range(int(batch_size))]
        return draw_inputs(seeds, self.info.sample_shape, self.info.prior_std, k)


# --- pictures of samples with numpy + zlib only: image grids, a 2-D point raster, PNG files ------------------------
# sdeflow.images builds on these (one grid layout for every command); matplotlib is never needed here.
ARRAY_FORMATS = (".npy", ".npz")
GRID_MIN_SIZE = 512  # default: the smallest integer upscaling that makes the grid's long side at least this many px


def is_image_shape(sample_shape: tuple[int, ...]) -> bool:
    """Whether samples of this shape are images [C, H, W] with C = 1 (grey) or 3 (RGB)."""
    return len(sample_shape) == 3 and sample_shape[0] in (1, 3)


def grid_layout(n: int, columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` cells: columns = ceil(sqrt(n)) unless given, rows = ceil(n / columns)."""
    cols = int(columns) if columns is not None else max(1, int(np.ceil(np.sqrt(n))))
    if cols < 1:
        raise ValueError(f"`columns` must be an integer >= 1; got {columns!r}.")
    return max(1, -(-n // cols)), cols


def grid_scale(rows: int, cols: int, height: int, width: int, border: int, min_size: int = GRID_MIN_SIZE) -> int:
    """The smallest integer s >= 1 with max(rows h s + (rows + 1) b, cols w s + (cols + 1) b) >= ``min_size``."""
    need_h = -(-(min_size - (rows + 1) * border) // (rows * height))
    need_w = -(-(min_size - (cols + 1) * border) // (cols * width))
    return max(1, min(need_h, need_w))


def to_pixels(x: np.ndarray, data_scale: float = 2.0, data_offset: float = -1.0) -> np.ndarray:
    """Model-space values x = data_scale * y + data_offset back to 8-bit pixels min(floor(256 clip(y, 0, 1)), 255).

    This is the inverse of 8-bit dequantisation (docs/math.md section 5): the bin centres y = (k + 1/2) / 256 of
    pixel values k come back as k exactly (and data with K levels is spread evenly over 0..255)."""
    if not np.isfinite(data_scale) or data_scale <= 0 or not np.isfinite(data_offset):
        raise ValueError(
            f"The data scaling must be finite with scale > 0 (x = scale * y + offset); got scale={data_scale}, "
            f"offset={data_offset}."
        )
    y = (np.asarray(x, dtype=np.float64) - data_offset) / data_scale
    return np.minimum(np.floor(256 * np.clip(y, 0.0, 1.0)), 255).astype(np.uint8)


def image_grid(
    images: np.ndarray,
    *,
    data_scale: float = 2.0,
    data_offset: float = -1.0,
    scale: int | None = None,
    columns: int | None = None,
    border: int = 2,
    border_value: int = 128,
    min_size: int = GRID_MIN_SIZE,
) -> np.ndarray:
    """A legible grid of images [B, C, H, W] (C = 1 or 3, model space) as uint8 pixels [H_g, W_g] or [H_g, W_g, 3].

    Pixel values come back through the data's own scaling: y = (x - data_offset) / data_scale, pixel =
    min(floor(256 clip(y, 0, 1)), 255) (``to_pixels``; the defaults undo [-1, 1]). Each image is upscaled by
    nearest neighbour by the integer ``scale`` (default: the smallest s >= 1 giving a long side >= ``min_size`` px,
    ``grid_scale``). Image i sits in row i // cols, column i % cols (``grid_layout``); cells are separated and
    framed by ``border`` px of grey ``border_value``, so
        H_g = rows H s + (rows + 1) border,   W_g = cols W s + (cols + 1) border,
    and the cell of image i starts at (border + r (H s + border), border + c (W s + border)).
    """
    x = np.asarray(images)
    if x.ndim != 4 or not is_image_shape(x.shape[1:]) or x.shape[0] < 1:
        raise ValueError(
            f"`images` must have shape [B, C, H, W] with B >= 1 and C = 1 or 3; got {list(x.shape)}. "
            "Save other samples as .npy or .npz."
        )
    if not np.isfinite(x).all():
        raise ValueError(
            f"`images` holds {int((~np.isfinite(x)).sum())} NaN or infinite values (a diverged sampler?); "
            "save them as .npy to inspect."
        )
    for name, value, low in (("border", border, 0), ("border_value", border_value, 0), ("min_size", min_size, 1)):
        if isinstance(value, bool) or int(value) != value or value < low or (name == "border_value" and value > 255):
            raise ValueError(f"`{name}` must be an integer >= {low}{' and <= 255' if name == 'border_value' else ''}; "
                             f"got {value!r}.")
    b, c, h, w = x.shape
    rows, cols = grid_layout(b, columns)
    if scale is None:
        scale = grid_scale(rows, cols, h, w, border, min_size)
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"`scale` must be an integer >= 1 (the upscaling factor of each image); got {scale!r}.")
    s, bd = int(scale), int(border)
    cells = to_pixels(x, data_scale, data_offset).transpose(0, 2, 3, 1)  # [B, H, W, C]
    cells = cells.repeat(s, axis=1).repeat(s, axis=2)  # nearest-neighbour upscaling
    grid = np.full((rows * h * s + (rows + 1) * bd, cols * w * s + (cols + 1) * bd, c), border_value, np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        top, left = bd + r * (h * s + bd), bd + q * (w * s + bd)
        grid[top : top + h * s, left : left + w * s] = cells[i]
    return grid[..., 0] if c == 1 else grid


def points_raster(points: np.ndarray, size: int = GRID_MIN_SIZE, dot: int = 3) -> np.ndarray:
    """2-D points [N, 2] drawn as dark ``dot`` x ``dot`` squares on a white ``size`` x ``size`` uint8 image, equal
    axes (one scale for x and y, 5% margin), y upwards, framed by a 1-px grey border: the matplotlib-free picture
    of 2-D samples."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1 or not np.isfinite(p).all():
        raise ValueError(f"`points` must be finite with shape [N, 2], N >= 1; got {list(p.shape)}.")
    lo, hi = p.min(0), p.max(0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-12) * 1.05
    inner = size - 2 - dot
    col = np.round((p[:, 0] - centre[0] + half) / (2 * half) * inner).astype(np.int64) + 1
    row = np.round((centre[1] + half - p[:, 1]) / (2 * half) * inner).astype(np.int64) + 1
    img = np.full((size, size), 255, np.uint8)
    for dr in range(dot):
        for dc in range(dot):
            img[row + dr, col + dc] = 40
    img[[0, -1], :], img[:, [0, -1]] = 128, 128
    return img


def encode_png(image: np.ndarray) -> bytes:
    """PNG file bytes of uint8 pixels [H, W] (grey) or [H, W, 3] (RGB): 8-bit, no filtering, zlib-compressed."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or 0 in img.shape:
        raise ValueError(f"`image` must be uint8 [H, W] or [H, W, 3]; got {img.dtype} {list(img.shape)}.")
    h, w = img.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, -1)], axis=1)  # filter type 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0 if img.ndim == 2 else 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def encode_arrays(samples: np.ndarray, suffix: str) -> bytes:
    """The bytes of an .npy file (the array) or an .npz file (one array named 'samples')."""
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, samples)
    elif suffix == ".npz":
        np.savez(buf, samples=samples)
    else:
        raise ValueError(f"Array files end in {' or '.join(ARRAY_FORMATS)}; got {suffix!r}.")
    return buf.getvalue()


def samples_png(samples: np.ndarray, data: dict | None = None, scale: int | None = None) -> bytes:
    """A PNG of samples: an ``image_grid`` for images (``data``: the data set's 'scale' and 'offset', default
    [-1, 1]) or a ``points_raster`` for 2-D points."""
    x = np.asarray(samples)
    if x.ndim == 4 and is_image_shape(x.shape[1:]):
        data = data or {}
        return encode_png(image_grid(x, data_scale=float(data.get("scale", 2.0)),
                                     data_offset=float(data.get("offset", -1.0)), scale=scale))
    if x.ndim == 2 and x.shape[1] == 2:
        return encode_png(points_raster(x))
    raise ValueError(
        f"No picture for samples of shape {list(x.shape[1:])} (pictures show images [C, H, W] with C = 1 or 3 and "
        f"2-D points); write {' or '.join(ARRAY_FORMATS)} instead."
    )


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a failure leaves any old file intact."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- script entry: python runtime.py model.onnx --batch 16 --seed 0 --out samples.npy ---------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Sample from an sdeflow ONNX sampler graph (numpy + onnxruntime only).")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="dynamic-steps graphs only")
    p.add_argument("--providers", default="auto")
    p.add_argument("--out", default="samples.npy", help="samples.npy / .npz (arrays) or samples.png (a picture)")
    p.add_argument("--scale", type=int, default=None, help="upscaling of image grids (default: long side >= 512 px)")
    p.add_argument("--class", dest="classes", type=int, default=None, help="guided graphs: the class of every sample")
    p.add_argument("--guidance", type=float, default=0.0, help="guided graphs: the guidance weight w (default 0)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (*ARRAY_FORMATS, ".png"):
        p.error(f"--out must end in .npy, .npz or .png; got {out.name!r}.")
    sampler = OnnxSampler(args.model, providers=args.providers)
    shape = sampler.info.sample_shape
    if out.suffix.lower() == ".png" and not (is_image_shape(shape) or shape == (2,)):
        p.error(f"no picture for samples of shape {list(shape)}; use --out samples.npy.")
    labels = None if args.classes is None else np.full(args.batch, args.classes, dtype=np.int64)
    x0 = sampler.sample(args.batch, seed=args.seed, steps=args.steps, class_labels=labels, guidance=args.guidance)
    if out.suffix.lower() == ".png":
        _write_file(out, samples_png(x0, json.loads(sampler.info.properties.get("sdeflow.data", "{}")), args.scale))
    else:
        _write_file(out, encode_arrays(x0, out.suffix.lower()))
    print(f"{args.batch} samples of shape {list(sampler.info.sample_shape)} on {sampler.device} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
