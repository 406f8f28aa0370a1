"""Run an sdeflow DDIM graph under onnxruntime. Needs only numpy and onnxruntime: no torch, no other sdeflow module.

This file is self-contained on purpose. Importing ``sdeflow.export`` imports the parent package ``sdeflow`` and
with it torch, so a deployment without torch copies this one file next to its ``model.onnx`` and loads it by
path (or runs it as a script: ``python runtime.py model.onnx --batch 16 --out samples.npy``). Inside sdeflow
the same module is ``sdeflow.export.runtime``, and the exporter builds its DDIM schedule with the functions
below, so the exported constants and the run-time schedule of a dynamic-steps graph come from one place.

The graph contract (written by ``sdeflow.export.export_ddim``):
    inputs   x_T    float32 [B, *sample_shape]        (B dynamic)
             noise  float32 [S, B, *sample_shape]     (only when eta > 0: z of every DDIM step)
             timesteps [S] (float32 or int64) and coefficients float32 [S, 3]   (dynamic-steps graphs only)
    output   x_0    float32 [B, *sample_shape]
Every DDIM step k is x <- A_k x + B_k net(x, label_k) + sig_k z_k with (A_k, B_k, sig_k) computed in float64
(``ddim_plan``); the metadata key ``sdeflow.config`` holds the JSON that rebuilds the plan.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "OnnxSampler", "GraphInfo", "DDIMPlan", "ddim_plan", "time_grid", "ddim_coefficients", "main",
    "image_grid", "points_raster", "encode_png", "encode_arrays", "samples_png",
]

FORMAT = "sdeflow-ddim/1"  # value of the metadata key "sdeflow.format"
CONTINUOUS_GRIDS = ("uniform", "quadratic", "logsnr", "karras")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")


# --- the DDIM schedule in float64 numpy (mirrors sdeflow.sde and sdeflow.sampling.grids; tests compare) -----------
def _log_alpha_vp(sde: dict, t: np.ndarray) -> np.ndarray:
    b0, b1 = float(sde["beta_min"]), float(sde["beta_max"])
    return -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0


def _t_from_log_alpha_vp(sde: dict, log_alpha: np.ndarray) -> np.ndarray:
    # a t^2 + b t - c = 0 with a = (b1 - b0)/4, b = b0/2, c = -log alpha, solved as t = 2c / (b + sqrt(b^2 + 4ac))
    a, b = 0.25 * (float(sde["beta_max"]) - float(sde["beta_min"])), 0.5 * float(sde["beta_min"])
    return 2 * -log_alpha / (b + np.sqrt(b * b - 4 * a * log_alpha))


def alpha_sigma(sde: dict, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha(t), sigma(t) of the SDE described by ``sde`` (``SDE.config()``) in float64 (MATH.md section 1).

    VP: log alpha = -t^2 (b1 - b0)/4 - t b0/2, sigma = sqrt(1 - alpha^2); sub-VP: sigma = 1 - alpha^2;
    VE: alpha = 1, sigma = smin sqrt(exp(2 t ln(smax/smin)) - 1).
    """
    t = np.asarray(t, dtype=np.float64)
    kind = sde.get("type")
    if kind in ("VPSDE", "SubVPSDE"):
        log_alpha = _log_alpha_vp(sde, t)
        one_minus_a2 = -np.expm1(2 * log_alpha)
        return np.exp(log_alpha), (np.sqrt(one_minus_a2) if kind == "VPSDE" else one_minus_a2)
    if kind == "VESDE":
        smin, smax = float(sde["sigma_min"]), float(sde["sigma_max"])
        return np.ones_like(t), smin * np.sqrt(np.expm1(2 * t * np.log(smax / smin)))
    raise ValueError(f"Unknown SDE type {kind!r}. Must be one of ['SubVPSDE', 'VESDE', 'VPSDE'].")


def log_snr(sde: dict, t: np.ndarray) -> np.ndarray:
    """lambda(t) = log(alpha(t) / sigma(t))."""
    alpha, sigma = alpha_sigma(sde, t)
    return np.log(alpha) - np.log(sigma)


