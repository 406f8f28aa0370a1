"""sdeflow.compare and the `sdeflow compare` / `sdeflow sample` commands."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, GaussianMixture, compare
from sdeflow.cli import main
from sdeflow.compare import fit_order, sliced_wasserstein


def test_fit_order_recovers_a_power_law():
    nfe = [10, 20, 40, 80]
    assert fit_order(nfe, [3.0 * n**-2.0 for n in nfe]) == pytest.approx(2.0)
    assert fit_order([10], [0.1]) is None


def test_sliced_wasserstein_is_zero_for_equal_sets_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g)
    assert sliced_wasserstein(a, a[torch.randperm(500, generator=g)]) == pytest.approx(0.0, abs=1e-12)
    # a shift by c along every axis: each projection moves by <u, c 1>, E<u, 1>^2 = 1 for unit u in 3-D
    d = sliced_wasserstein(a, a + 1.0, n_proj=4000, generator=g)
    assert d == pytest.approx(1.0, abs=0.06)
    with pytest.raises(ValueError, match="equal-size sets"):
        sliced_wasserstein(a, a[:10])


def test_compare_orders_outputs_and_noise_floor(tmp_path, monkeypatch):
    gm = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(1))
    res = compare(
        ("rk4", "dpmsolver++", "ddpm"),
        (40, 80, 160),
        mixture=gm,
        n=32,
        n_distribution=400,
        grids={"rk4": "uniform", "dpmsolver++": "logsnr"},
    )
    assert [r.nfe for r in res.rows if r.solver == "rk4"] == [40, 80, 160]
    assert abs(res.orders["rk4"] - 4) < 0.5 and abs(res.orders["dpmsolver++"] - 2) < 0.4
    ddpm = [r for r in res.rows if r.solver == "ddpm"]
    assert all(r.kind == "distribution" and r.noise_floor > 0 for r in ddpm)
    assert all(r.kind == "endpoint" and r.noise_floor is None for r in res.rows if r.solver != "ddpm")
    # at 160 steps DDPM is statistically indistinguishable from exact samples: within a few noise floors
    assert ddpm[-1].error < 3 * ddpm[-1].noise_floor
    text = res.table()
    assert "rk4" in text and "fitted order" in text
    res.to_csv(tmp_path / "c.csv")
    res.to_json(tmp_path / "c.json")
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")  # a user's backend
    res.plot(tmp_path / "c.png")
    assert matplotlib.rcParams["backend"] == "svg"  # no matplotlib.use(): a notebook keeps its backend
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(rows) == 9 and float(rows[0]["error"]) == pytest.approx(res.rows[0].error)
    payload = json.loads((tmp_path / "c.json").read_text())
    assert payload["orders"]["rk4"] == pytest.approx(res.orders["rk4"])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_on_a_model_scores_deterministic_solvers_only():
    sde = VPSDE()
    gm = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(2))
    model = gm.score_model(sde)  # stands in for a trained checkpoint's score model
    res = compare(("ddim",), (10, 20), model=model, sde=sde, sample_shape=(2,), n=16)
    assert len(res.rows) == 2 and res.rows[1].error < res.rows[0].error
    with pytest.raises(ValueError, match="needs the oracle's exact distribution"):
        compare(("ddpm",), (10,), model=model, sde=sde, sample_shape=(2,), n=16)
    with pytest.raises(ValueError, match="give `sample_shape`"):
        compare(("ddim",), (10,), model=model, sde=sde, n=16)
    with pytest.raises(ValueError, match="`nfe` must be a non-empty list of budgets >= 1"):
        compare(("ddim",), (0,))
    with pytest.raises(ValueError, match="Invalid sampler 'bogus'"):
        compare(("bogus",), (10,), n=4)


def test_cli_compare_and_sample(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--solvers", "euler,ddim", "--nfe", "5,10", "--n", "8", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.json", "compare.png"}
    assert "fitted order" in capsys.readouterr().out
    npy = tmp_path / "s.npy"
    args = ["sample", "--method", "ddim", "--steps", "5", "--n", "6", "--seed", "3", "--out", str(npy), "--no-progress"]
    assert main(args) == 0
    x = np.load(npy)
    assert x.shape == (6, 2) and np.isfinite(x).all()
    meta = json.loads((tmp_path / "s.npy.json").read_text())
    assert meta["nfe"] == 5 and meta["status"] == "success"
    assert main(["sample", "--method", "nope", "--out", str(npy), "--no-progress"]) == 2
    assert "Invalid sampler 'nope'" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(npy), "--no-progress"]) == 2
    assert main(["compare", "--nfe", "ten", "--out", str(out)]) == 2
    assert "--nfe must be a comma list" in capsys.readouterr().err
    assert math.isfinite(meta["wall_time_s"])


def test_cli_sample_from_a_checkpoint(tmp_path):
    from sdeflow import DDPMTimesteps, save
    from sdeflow.models import build_model

    config = {"type": "mlp", "dim": 2, "width": 16, "depth": 2}
    net = build_model(config)
    save(tmp_path / "ckpt", net, VPSDE(), "eps", DDPMTimesteps(1000), config,
         {"name": "gmm", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]})
    npy = tmp_path / "s.npy"
    args = ["sample", "--checkpoint", str(tmp_path / "ckpt"), "--method", "ddim", "--steps", "4", "--n", "3",
            "--out", str(npy), "--no-progress"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "s.npy.json").read_text())
    assert np.load(npy).shape == (3, 2) and meta["nfe"] == 4 and meta["checkpoint"] == str(tmp_path / "ckpt")
