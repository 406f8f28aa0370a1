"""Tuned time grids (sdeflow/sampling/tuning.py): the search generalises to held-out x_T, the dynamic programming is
exact, the jump costs are DDIM's local errors, grids round-trip through JSON into ``sample``, and every documented
error."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import sdeflow
from sdeflow import VPSDE, GaussianMixture, sample
from sdeflow.cli import main as cli_main
from sdeflow.sampling import DDIM, DDPM, Heun, ODESolver, Times, UniPC
from sdeflow.sampling.tuning import (
    _dp_path,
    calibration_reference,
    endpoint_error,
    grid_paths,
    load_grid,
    save_grid,
    tune_grid,
)

SDE = VPSDE()


@pytest.fixture(scope="module")
def oracle():
    gm = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(102))
    model = gm.score_model(SDE)
    x_cal = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_held = torch.randn(512, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_held = sample(model, SDE, x_held, sampler=ODESolver("dopri5", rtol=1e-10, atol=1e-10)).samples
    reference = calibration_reference(model, SDE, x_cal, candidates=64)
    return model, reference, x_held, ref_held


def test_tuned_grid_beats_every_builtin_grid_on_held_out_x_T(oracle):
    model, reference, x_held, ref_held = oracle
    smp = UniPC(order=3)
    res = tune_grid(model, SDE, smp, 5, reference=reference, max_evals=150)
    assert res.steps == 5 and len(res.grid.times) == 6
    assert res.grid.times[0] == SDE.T and res.grid.times[-1] == pytest.approx(1e-3)
    assert res.error <= min(res.baselines.values())  # never worse than its starts on the calibration batch
    held = endpoint_error(sample(model, SDE, x_held, sampler=smp, grid=res.grid).samples, ref_held)
    builtin = {
        g: endpoint_error(sample(model, SDE, x_held, sampler=smp, grid=g, steps=5).samples, ref_held)
        for g in ("uniform", "quadratic", "logsnr", "karras")
    }
    assert held * 1.2 < min(builtin.values()), (held, builtin)


def test_dynamic_programming_finds_the_cheapest_path():
    g = torch.Generator().manual_seed(0)
    k, steps = 8, 3
    cost = torch.rand(k, k, generator=g, dtype=torch.float64)
    cost = torch.where(torch.ones(k, k).triu(1).bool(), cost, torch.full_like(cost, math.inf))
    path = _dp_path(cost, steps)
    brute = min(
        ((0, *mid, k - 1) for mid in itertools.combinations(range(1, k - 1), steps - 1)),
        key=lambda p: sum(float(cost[a, b]) for a, b in itertools.pairwise(p)),
    )
    assert tuple(path) == brute


def test_jump_cost_is_the_local_error_of_one_ddim_step(oracle):
    """C_{0,K-1} is the error of one DDIM step from x_T at T straight to eps against the reference at eps."""
    model, reference, *_ = oracle
    one = sample(model, SDE, reference.x_T, sampler=DDIM(), grid=Times((SDE.T, reference.eps))).samples
    assert float(reference.cost[0, -1]) == pytest.approx(endpoint_error(one, reference.x_eps), rel=1e-9)
    k = reference.cost.shape[0]
    assert bool(torch.isinf(reference.cost[torch.ones(k, k).tril().bool()]).all())  # no jumps back or in place


def test_round_trip_through_json_and_sample(oracle, tmp_path):
    model, reference, x_held, _ = oracle
    res = tune_grid(model, SDE, "dpmsolver++", 4, reference=reference, max_evals=20, order=2)
    path = save_grid(tmp_path / "g.json", res.grid, res.info())
    loaded = load_grid(path)
    assert loaded.times == res.grid.times and loaded.source == str(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "sdeflow-grid/1" and doc["info"]["nfe"] == 4 and doc["info"]["sampler"] == "dpmsolver++"
    a = sample(model, SDE, x_held[:16], sampler="dpmsolver++", grid=loaded)
    b = sample(model, SDE, x_held[:16], sampler="dpmsolver++", grid=res.grid)
    assert a.nfe == 4 and torch.equal(a.samples, b.samples)
    assert torch.equal(a.times, torch.tensor(res.grid.times, dtype=torch.float64))


def test_heun_spends_two_evaluations_per_step(oracle):
    model, reference, *_ = oracle
    res = tune_grid(model, SDE, Heun(), 6, reference=reference, max_evals=10)
    assert res.steps == 3 and sample(model, SDE, reference.x_T[:4], sampler=Heun(), grid=res.grid).nfe == 6


def test_x_T_calibration_builds_the_reference(oracle):
    model, _, x_held, _ = oracle
    res = sdeflow.tune_grid(model, SDE, "ddim", 3, x_T_calibration=x_held[:32], candidates=16, max_evals=5)
    assert res.calibration == 32 and len(res.grid.times) == 4


def test_documented_errors(oracle, tmp_path):
    model, reference, x_held, _ = oracle
    with pytest.raises(ValueError, match="deterministic fixed-grid sampler"):
        tune_grid(model, SDE, DDPM(), 5, reference=reference)
    with pytest.raises(ValueError, match="deterministic fixed-grid sampler"):
        tune_grid(model, SDE, DDIM(eta=0.5), 5, reference=reference)
    with pytest.raises(ValueError, match="deterministic fixed-grid sampler"):
        tune_grid(model, SDE, ODESolver("rk4"), 5, reference=reference)
    with pytest.raises(ValueError, match="cannot be spent exactly"):
        tune_grid(model, SDE, Heun(), 5, reference=reference)
    with pytest.raises(ValueError, match="`nfe` must be an integer >= 1"):
        tune_grid(model, SDE, "unipc", 0, reference=reference)
    with pytest.raises(ValueError, match="exactly one of them"):
        tune_grid(model, SDE, "unipc", 5)
    with pytest.raises(ValueError, match="exactly one of them"):
        tune_grid(model, SDE, "unipc", 5, reference=reference, x_T_calibration=x_held)
    with pytest.raises(ValueError, match="differs from the reference's eps"):
        tune_grid(model, SDE, "unipc", 5, reference=reference, eps=1e-2)
    with pytest.raises(ValueError, match="`max_evals` must be an integer >= 0"):
        tune_grid(model, SDE, "unipc", 5, reference=reference, max_evals=-1)
    with pytest.raises(ValueError, match="`candidates` must be an integer >= 3"):
        calibration_reference(model, SDE, x_held, candidates=2)
    with pytest.raises(ValueError, match=r"`candidates` \(4\) must exceed the steps"):
        tune_grid(model, SDE, "unipc", 5, x_T_calibration=x_held[:8], candidates=4)
    with pytest.raises(ValueError, match="`x_T_calibration` must be a finite floating tensor"):
        calibration_reference(model, SDE, torch.zeros(4))
    with pytest.raises(ValueError, match="Option 'eta' does not apply to sampler 'unipc'"):
        tune_grid(model, SDE, "unipc", 5, reference=reference, eta=0.0)
    with pytest.raises(TypeError, match="must be a Times grid"):
        save_grid(tmp_path / "x.json", sdeflow.sampling.Uniform())
    with pytest.raises(ValueError, match="does not exist; write one with `sdeflow tune-grid`"):
        load_grid(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        load_grid(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"times": [1.0, 0.5]}))
    with pytest.raises(ValueError, match="is not an sdeflow grid"):
        load_grid(tmp_path / "other.json")
    (tmp_path / "up.json").write_text(json.dumps({"format": "sdeflow-grid/1", "times": [0.5, 1.0]}))
    with pytest.raises(ValueError, match="strictly decreasing"):
        load_grid(tmp_path / "up.json")
    (tmp_path / "taken-nfe5.json").write_text("{}")
    with pytest.raises(ValueError, match="exists; remove it, choose another --out or pass --overwrite"):
        grid_paths(tmp_path / "taken", "unipc", [5])
    assert grid_paths(tmp_path / "taken", "unipc", [5], overwrite=True)[5] == tmp_path / "taken-nfe5.json"
    assert grid_paths(str(tmp_path) + "/new/", "unipc", [6])[6] == tmp_path / "new" / "unipc-nfe6.json"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        grid_paths(tmp_path / "taken-nfe5.json" / "g", "unipc", [5])


def test_cli_writes_one_grid_per_nfe_and_checks_out_first(tmp_path, capsys):
    out = str(tmp_path / "grids") + "/"
    args = ["tune-grid", "--oracle-dim", "2", "--sampler", "unipc", "--order", "2", "--nfe", "4,5", "--out", out,
            "--calibration", "32", "--candidates", "24", "--max-evals", "10"]
    assert cli_main(args) == 0
    assert "NFE   4 (4 steps)" in capsys.readouterr().out
    grid = load_grid(tmp_path / "grids" / "unipc-nfe5.json")
    assert len(grid.times) == 6
    assert cli_main(args) == 2  # the files exist: refused before computing anything
    err = capsys.readouterr()
    assert "exists; remove it" in err.err and "reference" not in err.out
    assert cli_main(["tune-grid", "--oracle-dim", "2", "--sampler", "ddpm", "--nfe", "5", "--out", out]) == 2
    assert "deterministic fixed-grid sampler" in capsys.readouterr().err
    assert cli_main(["tune-grid", "--oracle-dim", "2", "--sampler", "heun", "--nfe", "5", "--out", out]) == 2
    assert "cannot be spent exactly" in capsys.readouterr().err
    assert cli_main(["tune-grid", "--sampler", "unipc", "--nfe", "5", "--out", out]) == 2
    assert "--checkpoint DIR" in capsys.readouterr().err
