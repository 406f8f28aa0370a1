"""The torch-free runner (export/runtime.py): import without torch, the script entry, the CLI commands, and the
CUDA paths (skipped without a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, DDPMTimesteps, ScoreModel
from sdeflow.cli import main as cli_main
from sdeflow.export import OnnxSampler, export_ddim
from sdeflow.export import runtime as rt
from sdeflow.models import MLP

RUNTIME = Path(rt.__file__)


def _mlp_checkpoint(path: Path, time_label) -> Path:
    """A small untrained 2-D MLP checkpoint (VP, eps prediction) for the CLI and quickstart-export tests."""
    from sdeflow import save
    from sdeflow.models import build_model

    torch.manual_seed(0)
    cfg = {"type": "mlp", "dim": 2, "width": 32, "depth": 1}
    data_info = {"name": "gmm", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    return save(path, build_model(cfg), VPSDE(), "eps", time_label, cfg, data_info)


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
    assert info.steps == 4 and info.grid == {"type": "leading", "offset": 0} and info.sample_shape == (2,)
    assert info.sampler == "ddim" and json.loads(info.properties["sdeflow.data"])["name"] == "gmm"


def test_cli_export_any_sampler_with_a_tuned_grid_and_dynamic_steps(tmp_path, capsys):
    from sdeflow import ContinuousTime
    from sdeflow.sampling import Times, save_grid

    ckpt = _mlp_checkpoint(tmp_path / "ckpt", ContinuousTime())
    tuned = save_grid(tmp_path / "tuned.json", Times((1.0, 0.5, 0.2, 0.05, 1e-3)), {"note": "test"})
    out = tmp_path / "u.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--sampler", "unipc", "--order", "3", "--grid", str(tuned)]
    assert cli_main([*argv, "--out", str(out)]) == 0
    info = OnnxSampler(out, providers="cpu").info
    assert info.sampler == "unipc" and info.options["order"] == 3 and info.steps == 4
    assert info.grid["source"] == str(tuned) and info.grid["times"][0] == 1.0
    dyn = tmp_path / "d.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--sampler", "sde-dpmsolver++", "--steps", "4"]
    assert cli_main([*argv, "--dynamic-steps", "2,3", "--out", str(dyn)]) == 0
    runner = OnnxSampler(dyn, providers="cpu")
    assert runner.info.dynamic_steps == (2, 3, 4) and runner.info.noise_draws == 4
    assert cli_main(["run-onnx", str(dyn), "--steps", "3", "--batch", "3", "--out", str(tmp_path / "d.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), runner.sample(3, seed=0, steps=3))
    assert cli_main(["export", "--checkpoint", str(ckpt), "--sampler", "pc", "--out", str(tmp_path / "p.onnx")]) != 0
    assert "Langevin corrector" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.skipif(not rt._cuda_loadable(), reason="no GPU here: the CUDA execution provider does not load")
def test_cuda_provider_with_io_binding_matches_cpu(mlp_onnx):
    gpu = OnnxSampler(mlp_onnx.path, providers="cuda")
    assert gpu.device == "cuda" and gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxSampler(mlp_onnx.path, providers="cpu")
    np.testing.assert_allclose(gpu.sample(16, seed=0), cpu.sample(16, seed=0), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not rt._cuda_loadable(), reason="no GPU here: the CUDA execution provider does not load")
def test_cuda_graph_replay_matches_cpu(mlp_onnx):
    gpu = OnnxSampler(mlp_onnx.path, providers="cuda", cuda_graph=True)
    cpu = OnnxSampler(mlp_onnx.path, providers="cpu")
    for seed in (0, 1):  # the second run replays the captured graph on refilled buffers
        np.testing.assert_allclose(gpu.sample(16, seed=seed), cpu.sample(16, seed=seed), rtol=1e-4, atol=1e-5)


def test_cuda_graph_needs_cuda(mlp_onnx):
    with pytest.raises(ValueError, match="`cuda_graph=True` needs the CUDA execution provider"):
        OnnxSampler(mlp_onnx.path, providers="cpu", cuda_graph=True)


def test_auto_providers_falls_back_to_cpu_quietly(mlp_onnx, capfd):
    runner = OnnxSampler(mlp_onnx.path)
    assert runner.providers[-1] == "CPUExecutionProvider"
    if not rt._cuda_loadable():
        assert runner.device == "cpu" and runner.providers == ["CPUExecutionProvider"]
    assert "Failed to load library" not in capfd.readouterr().err


def test_deployment_report_reports_parity_and_speed(tmp_path):
    from sdeflow import ContinuousTime
    from sdeflow.export import deployment_report

    ckpt = _mlp_checkpoint(tmp_path / "ckpt", ContinuousTime())
    out = deployment_report(ckpt, tmp_path, steps=5, batch=4, repeats=1, quality=False)
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


def test_time_to_quality_finds_a_sampler_that_reaches_ddim50(tmp_path):
    """The quickstart's figure: the best exported sampler's S reaches DDIM-50's error against dopri5, and its
    onnxruntime graph (on the grid it was chosen with, tuned or not) reproduces that error."""
    from sdeflow import ContinuousTime, load
    from sdeflow.export.report import time_to_quality
    from sdeflow.sampling import DPMSolverPP

    ckpt = load(_mlp_checkpoint(tmp_path / "ckpt", ContinuousTime()))
    candidates = {"dpm2": DPMSolverPP(order=2), "dpm3": DPMSolverPP(order=3)}  # same name: one grid file each
    events = []
    out = time_to_quality(ckpt.score_model, (2,), tmp_path, batches=(1, 4), n=16, candidates=candidates, repeats=1,
                          tune=("dpm2", "dpm3"), progress=events.append)
    labels = ["dopri5 reference", "DDIM-50", "dpm2", "dpm3", "dpm2, tuned grid", "dpm3, tuned grid", "B=1", "B=4"]
    assert [e.label for e in events] == labels and {e.stage for e in events} == {"time to quality"}
    assert [e.done for e in events] == [0, 0, 1, 2, 3, 4, 5, 6] and {e.total for e in events} == {6}
    assert events[1].info["error"] == out["target_ddim50_error"]
    assert events[-1].info["speedup"] == out["batches"]["4"]["speedup"]
    with pytest.raises(ValueError, match=r"`tune` must name candidates \(one of \['dpm2', 'dpm3'\]\); got \['x'\]"):
        time_to_quality(ckpt.score_model, (2,), tmp_path, candidates=candidates, tune=("x",))
    best = out["reached"][out["best"]]
    assert best["error"] <= out["target_ddim50_error"] and best["steps"] < 50
    assert out["best_onnx_error"] == pytest.approx(best["error"], rel=1e-3)
    assert set(out["batches"]) == {"1", "4"} and all(v["speedup"] > 0 for v in out["batches"].values())


def test_auto_providers_leave_the_global_log_level_alone(mlp_onnx, monkeypatch):
    """The 'auto' CUDA attempt quiets its own session only: onnxruntime's process-wide logger has no getter, so a
    library that changed it could not give the user's level back."""
    import onnxruntime as ort

    def refuse(level):
        raise AssertionError(f"set_default_logger_severity({level}) called")

    monkeypatch.setattr(ort, "set_default_logger_severity", refuse)
    monkeypatch.setattr(rt, "_wanted_providers", lambda p: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    runner = OnnxSampler(mlp_onnx.path)  # CUDA is tried (and on a CPU-only machine falls back)
    assert runner.providers[-1] == "CPUExecutionProvider"
    assert np.isfinite(runner.sample(2, seed=0)).all()
