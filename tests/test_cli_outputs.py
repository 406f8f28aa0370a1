"""Every command's --out writes what its extension says: sample, run-onnx (and the torch-free runtime script),
likelihood's plots. Unknown extensions fail with one error line and exit status 2, before anything is computed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import sdeflow.images
from sdeflow import VPSDE, ContinuousTime, save
from sdeflow.cli import main
from sdeflow.data import load_dataset
from sdeflow.export import export_ddim
from sdeflow.export import runtime as rt
from sdeflow.models import build_model

PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["--steps", "3", "--no-progress"]


def _size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    return mpimg.imread(io.BytesIO(data), format="png").shape[:2]


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny UNet on the 8x8 digits (its data_info records scale 2, offset -1, 17 levels)."""
    torch.manual_seed(0)
    cfg = {"type": "unet", "image_size": 8, "in_channels": 1, "channels": 8, "mults": [1]}
    path = tmp_path_factory.mktemp("digits") / "ckpt"
    return save(path, build_model(cfg), VPSDE(), "eps", ContinuousTime(), cfg, load_dataset("digits").info)


@pytest.fixture(scope="module")
def digits_onnx(digits_ckpt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    return export_ddim(digits_ckpt, path, steps=2, batch_sizes=(1,)).path


def test_sample_oracle_scatter_and_arrays(tmp_path):
    assert main(["sample", *FAST, "--n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert _size(tmp_path / "s.png") == (528, 1008)  # samples beside the oracle's exact density
    assert json.loads((tmp_path / "s.png.json").read_text())["n"] == 50
    assert main(["sample", *FAST, "--n", "6", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["sample", *FAST, "--n", "6", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(f["samples"], np.load(tmp_path / "s.npy"))
    assert main(["sample", *FAST, "--n", "6", "--out", str(tmp_path / "s.pdf")]) == 0
    assert (tmp_path / "s.pdf").read_bytes()[:5] == b"%PDF-"


def test_sample_checkpoint_2d_beside_its_training_data(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = {"type": "mlp", "dim": 2, "width": 16, "depth": 1}
    info = {"name": "moons", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    ckpt = save(tmp_path / "ckpt", build_model(cfg), VPSDE(), "eps", ContinuousTime(), cfg, info)
    drawn = {}
    real = sdeflow.images.scatter_figure
    monkeypatch.setattr(sdeflow.images, "scatter_figure", lambda x, **kw: drawn.update(kw) or real(x, **kw))
    assert main(["sample", "--checkpoint", str(ckpt), *FAST, "--n", "40", "--out", str(tmp_path / "m.svg")]) == 0
    np.testing.assert_array_equal(drawn["reference"], load_dataset("moons").x.numpy())
    assert drawn["log_density"] is None and b"<svg" in (tmp_path / "m.svg").read_bytes()[:2000]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "s.jpg"], "`--out` must end in one of .npy, .npz, .png, .pdf, .svg"),
        (["--out", "s"], "`--out` must end in one of"),
        (["--oracle-dim", "3", "--out", "s.png"], r"No picture for samples of shape [3]"),
    ],
)
def test_sample_bad_extension_is_one_line_before_computing(tmp_path, capsys, monkeypatch, args, message):
    import sdeflow.sampling

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sdeflow.sampling, "sample_many", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert main(["sample", *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdeflow sample: error: ") and message in err
    assert not any(tmp_path.iterdir())


def test_sample_checkpoint_image_grid(digits_ckpt, tmp_path):
    ckpt = ["--checkpoint", str(digits_ckpt)]
    assert main(["sample", *ckpt, *FAST, "--n", "16", "--out", str(tmp_path / "g.png")]) == 0
    assert _size(tmp_path / "g.png") == (522, 522)  # 4 x 4 digits, 16x upscaled, 2-px borders
    out = tmp_path / "g2.png"
    assert main(["sample", *ckpt, *FAST, "--n", "5", "--scale", "2", "--out", str(out)]) == 0
    assert _size(out) == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2)


def _run_onnx(model: Path, batch: int, out: Path) -> int:
    return main(["run-onnx", str(model), "--batch", str(batch), "--providers", "cpu", "--out", str(out)])


def test_run_onnx_grid_arrays_and_errors(digits_onnx, tmp_path, capsys):
    assert _run_onnx(digits_onnx, 16, tmp_path / "g.png") == 0
    assert _size(tmp_path / "g.png") == (522, 522)
    assert _run_onnx(digits_onnx, 3, tmp_path / "g.npz") == 0
    with np.load(tmp_path / "g.npz") as f:
        assert f["samples"].shape == (3, 1, 8, 8)
    capsys.readouterr()
    assert main(["run-onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "g.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--out` must end in one of .npy, .npz, .png, .pdf, .svg" in err


_BLOCKED = r"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sdeflow", "matplotlib", "PIL"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("ddim_runtime", sys.argv[1])
rt = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)
sys.exit(rt.main(sys.argv[2:]))
"""


def test_runtime_script_writes_the_same_grid_without_torch_or_matplotlib(digits_onnx, tmp_path):
    out = tmp_path / "g.png"
    cmd = [sys.executable, "-c", _BLOCKED, rt.__file__, str(digits_onnx), "--batch", "16", "--providers", "cpu"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _run_onnx(digits_onnx, 16, tmp_path / "r.png") == 0
    assert out.read_bytes() == (tmp_path / "r.png").read_bytes()  # one grid, one encoder: identical files
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "g.pdf")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--out must end in .npy, .npz or .png" in proc.stderr


def test_likelihood_writes_histogram_and_best_worst_images(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "lik"
    rc = main(["likelihood", "--checkpoint", str(digits_ckpt), "--limit", "4", "--divergence", "rademacher",
               "--rtol", "1e-2", "--atol", "1e-2", "--no-progress", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"likelihood.csv", "summary.json", "likelihood.png", "best_worst.png"}
    assert _size(out / "likelihood.png") == (432, 720) and (out / "best_worst.png").read_bytes()[:8] == PNG
    assert "best_worst.png" in capsys.readouterr().out


def test_likelihood_oracle_writes_histogram_only(tmp_path):
    out = tmp_path / "lik"
    assert main(["likelihood", "--oracle", "--limit", "4", "--no-progress", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"likelihood.csv", "summary.json", "likelihood.png"}