def t_from_log_snr(sde: dict, lam: np.ndarray) -> np.ndarray:
    """The inverse of ``log_snr`` (VP: alpha^2 = sigmoid(2 lambda); sub-VP: alpha/(1 - alpha^2) = e^lambda;
    VE: sigma = e^-lambda)."""
    kind = sde.get("type")
    if kind == "VPSDE":
        return _t_from_log_alpha_vp(sde, -0.5 * np.logaddexp(0.0, -2 * lam))
    if kind == "SubVPSDE":
        alpha = 2 * np.exp(lam) / (1 + np.sqrt(1 + 4 * np.exp(2 * lam)))
        return _t_from_log_alpha_vp(sde, np.log(alpha))
    smin, smax = float(sde["sigma_min"]), float(sde["sigma_max"])
    return np.log1p(np.exp(-2 * lam) / smin**2) / (2 * np.log(smax / smin))


def discrete_timesteps(n: int, steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The S decreasing DDPM timesteps of a spacing (diffusers' DDIMScheduler): 'leading' arange(S) * (N // S)
    reversed (+ steps_offset); 'trailing' round(arange(N, 0, -N/S)) - 1; 'linspace' round(linspace(0, N-1, S))
    reversed."""
    if not 1 <= steps <= n:
        raise ValueError(f"`steps` must lie in [1, N] = [1, {n}] on the discrete schedule; got {steps}.")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"Invalid spacing {spacing!r}. Must be one of {DISCRETE_SPACINGS}.")
    return np.ascontiguousarray(ts)


def time_grid(config: dict, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The S + 1 decreasing grid points (t, alpha, sigma, DDPM timesteps or None), as ``sdeflow.sampling``
    builds them: a discrete spacing on abar_i (timestep i is t = (i + 1)/N) followed by abar = 1 (timestep -1,
    ``set_alpha_to_one``) or abar_0; or a continuous grid on [eps, T] ('uniform' in t, 'quadratic', 'logsnr'
    uniform in log-SNR, 'karras' with rho), optionally followed by t = 0, sigma = 0."""
    grid, sde, one = config["grid"], config["sde"], bool(config["set_alpha_to_one"])
    if grid in DISCRETE_SPACINGS:
        n = int(config["N"])
        if sde.get("type") != "VPSDE":
            raise ValueError(f"The discrete spacing {grid!r} needs a VPSDE; got {sde.get('type')!r}.")
        betas = np.linspace(float(sde["beta_min"]) / n, float(sde["beta_max"]) / n, n, dtype=np.float64)
        abar = np.cumprod(1.0 - betas)
        ts = discrete_timesteps(n, steps, grid, int(config.get("steps_offset", 0)))
        ts = np.append(ts, -1 if one else 0)
        ab = np.where(ts >= 0, abar[np.maximum(ts, 0)], 1.0)
        t = np.where(ts >= 0, (ts + 1) / n, 0.0)
        return t, np.sqrt(ab), np.sqrt(1 - ab), ts
    if grid not in CONTINUOUS_GRIDS:
        raise ValueError(f"Invalid grid {grid!r}. Must be one of {CONTINUOUS_GRIDS + DISCRETE_SPACINGS}.")
    T, eps, rho = float(config["T"]), float(config["eps"]), float(config.get("rho", 7.0))  # noqa: N806
    m = steps if one else steps + 1
    u = np.linspace(0, 1, m) if m > 1 else np.zeros(1)
    if grid == "uniform":
        t = T + u * (eps - T)
    elif grid == "quadratic":
        t = eps + (T - eps) * (1 - u) ** 2
    elif grid == "logsnr":
        lam = log_snr(sde, np.array([T, eps]))
        t = t_from_log_snr(sde, lam[0] + u * (lam[1] - lam[0]))
    else:
        s_max, s_min = np.exp(-log_snr(sde, np.array([T, eps])))
        s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = t_from_log_snr(sde, -np.log(s))
    t[0] = T
    if m > 1:
        t[-1] = eps
    if one:
        t = np.append(t, 0.0)
    alpha, sigma = alpha_sigma(sde, t)
    return t, alpha, np.where(t == 0, 0.0, sigma), None


def time_labels(time_label: dict, t: np.ndarray) -> np.ndarray:
    """The network's time input for continuous times t (float64), as ``sdeflow.parametrization`` maps them."""
    kind = time_label.get("type")
    if kind == "ContinuousTime":
        return t
    if kind == "DDPMTimesteps":
        n = int(time_label["N"])
        label = np.clip(t * n - 1, 0, n - 1)
        return np.round(label).astype(np.int64) if time_label.get("integer") else label
    if kind == "ScoreSDETime":
        return t * (int(time_label["N"]) - 1)
    if kind == "LogNoiseLevel":  # c_noise = log(sigma / alpha) / 4
        alpha, sigma = alpha_sigma(time_label["sde"], t)
        return 0.25 * (np.log(sigma) - np.log(alpha))
    raise ValueError(
        f"Unknown time label {kind!r}. Must be ContinuousTime, DDPMTimesteps, ScoreSDETime or LogNoiseLevel."
    )


@dataclass(frozen=True)
class DDIMPlan:
    """Step k goes from grid point k to k + 1 (float64 [S + 1] arrays t, alpha, sigma) calling the network with
    ``labels[k]``; ``coefficients`` [S, 3] = (A, B, sig) with x_{k+1} = A x_k + B out_k + sig z_k."""

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    labels: np.ndarray
    coefficients: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.labels.shape[0])


def ddim_coefficients(
    alpha_t: np.ndarray, sigma_t: np.ndarray, alpha_s: np.ndarray, sigma_s: np.ndarray, eta: float, prediction: str
) -> np.ndarray:
    """Fused DDIM coefficients (A, B, sig), float64 [S, 3] (MATH.md section 4 with general alpha, sigma):

        x0_hat = (x_t - sigma_t eps_hat) / alpha_t
        sig    = eta (sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)
        x_s    = alpha_s x0_hat + sqrt(sigma_s^2 - sig^2) eps_hat + sig z
    (VP: alpha^2 = abar and sig = eta sqrt((1-abar_s)/(1-abar_t)) sqrt(1-abar_t/abar_s)). With the network
    output ``out`` and eps_hat = p x_t + q out (eps: p = 0, q = 1; x0: 1/sigma, -alpha/sigma;
    v: sigma/(alpha^2+sigma^2), alpha/(alpha^2+sigma^2); score: 0, -sigma) this is x_s = A x_t + B out + sig z.
    """
    a_t, s_t, a_s, s_s = (np.asarray(v, dtype=np.float64) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    var_ts = np.maximum(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)  # sigma_{t|s}^2
    sig = eta * (s_s / s_t) * np.sqrt(var_ts)
    c2 = np.sqrt(np.maximum(s_s**2 - sig**2, 0.0)) - a_s * s_t / a_t
    zero, one = np.zeros_like(a_t), np.ones_like(a_t)
    p, q = {
        "eps": (zero, one),
        "x0": (1 / s_t, -a_t / s_t),
        "v": (s_t / (a_t**2 + s_t**2), a_t / (a_t**2 + s_t**2)),
        "score": (zero, -s_t),
    }[prediction]
    return np.stack([a_s / a_t + c2 * p, c2 * q, sig], axis=1)


def ddim_plan(config: dict, steps: int) -> DDIMPlan:
    """The DDIM plan with ``steps`` steps for ``config`` (the JSON under the metadata key ``sdeflow.config``)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1; got {steps!r}.")
    t, alpha, sigma, ts = time_grid(config, int(steps))
    label = config["time_label"]
    if ts is not None and label.get("type") == "DDPMTimesteps":  # the network sees the timestep itself
        labels = ts[:-1] if label.get("integer") else ts[:-1].astype(np.float64)
    else:
        labels = time_labels(label, t[:-1])
    coefs = ddim_coefficients(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:], float(config["eta"]), config["prediction"])
    return DDIMPlan(t=t, alpha=alpha, sigma=sigma, labels=labels, coefficients=coefs)


# --- the runner ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphInfo:
    """What the metadata of an sdeflow DDIM graph says (``OnnxSampler.info``)."""

    steps: int
    eta: float
    sample_shape: tuple[int, ...]
    dynamic_steps: bool
    prior_std: float
    config: dict
    sdeflow_version: str
    properties: dict


def _read_info(meta: dict[str, str], path: Path) -> GraphInfo:
    if meta.get("sdeflow.format") != FORMAT:
        raise ValueError(
            f"{path} is an ONNX model but not an sdeflow DDIM graph (metadata 'sdeflow.format' is "
            f"{meta.get('sdeflow.format')!r}, expected {FORMAT!r}). Export one with sdeflow.export.export_ddim."
        )
    config = json.loads(meta["sdeflow.config"])
    return GraphInfo(
        steps=int(meta["sdeflow.steps"]),
        eta=float(meta["sdeflow.eta"]),
        sample_shape=tuple(json.loads(meta["sdeflow.sample_shape"])),
        dynamic_steps=meta.get("sdeflow.graph") == "scan",
        prior_std=float(meta["sdeflow.prior_std"]),
        config=config,
        sdeflow_version=meta.get("sdeflow.version", "?"),
        properties=dict(meta),
    )


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
    """Turn noise into samples with an sdeflow DDIM graph under onnxruntime.

    Args:
        path: the ``.onnx`` file written by ``sdeflow.export.export_ddim``.
        providers: 'auto' (CUDA when its provider actually loads, else the CPU, quietly), 'cpu', 'cuda', or a
            list of onnxruntime execution-provider names.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        specialize_batch: build one session per batch size with the batch dimension fixed
            (``add_free_dimension_override_by_name``). onnxruntime then plans static shapes: session start-up
            of an unrolled UNet graph drops from minutes (symbolic batch) to seconds, and runs are faster.
            Sessions are created on first use of a batch size and the last ``max_sessions`` are kept.

    ``device`` is 'cuda' or 'cpu'; on CUDA ``run`` binds inputs and output on the device (I/O binding).
    """

    def __init__(
        self,
        path: str | Path,
        providers: str | list[str] = "auto",
        threads: int | None = None,
        specialize_batch: bool = True,
        max_sessions: int = 4,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No ONNX model at {self.path}; export one with `sdeflow export`.")
        self._model = self.path.read_bytes()
        self._threads = threads
        self._specialize = bool(specialize_batch)
        self._max_sessions = max(1, int(max_sessions))
        self._sessions: dict[int | None, ort.InferenceSession] = {}
        self._auto = providers == "auto"
        self._providers = _wanted_providers(providers)
        first = self._session(1 if self._specialize else None)
        self._providers = first.get_providers()  # what actually loaded; later sessions ask for just that
        self._auto = False
        self.info = _read_info(first.get_modelmeta().custom_metadata_map, self.path)
        self.device = "cuda" if self._providers[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = [i.name for i in first.get_inputs()]

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
                f"{str(err).splitlines()[0][:300]}). Re-export it with sdeflow.export.export_ddim or `sdeflow export`."
            ) from None
        if len(self._sessions) >= self._max_sessions:
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = session
        return session

    def _create(self, opts: ort.SessionOptions) -> ort.InferenceSession:
        if self._providers[0] != "CUDAExecutionProvider" or not self._auto:
            return ort.InferenceSession(self._model, opts, providers=self._providers)
        # A CUDA EP that passed the library probe can still fail to start (no device): onnxruntime logs an error
        # and falls back to the CPU. With providers='auto' keep that quiet; session.get_providers() tells.
        ort.set_default_logger_severity(4)
        try:
            return ort.InferenceSession(self._model, opts, providers=self._providers)
        except Exception:  # noqa: BLE001 - any CUDA start-up failure means "use the CPU"
            self._providers = ["CPUExecutionProvider"]
            return ort.InferenceSession(self._model, opts, providers=self._providers)
        finally:
            ort.set_default_logger_severity(2)

    def _check(self, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"`{name}` must be a numpy array; got {type(value).__name__}.")
        if value.dtype != np.float32:
            raise TypeError(f"`{name}` must have dtype float32; got {value.dtype}. Convert with .astype(np.float32).")
        if value.shape != shape:
            raise ValueError(
                f"`{name}` must have shape [{', '.join(str(d) for d in shape)}] ([S, B, *sample_shape] for noise, "
                f"[B, *sample_shape] for x_T; sample_shape = {list(self.info.sample_shape)}); got {list(value.shape)}."
            )
        return np.ascontiguousarray(value)

    def run(self, x_T: np.ndarray, noise: np.ndarray | None = None, steps: int | None = None) -> np.ndarray:  # noqa: N803
        """x_0 [B, *sample_shape] from x_T [B, *sample_shape] (and noise [S, B, *sample_shape] when eta > 0).

        ``steps`` may differ from the exported S only for a dynamic-steps graph (``export_ddim(dynamic_steps=True)``).
        """
        info = self.info
        if not isinstance(x_T, np.ndarray) or x_T.ndim < 1:
            raise TypeError(f"`x_T` must be a numpy array of shape [B, *{list(info.sample_shape)}].")
        b = x_T.shape[0]
        feeds = {"x_T": self._check("x_T", x_T, (b, *info.sample_shape))}
        s = info.steps if steps is None else steps
        if steps is not None and steps != info.steps and not info.dynamic_steps:
            raise ValueError(
                f"This graph unrolls {info.steps} steps; got steps={steps}. Export with dynamic_steps=True to choose "
                "the step count at run time, or re-export with the steps you need."
            )
        if info.eta > 0:
            if noise is None:
                raise ValueError(
                    f"This graph has eta={info.eta} > 0 and needs `noise` float32 [S, B, *sample_shape] = "
                    f"[{s}, {b}, {', '.join(map(str, info.sample_shape))}]; or call sample(batch_size, seed)."
                )
            feeds["noise"] = self._check("noise", noise, (s, b, *info.sample_shape))
        elif noise is not None:
            raise ValueError("This graph has eta = 0 and takes no `noise`; pass noise=None.")
        if info.dynamic_steps:
            plan = ddim_plan(info.config, s)
            feeds["timesteps"] = plan.labels.astype(np.int64 if info.config["label_dtype"] == "int64" else np.float32)
            feeds["coefficients"] = plan.coefficients.astype(np.float32)
        session = self._session(b)
        if self.device == "cuda":
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
            binding.bind_output("x_0", "cuda", 0)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return session.run(["x_0"], feeds)[0]

    def sample(self, batch_size: int, seed: int = 0, steps: int | None = None) -> np.ndarray:
        """Draw ``batch_size`` samples. Sample i takes its x_T and noise from numpy's generator seeded with
        (seed, i), so it is the same whatever the batch size."""
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}.")
        x_T, noise = self.draw(int(batch_size), seed, self.info.steps if steps is None else steps)  # noqa: N806
        return self.run(x_T, noise, steps)

    def draw(self, batch_size: int, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The x_T [B, ...] (times the prior std) and noise [S, B, ...] (None when eta = 0) that ``sample`` uses."""
        shape = self.info.sample_shape
        x_T = np.empty((batch_size, *shape), np.float32)  # noqa: N806
        noise = np.empty((steps, batch_size, *shape), np.float32) if self.info.eta > 0 else None
        for i in range(batch_size):
            rng = np.random.default_rng([int(seed), i])
            x_T[i] = self.info.prior_std * rng.standard_normal(shape)
            if noise is not None:
                noise[:, i] = rng.standard_normal((steps, *shape))
        return x_T, noise


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
    p = argparse.ArgumentParser(description="Sample from an sdeflow DDIM ONNX graph (numpy + onnxruntime only).")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="dynamic-steps graphs only")
    p.add_argument("--providers", default="auto")
    p.add_argument("--out", default="samples.npy", help="samples.npy / .npz (arrays) or samples.png (a picture)")
    p.add_argument("--scale", type=int, default=None, help="upscaling of image grids (default: long side >= 512 px)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (*ARRAY_FORMATS, ".png"):
        p.error(f"--out must end in .npy, .npz or .png; got {out.name!r}.")
    sampler = OnnxSampler(args.model, providers=args.providers)
    shape = sampler.info.sample_shape
    if out.suffix.lower() == ".png" and not (is_image_shape(shape) or shape == (2,)):
        p.error(f"no picture for samples of shape {list(shape)}; use --out samples.npy.")
    x0 = sampler.sample(args.batch, seed=args.seed, steps=args.steps)
    if out.suffix.lower() == ".png":
        _write_file(out, samples_png(x0, json.loads(sampler.info.properties.get("sdeflow.data", "{}")), args.scale))
    else:
        _write_file(out, encode_arrays(x0, out.suffix.lower()))
    print(f"{args.batch} samples of shape {list(sampler.info.sample_shape)} on {sampler.device} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
