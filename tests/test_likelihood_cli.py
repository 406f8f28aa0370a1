"""`sdeflow likelihood`: outputs, checkpoints and arrays, errors, and a real 2-process torchrun (gloo) run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, ContinuousTime, GaussianMixture
from sdeflow.checkpoint import save
from sdeflow.cli import main
from sdeflow.models import build_model

ORACLE = ["--oracle", "--oracle-dim", "2", "--oracle-seed", "0", "--no-progress"]




def _rows(path: Path) -> list[dict]:
    with (path / "likelihood.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_oracle_run_writes_csv_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "lik"
    rc = main(["likelihood", *ORACLE, "--prior", "oracle", "--limit", "6", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    summary = json.loads((out / "summary.json").read_text())
    assert [int(r["index"]) for r in rows] == list(range(6))
    npd = np.array([float(r["nats_per_dim"]) for r in rows])
    assert summary["mean_nats_per_dim"] == pytest.approx(npd.mean())
    assert summary["nats_per_dim_std_err"] == pytest.approx(npd.std(ddof=1) / np.sqrt(6))
    assert summary["nfe_max"] >= summary["nfe_mean"] > 0 and summary["settings"]["prior"] == "prior_logp"
    # the same oracle and points the CLI uses: the per-example log p matches the closed form
    gm = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(0))
    x = gm.sample(6, generator=torch.Generator().manual_seed(1))
    exact = gm.log_prob(x.double(), 1e-5, VPSDE()).numpy()
    assert np.abs(np.array([float(r["log_p"]) for r in rows]) - exact).max() / 2 < 1e-3


def test_discrete_array_gives_bits_per_dim(tmp_path: Path) -> None:
    levels = np.random.default_rng(0).integers(3, 6, size=(5, 2))
    np.save(tmp_path / "codes.npy", levels)
    out = tmp_path / "bpd"
    rc = main(["likelihood", *ORACLE, "--data", str(tmp_path / "codes.npy"), "--levels", "8", "--scale", "4",
               "--offset", "-2", "--draws", "2", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    summary = json.loads((out / "summary.json").read_text())
    bpd = np.array([float(r["bpd"]) for r in rows])
    # bpd = -log p / (D ln 2) - log2(a) + log2(K) with the mean log p over draws
    log_p = np.array([float(r["log_p"]) for r in rows])
    assert np.allclose(bpd, -log_p / (2 * np.log(2)) - 2 + 3, atol=1e-5)
    assert summary["mean_bpd"] == pytest.approx(bpd.mean()) and summary["data"]["levels"] == 8
    assert all(float(r["bpd_std_err"]) > 0 for r in rows)


def test_importance_bound_with_draws(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    levels = np.random.default_rng(1).integers(3, 6, size=(4, 2))
    np.save(tmp_path / "codes.npy", levels)
    out = tmp_path / "iw"
    rc = main(["likelihood", *ORACLE, "--data", str(tmp_path / "codes.npy"), "--levels", "8", "--scale", "4",
               "--offset", "-2", "--draws", "3", "--bound", "importance", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    summary = json.loads((out / "summary.json").read_text())
    plain, iw = (np.array([float(r[f"{b}_bpd"]) for r in rows]) for b in ("plain", "importance"))
    assert np.allclose([float(r["bpd"]) for r in rows], iw) and (iw <= plain + 1e-12).all()
    assert summary["mean_importance_bpd"] == pytest.approx(iw.mean()) and summary["settings"]["bound"] == "importance"
    assert all(float(r["importance_bpd_std_err"]) > 0 for r in rows)
    assert "importance-weighted" in capsys.readouterr().out


def test_checkpoint_run(tmp_path: Path) -> None:
    config = {"type": "mlp", "dim": 2, "width": 16, "depth": 1}
    torch.manual_seed(0)
    net = build_model(config)
    info = {"name": "moons", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    save(tmp_path / "ckpt", net, VPSDE(), "eps", ContinuousTime(), config, info)
    out = tmp_path / "out"
    rc = main(["likelihood", "--checkpoint", str(tmp_path / "ckpt"), "--limit", "3", "--divergence", "gaussian",
               "--probes", "2", "--no-progress", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(np.isfinite(float(r["log_p"])) for r in rows)


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["likelihood", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "Pass exactly one model" in capsys.readouterr().err
    assert main(["likelihood", *ORACLE, "--data", "digits", "--out", str(tmp_path)]) == 2
    assert "oracle has dimension 2" in capsys.readouterr().err
    bad = np.array([[0.0, np.nan], [1.0, 2.0]])
    np.save(tmp_path / "bad.npy", bad)
    assert main(["likelihood", *ORACLE, "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["likelihood", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    rc = main(["likelihood", *ORACLE, "--limit", "2", "--max-steps", "2", "--out", str(tmp_path / "fail")])
    assert rc == 1 and "exceeded max_steps" in capsys.readouterr().err
    assert not (tmp_path / "fail" / "summary.json").exists()


def test_torchrun_two_processes_match_single_process(tmp_path: Path) -> None:
    """World-size invariance: a real 2-process gloo run gathers exactly the single-process per-example results."""
    args = [*ORACLE, "--limit", "10", "--batch-size", "3", "--divergence", "rademacher", "--probes", "2"]
    assert main(["likelihood", *args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sdeflow", "likelihood", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = (tmp_path / "one" / "likelihood.csv").read_text()
    two = (tmp_path / "two" / "likelihood.csv").read_text()
    assert one == two  # bitwise-identical per-example results
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["settings"]["world_size"] == 2


def test_builtin_gmm_uses_its_own_mixture(tmp_path: Path) -> None:
    from sdeflow.data import gmm_oracle, load_dataset

    rc = main(["likelihood", "--oracle", "--data", "gmm", "--prior", "oracle", "--limit", "4", "--no-progress",
               "--out", str(tmp_path)])
    assert rc == 0
    log_p = np.array([float(r["log_p"]) for r in _rows(tmp_path)])
    exact = gmm_oracle().log_prob(load_dataset("gmm", "test").x[:4].double(), 1e-5, VPSDE()).numpy()
    assert np.abs(log_p - exact).max() / 2 < 1e-3
