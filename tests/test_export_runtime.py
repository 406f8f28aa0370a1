"""The torch-free runner (export/runtime.py): its numpy schedule against sdeflow's, DDIM coefficient identities,
import without torch, the CLI commands, and the CUDA path (skipped without a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow import VESDE, VPSDE, DDPMTimesteps, ScoreModel, SubVPSDE
from sdeflow.cli import main as cli_main
from sdeflow.export import OnnxSampler, export_ddim
from sdeflow.export import runtime as rt
from sdeflow.models import MLP
from sdeflow.sampling import time_grid

RUNTIME = Path(rt.__file__)


def _mlp_checkpoint(path: Path, time_label) -> Path:
    """A small untrained 2-D MLP checkpoint (VP, eps prediction) for the CLI and quickstart-export tests."""
    from sdeflow import save
    from sdeflow.models import build_model

    torch.manual_seed(0)
    cfg = {"type": "mlp", "dim": 2, "width": 32, "depth": 1}
    data_info = {"name": "gmm", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    return save(path, build_model(cfg), VPSDE(), "eps", time_label, cfg, data_info)


def _config(sde, grid: str, one: bool) -> dict:
    return {
        "grid": grid,
        "sde": sde.config(),
        "T": sde.T,
        "eps": 1e-3,
        "rho": 7.0,
        "set_alpha_to_one": one,
        "N": 1000,
        "steps_offset": 0,
        "eta": 0.0,
        "prediction": "eps",
        "time_label": {"type": "ContinuousTime"},
    }


_GRIDS = [(sde, grid) for sde in ("vp", "subvp", "ve") for grid in ("uniform", "quadratic", "logsnr", "karras")]
_GRIDS += [("vp", spacing) for spacing in ("leading", "trailing", "linspace")]  # discrete DDPM: VP only
_SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


@pytest.mark.parametrize("name, grid", _GRIDS)
@pytest.mark.parametrize("one", [False, True])
def test_numpy_grid_equals_sdeflow_time_grid(name, grid, one):
    sde = _SDES[name]
    for steps in (1, 7, 50):
        t, alpha, sigma, ts = rt.time_grid(_config(sde, grid, one), steps)
        ref = time_grid(sde, steps, grid, eps=1e-3, set_alpha_to_one=one)
        np.testing.assert_allclose(t, ref.t.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(alpha, ref.alpha.numpy(), rtol=1e-12)
        np.testing.assert_allclose(sigma, ref.sigma.numpy(), rtol=1e-12, atol=1e-300)
        if ref.timesteps is None:
            assert ts is None
        else:
            np.testing.assert_array_equal(ts, ref.timesteps.numpy())


def test_eta0_coefficients_are_the_exponential_integrator():
    """DDIM, eta = 0, eps-prediction: x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_hat, h = lambda_s - lambda_t
    (MATH.md section 4, DPM-Solver-1)."""
    t, alpha, sigma, _ = rt.time_grid(_config(VPSDE(), "uniform", False), 20)
    coef = rt.ddim_coefficients(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:], 0.0, "eps")
    lam = np.log(alpha) - np.log(sigma)
    np.testing.assert_allclose(coef[:, 0], alpha[1:] / alpha[:-1], rtol=1e-13)
    np.testing.assert_allclose(coef[:, 1], -sigma[1:] * np.expm1(lam[1:] - lam[:-1]), rtol=1e-9)
    assert (coef[:, 2] == 0).all()


def test_eta1_noise_is_the_ddpm_posterior_std():
    """Consecutive DDPM timesteps with eta = 1: sig^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t) (MATH.md sec. 4)."""
    cfg = dict(_config(VPSDE(), "linspace", False), eta=1.0)
    t, alpha, sigma, ts = rt.time_grid(cfg, 1000)
    coef = rt.ddim_coefficients(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:], 1.0, "eps")
    sched = VPSDE().discrete(1000)
    beta, abar = sched.betas.numpy()[ts[:-2]], sched.alphas_cumprod.numpy()
    var = beta * (1 - abar[ts[1:-1]]) / (1 - abar[ts[:-2]])
    np.testing.assert_allclose(coef[:-1, 2] ** 2, var, rtol=1e-8)


@pytest.mark.parametrize("pred", ["x0", "v", "score"])
def test_fused_coefficients_match_unfused_formula(pred):
    """A x + B out equals the DDIM step written with x0_hat and eps_hat converted from the prediction."""
    rng = np.random.default_rng(0)
    _, alpha, sigma, _ = rt.time_grid(_config(VPSDE(), "quadratic", True), 9)
    a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    x, out = rng.standard_normal(9), rng.standard_normal(9)
    eps = {"x0": (x - a_t * out) / s_t, "v": (a_t * out + s_t * x) / (a_t**2 + s_t**2), "score": -s_t * out}[pred]
    expected = a_s * (x - s_t * eps) / a_t + s_s * eps
    coef = rt.ddim_coefficients(a_t, s_t, a_s, s_s, 0.0, pred)
    np.testing.assert_allclose(coef[:, 0] * x + coef[:, 1] * out, expected, rtol=1e-9, atol=1e-9)


def test_time_labels_match_parametrization():
    t = np.array([1.0, 0.5, 0.0123, 1e-3])
    for label in (DDPMTimesteps(1000), DDPMTimesteps(1000, integer=True)):
        got = rt.time_labels(label.config(), t)
        np.testing.assert_array_equal(got, label(torch.from_numpy(t)).numpy())


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, width=32, depth=1), VPSDE(), prediction="eps")
    path = tmp_path_factory.mktemp("rt") / "mlp.onnx"
    return export_ddim(model, path, steps=5, eta=0.2, sample_shape=(2,), batch_sizes=(1, 7))


_BLOCK_TORCH = r"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sdeflow", "onnx", "torchsde", "torchdiffeq"):
            raise ImportError(f"{name} is blocked: the runner must not import it")
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("ddim_runtime", sys.argv[1])
rt = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)
x = rt.OnnxSampler(sys.argv[2], providers="auto").sample(3, seed=0)
assert "torch" not in sys.modules and not any(m.split(".")[0] == "sdeflow" for m in sys.modules)
print(x.shape, sorted(m for m in ("numpy", "onnxruntime") if m in sys.modules))
"""


