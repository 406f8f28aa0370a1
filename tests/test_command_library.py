"""The library functions behind the CLI commands, called directly (no argument parsing): model and likelihood
sources, samples and tuned grids to files, likelihoods to a folder, ONNX samples to a file; each with the error a bad
argument gets, naming that argument."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, GaussianMixture, sample
from sdeflow.compare import compare
from sdeflow.likelihood_dataset import evaluate_to_folder
from sdeflow.progress import Progress
from sdeflow.sampling import load_grid
from sdeflow.sampling.to_file import grid_tuning, guidance_options, sample_to_file
from sdeflow.sources import likelihood_source, model_source


def test_model_source_is_the_seeded_oracle_and_needs_exactly_one_model() -> None:
    src = model_source(oracle_dim=3, oracle_components=2, oracle_seed=5)
    gm = GaussianMixture.random(3, 2, generator=torch.Generator().manual_seed(5))
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(src.model.score(x, t), gm.score(x, t, VPSDE()))
    assert src.sample_shape == (3,) and src.dtype == torch.float64 and src.data_info is None
    assert src.record == {"oracle": {"dim": 3, "components": 2, "seed": 5}}
    assert model_source(oracle_dim=2, conditional=True).model.num_classes == 4  # the components are the classes
    with pytest.raises(ValueError, match=r"Give `checkpoint` .* or `oracle_dim` .* one of them"):
        model_source()
    with pytest.raises(ValueError, match=r"`oracle_dim` must be an integer >= 1"):
        model_source(oracle_dim=0)


def test_guidance_options_name_the_argument() -> None:
    model = model_source(oracle_dim=2, conditional=True).model
    opts = guidance_options(model, 4, "0,1", guidance=2.0, guidance_interval="0.1,0.7")
    assert opts.cond is not None and opts.cond.tolist() == [0, 0, 1, 1] and opts.interval == (0.1, 0.7)
    assert opts.first(2).cond.tolist() == [0, 0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"^guidance needs classes \(the classes to guide towards\)"):
        guidance_options(model, 4, guidance=2.0)
    with pytest.raises(ValueError, match=r"`guidance_rescale` must be a number in \[0, 1\]; got 1.5"):
        guidance_options(model, 4, 1, guidance_rescale=1.5)
    with pytest.raises(ValueError, match=r"`guidance_interval` must be two times T_LO,T_HI"):
        guidance_options(model, 4, 1, guidance_interval=(0.1,))
    with pytest.raises(ValueError, match=r"`--class` must be class labels in 0..3"):
        guidance_options(model, 4, 9, names={"classes": "--class"})


def test_sample_to_file_writes_samples_metadata_and_trajectory(tmp_path) -> None:
    src = model_source(oracle_dim=2)
    events: list[Progress] = []
    res = sample_to_file(src, tmp_path / "s.npy", 10, sampler="ddim", steps=4, seed=3, batch_size=4,
                         trajectory=tmp_path / "t.npy", progress=events.append)
    assert res is not None and res.nfe == 3 * 4 and res.status == "success" and res.world_size == 1
    ref = sample(src.model, src.sde, shape=(10, 2), sampler="ddim", steps=4, seed=3).samples
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), ref.numpy(), rtol=0, atol=1e-6)
    meta = json.loads((tmp_path / "s.npy.json").read_text())
    assert meta == {**res.metadata} and meta["oracle"] == {"dim": 2, "components": 4, "seed": 0}
    assert meta["sampler"] == "ddim" and meta["seed"] == 3 and meta["n"] == 10 and "data" not in meta
    assert res.trajectory_shape == (8, 4) and np.load(tmp_path / "t.npy").shape[:2] == (4, 8)
    assert [(e.stage, e.done, e.total) for e in events] == [("sample", 1, 3), ("sample", 2, 3), ("sample", 3, 3)]
    assert res.lines() == [f"trajectory of 8 samples (4 steps) -> {tmp_path / 't.npy'}",
                           f"10 samples -> {tmp_path / 's.npy'}  (sampler ddim, 4 steps, NFE 12 in all, 1 process(es), "
                           "status success)"]
    with pytest.raises(ValueError, match=r"`out` must end in one of"):
        sample_to_file(src, tmp_path / "s.txt", 2)
    assert not (tmp_path / "s.txt").exists()


def test_grid_tuning_checks_first_then_writes_one_grid_per_budget(tmp_path) -> None:
    src = model_source(oracle_dim=2)
    tuning = grid_tuning(src, "unipc", [5, 4], tmp_path / "g", calibration=16, candidates=16, max_evals=4)
    assert list(tuning.paths) == [4, 5] and tuning.reference_tol == 1e-10
    results = list(tuning.run())
    assert [r.nfe for r in results] == [4, 5] and results[0].best_builtin in results[0].baselines
    assert results[1].summary().startswith(f"NFE   5 (5 steps): calibration error {results[1].error:.3e}, best ")
    doc = json.loads(tuning.paths[5].read_text())
    assert doc["info"]["model"] == {"oracle": {"dim": 2, "components": 4, "seed": 0}}
    assert len(load_grid(tuning.paths[5]).times) == 6
    with pytest.raises(ValueError, match=r"exists; remove it"):
        grid_tuning(src, "unipc", [4], tmp_path / "g")
    with pytest.raises(ValueError, match=r"`calibration` must be an integer >= 1"):
        grid_tuning(src, "unipc", [4], tmp_path / "h", calibration=0)
    with pytest.raises(ValueError, match=r"deterministic fixed-grid sampler"):
        grid_tuning(src, "ddpm", [4], tmp_path / "h")


def test_likelihood_source_and_evaluate_to_folder(tmp_path) -> None:
    src = likelihood_source(oracle=True, oracle_dim=2, limit=6, prior="oracle")
    assert len(src.data) == 6 and src.prior_logp is not None and src.description.startswith("oracle ")
    events: list[Progress] = []
    files = evaluate_to_folder(src, tmp_path / "lik", device="cpu", progress=events.append, batch_size=4,
                               rtol=1e-4, atol=1e-4)
    assert files is not None and [p.name for p in files.paths[:2]] == ["likelihood.csv", "summary.json"]
    assert all(p.exists() for p in files.paths) and len(files.result.rows) == 6
    assert [e.done for e in events] == [4, 6] and events[-1].total == 6
    s = files.result.summary
    assert files.lines() == [f"nats_per_dim: {s['mean_nats_per_dim']:.4f} +- {s['nats_per_dim_std_err']:.4f} over 6 "
                             f"examples, NFE mean {s['nfe_mean']:.0f} max {s['nfe_max']:.0f}",
                             f"wrote {', '.join(map(str, files.paths))}"]
    with pytest.raises(ValueError, match=r"Pass exactly one model.*`checkpoint`.*`oracle=True`"):
        likelihood_source()
    with pytest.raises(ValueError, match=r"`prior` must be 'sde' .* or 'oracle' .*; got 'exact'"):
        likelihood_source(oracle=True, prior="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`prior='oracle'`\) needs --oracle"):
        likelihood_source("runs/x", prior="oracle")
    with pytest.raises(ValueError, match=r"The oracle has dimension 3 but the data has samples of shape"):
        likelihood_source(oracle=True, oracle_dim=3, data="moons")


def test_compare_reports_each_row_and_writes_its_three_files(tmp_path) -> None:
    events: list[Progress] = []
    res = compare(["ddim", "heun"], [4, 8], n=8, callback=events.append)
    assert [(e.stage, e.done, e.total, e.label) for e in events] == [
        ("compare", k + 1, 4, r.solver) for k, r in enumerate(res.rows)]
    assert [(e.info["nfe"], e.info["error"]) for e in events] == [(r.nfe, r.error) for r in res.rows]
    paths = res.write(tmp_path)
    assert [p.name for p in paths] == ["compare.csv", "compare.json", "compare.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_onnx_samples_to_file(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from sdeflow.export import export_ddim, onnx_samples_to_file
    from sdeflow.models import MLP
    from sdeflow.parametrization import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel(MLP(2, width=16, depth=1), VPSDE(), prediction="eps")
    path = export_ddim(model, tmp_path / "m.onnx", steps=3, sample_shape=(2,), batch_sizes=(1,), verify=False).path
    res = onnx_samples_to_file(path, tmp_path / "s.npy", 5, seed=1, providers="cpu")
    assert res.n == 5 and res.steps == 3 and res.classes is None and np.load(tmp_path / "s.npy").shape == (5, 2)
    assert res.summary(path) == f"5 samples [2] from {path} on cpu (ddim {res.info.options}, 3 steps) -> {res.path}"
    with pytest.raises(ValueError, match=r"^guidance needs classes"):
        onnx_samples_to_file(path, tmp_path / "g.npy", 5, guidance=1.0, providers="cpu")
    with pytest.raises(ValueError, match=r"`out` must end in one of"):
        onnx_samples_to_file(path, tmp_path / "s.gif", 5)


def test_train_reports_progress_events_and_summarises(tmp_path) -> None:
    from sdeflow.train import TrainConfig, train

    events: list[Progress] = []
    cfg = TrainConfig(data="moons", model={"type": "mlp", "dim": 2, "width": 8, "depth": 1}, steps=4, batch_size=8,
                      warmup=1, eval_every=2)
    result = train(cfg, tmp_path / "run", callback=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("train", k, 4) for k in (1, 2, 3, 4)]
    assert all({"loss", "lr", "elapsed"} <= set(e.info) for e in events)
    assert ["test_loss" in e.info for e in events] == [False, True, False, True]
    assert events[-1].info["test_loss"] == result.test_loss[-1][1] and events[0].info["loss"] == result.loss[0]
    assert result.summary().startswith("trained 4 steps in ") and "test loss" in result.summary()


def test_grid_option_resolves_names_files_and_rho(tmp_path) -> None:
    from sdeflow.sampling import Karras, Times, save_grid
    from sdeflow.sampling.names import grid_option

    assert grid_option(None) is None and grid_option("logsnr") == "logsnr"
    assert grid_option("karras", rho=5.0) == Karras(rho=5.0) and grid_option(None, rho=3.0) == Karras(rho=3.0)
    path = save_grid(tmp_path / "g.json", Times((1.0, 0.5, 1e-3)))
    assert isinstance(grid_option(str(path)), Times)
    with pytest.raises(ValueError, match=r"`rho`.* applies to the karras grid; got --grid logsnr"):
        grid_option("logsnr", rho=7.0)


def test_cli_exit_status_by_exception_class() -> None:
    from sdeflow.checkpoint import CheckpointError
    from sdeflow.cli import _exit_status
    from sdeflow.likelihood import LikelihoodError
    from sdeflow.run_folder import FolderLockedError

    assert _exit_status(CheckpointError("x")) == 2 and _exit_status(FolderLockedError("x")) == 2
    assert _exit_status(LikelihoodError("x")) == 1 and _exit_status(RuntimeError("x")) is None
