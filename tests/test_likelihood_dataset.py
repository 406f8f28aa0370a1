"""sdeflow.likelihood_dataset: data-set likelihoods from Python (the library behind `sdeflow likelihood`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, ContinuousTime, GaussianMixture, log_likelihood
from sdeflow.checkpoint import load, save
from sdeflow.data import Dataset, gmm_oracle, load_dataset
from sdeflow.distributed import DistContext
from sdeflow.likelihood import LikelihoodError
from sdeflow.likelihood_dataset import checkpoint_dataset, evaluate_dataset
from sdeflow.models import build_model
from sdeflow.progress import Progress

SOLVER = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "divergence": "exact"}


def _oracle(n: int = 7) -> tuple[VPSDE, GaussianMixture, Dataset]:
    gm = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(0))
    x = gm.sample(n, generator=torch.Generator().manual_seed(1))
    return VPSDE(), gm, Dataset("oracle", x, None, 1.0, 0.0, (2,))


def test_rows_are_the_per_batch_log_likelihoods_and_the_summary_their_mean() -> None:
    sde, gm, data = _oracle()
    events: list[Progress] = []
    res = evaluate_dataset(sde, gm.score_model(sde), data, batch_size=3, progress=events.append, **SOLVER)
    assert [r["index"] for r in res.rows] == list(range(7))
    assert [r["batch"] for r in res.rows] == [0] * 3 + [1] * 3 + [2]
    direct = log_likelihood(sde, gm.score_model(sde), data.x[3:6], **SOLVER)  # batch 1, as the function cuts it
    assert [r["log_p"] for r in res.rows[3:6]] == pytest.approx(direct.log_p.tolist(), rel=1e-12)
    npd = torch.tensor([-r["log_p"] / 2 for r in res.rows], dtype=torch.float64)
    assert res.summary["mean_nats_per_dim"] == pytest.approx(float(npd.mean()))
    assert res.summary["nats_per_dim_std_err"] == pytest.approx(float(npd.std() / math.sqrt(7)))
    assert [(e.done, e.total) for e in events] == [(3, 7), (6, 7), (7, 7)]


def test_ranks_split_batches_and_their_union_is_the_single_process_result() -> None:
    """Each rank computes batches rank, rank + W, ... (without a process group the gather returns its own rows)."""
    sde, gm, data = _oracle()
    whole = evaluate_dataset(sde, gm.score_model(sde), data, batch_size=2, **SOLVER).rows
    parts = [evaluate_dataset(sde, gm.score_model(sde), data, batch_size=2,
                              ctx=DistContext(rank, 2, torch.device("cpu")), **SOLVER).rows for rank in (0, 1)]
    assert {r["batch"] for r in parts[0]} == {0, 2} and {r["batch"] for r in parts[1]} == {1, 3}
    assert sorted(parts[0] + parts[1], key=lambda r: r["index"]) == whole


def test_discrete_data_give_bits_per_dim_and_write_the_files(tmp_path: Path) -> None:
    sde = VPSDE()
    gm = gmm_oracle()
    codes = torch.randint(0, 8, (5, 2), generator=torch.Generator().manual_seed(0))
    x = 2 * (codes + 0.5) / 8 - 1
    data = Dataset("codes", x, 8, 2.0, -1.0, (2,), codes=codes)
    res = evaluate_dataset(sde, gm.score_model(sde), data, limit=4, batch_size=4, draws=2, bound="importance",
                           seed=3, **SOLVER)
    assert res.key == "bpd" and len(res.rows) == 4
    assert all(r["importance_bpd"] <= r["plain_bpd"] + 1e-9 and r["bpd"] == r["importance_bpd"] for r in res.rows)
    paths = res.write(tmp_path)
    assert [p.name for p in paths] == ["likelihood.csv", "summary.json", "likelihood.png"]
    with (tmp_path / "likelihood.csv").open() as fh:
        assert [float(r["bpd"]) for r in csv.DictReader(fh)] == [r["bpd"] for r in res.rows]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean_bpd"] == pytest.approx(sum(r["bpd"] for r in res.rows) / 4)
    assert summary["settings"]["bound"] == "importance" and summary["settings"]["draws"] == 2


def test_a_failing_batch_raises_likelihood_error() -> None:
    sde, gm, data = _oracle(3)
    with pytest.raises(LikelihoodError, match="max_steps"):
        evaluate_dataset(sde, gm.score_model(sde), data, max_steps=2, **SOLVER)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"draws": 0}, "draws must be an integer >= 1"),
    ({"bound": "upper"}, "bound must be one of"),
])
def test_argument_errors_name_the_argument(kwargs: dict, match: str) -> None:
    sde, gm, data = _oracle(2)
    with pytest.raises(ValueError, match=match):
        evaluate_dataset(sde, gm.score_model(sde), data, **kwargs)


def test_checkpoint_dataset_refuses_data_the_network_was_not_trained_on(tmp_path: Path) -> None:
    config = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
    info = {"name": "moons", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    save(tmp_path / "ckpt", build_model(config), VPSDE(), "eps", ContinuousTime(), config, info)
    ckpt = load(tmp_path / "ckpt")
    array = tmp_path / "points.npy"
    np.save(array, np.random.default_rng(0).random((10, 2)))
    data = checkpoint_dataset(ckpt)
    assert data.name == "moons" and torch.equal(data.x, load_dataset("moons", "test").x)
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\).*pass the matching data="):
        checkpoint_dataset(ckpt, "digits")
    with pytest.raises(ValueError, match=r"data scaling .*pass matching levels=/scale=/offset="):
        checkpoint_dataset(ckpt, str(array), scale=2.0, offset=0.0)