def test_runner_imports_and_runs_without_torch(mlp_onnx):
    """Design: runtime.py is self-contained (numpy + onnxruntime); a torch-free deployment loads it by path."""
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH, str(RUNTIME), str(mlp_onnx.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(3, 2) ['numpy', 'onnxruntime']" in proc.stdout
    assert "ERROR" not in proc.stderr and "[E:" not in proc.stderr  # no CUDA error spam with providers='auto'


def test_runtime_script_entry(mlp_onnx, tmp_path):
    out = tmp_path / "s.npy"
    proc = subprocess.run(
        [sys.executable, str(RUNTIME), str(mlp_onnx.path), "--batch", "4", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out), OnnxSampler(mlp_onnx.path, providers="cpu").sample(4, seed=0))


def test_cli_run_onnx_npy_png_and_errors(mlp_onnx, tmp_path, capsys):
    npy, png = tmp_path / "a.npy", tmp_path / "a.png"
    assert cli_main(["run-onnx", str(mlp_onnx.path), "--batch", "6", "--seed", "2", "--out", str(npy)]) == 0
    x = np.load(npy)
    assert x.shape == (6, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, OnnxSampler(mlp_onnx.path, providers="cpu").sample(6, seed=2))
    assert cli_main(["run-onnx", str(mlp_onnx.path), "--batch", "6", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["run-onnx", str(mlp_onnx.path), "--out", str(tmp_path / "a.txt")]) == 2
    assert "`--out` must end in one of .npy, .npz, .png, .pdf, .svg" in capsys.readouterr().err


def test_cli_export_from_checkpoint(tmp_path, capsys):
    ckpt = _mlp_checkpoint(tmp_path / "ckpt", DDPMTimesteps(1000))
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--steps", "4", "--out", str(out)]) == 0
    assert "onnxruntime vs sdeflow.sample" in capsys.readouterr().out
    info = OnnxSampler(out, providers="cpu").info
    assert info.steps == 4 and info.config["grid"] == "leading" and info.sample_shape == (2,)
    assert json.loads(info.properties["sdeflow.data"])["name"] == "gmm"


@pytest.mark.skipif(not rt._cuda_loadable(), reason="no GPU here: the CUDA execution provider does not load")
def test_cuda_provider_with_io_binding_matches_cpu(mlp_onnx):
    gpu = OnnxSampler(mlp_onnx.path, providers="cuda")
    assert gpu.device == "cuda" and gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxSampler(mlp_onnx.path, providers="cpu")
    np.testing.assert_allclose(gpu.sample(16, seed=0), cpu.sample(16, seed=0), rtol=1e-4, atol=1e-5)


def test_auto_providers_falls_back_to_cpu_quietly(mlp_onnx, capfd):
    runner = OnnxSampler(mlp_onnx.path)
    assert runner.providers[-1] == "CPUExecutionProvider"
    if not rt._cuda_loadable():
        assert runner.device == "cpu" and runner.providers == ["CPUExecutionProvider"]
    assert "Failed to load library" not in capfd.readouterr().err


def test_quickstart_export_reports_parity_and_speed(tmp_path):
    from sdeflow import ContinuousTime
    from sdeflow.export import quickstart_export

    ckpt = _mlp_checkpoint(tmp_path / "ckpt", ContinuousTime())
    out = quickstart_export(ckpt, tmp_path, steps=5, batch=4, repeats=1)
    import onnx

    onnx.checker.check_model(out["onnx"])  # the file on disk, checked here rather than trusting the report's flag
    assert set(out["parity_rel_error"]) == {"1", "7", "64", "4"} and max(out["parity_rel_error"].values()) <= 1e-5
    assert out["pytorch_ms"] > 0 and out["onnxruntime_ms"] > 0 and out["speedup"] > 0


def test_package_import_is_lazy():
    """`from sdeflow.export import OnnxSampler` loads the runner only, not the exporter (onnx, tracing)."""
    code = (
        "import sys; from sdeflow.export import OnnxSampler; "
        "print('sdeflow.export.onnx_export' in sys.modules, 'sdeflow.export.runtime' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["False", "True"]
