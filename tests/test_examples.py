"""The examples run as documented in their docstrings (their quick, checkpoint-free forms)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "script, args",
    [
        ("likelihood_eval.py", []),
        ("deploy_onnx.py", ["--steps", "5", "--batch", "4"]),
        ("denoising_trajectory.py", ["--frames", "4"]),
    ],
)
def test_example_runs(script, args, tmp_path):
    extra = ["--out", str(tmp_path / "deploy")] if script == "deploy_onnx.py" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args, *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the example printed nothing"
