"""Sharded sampling: chunks dealt to torchrun processes give exactly the samples of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, GaussianMixture
from sdeflow.cli import main
from sdeflow.sampling import UniPC, sample, sample_many


def test_sample_many_equals_per_sample_seeds():
    sde = VPSDE()
    model = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(0)).score_model(sde)
    kw = {"sampler": UniPC(3), "steps": 6}
    many, summary = sample_many(model, sde, 7, (2,), batch_size=3, seed=5, **kw)
    one = sample(model, sde, shape=(7, 2), seed=5, **kw).samples
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
    assert summary["chunks"] == 3 and summary["nfe"] == 18 and summary["status"] == "success"
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        sample_many(model, sde, 7, (2,), batch_size=0)
    with pytest.raises(ValueError, match="do not pass `x_T`, `shape` or a second seed"):
        sample_many(model, sde, 7, (2,), shape=(7, 2))


def test_torchrun_two_processes_write_the_single_process_file(tmp_path: Path) -> None:
    args = ["sample", "--oracle-dim", "2", "--sampler", "unipc", "--order", "3", "--steps", "8", "--num-samples",
            "10", "--batch-size", "3", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one.npy")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sdeflow",
           *args, "--out", str(tmp_path / "two.npy")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "one.npy").read_bytes() == (tmp_path / "two.npy").read_bytes()
    assert np.load(tmp_path / "two.npy").shape == (10, 2)


def test_denoised_trajectory_ends_at_the_sample_and_cli_writes_it(tmp_path: Path) -> None:
    from sdeflow.sampling import DDIM, denoised_trajectory

    sde = VPSDE()
    model = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(0)).score_model(sde)
    res, frames = denoised_trajectory(model, sde, shape=(5, 2), seed=0, sampler=DDIM(), steps=6, set_alpha_to_one=True)
    assert len(frames) == 6 and frames[0].shape == (5, 2)
    torch.testing.assert_close(frames[-1], res.samples)  # the last step to sigma = 0 returns x0_hat itself
    with pytest.raises(ValueError, match="reports no denoised estimate"):
        denoised_trajectory(model, sde, shape=(2, 2), sampler="ode:rk4", steps=2)
    out = tmp_path / "traj.npy"
    args = ["sample", "--oracle-dim", "2", "--steps", "6", "--n", "3", "--no-progress"]
    args += ["--out", str(tmp_path / "s.npy")]
    assert main([*args, "--trajectory", str(out)]) == 0
    assert np.load(out).shape == (6, 3, 2)
