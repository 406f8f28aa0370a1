"""Training: loss decreases and samples match the oracle mixture; exact resume; 2-process gloo DDP run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchdiffeq
from conftest import crash_at_file_operation
from safetensors.torch import load_file

import sdeflow
from sdeflow import ProbabilityFlowODE
from sdeflow.data import gmm_oracle
from sdeflow.train import TrainConfig, train

TINY = {"type": "mlp", "dim": 2, "width": 32, "depth": 1}




def test_training_on_the_oracle_mixture_learns_its_distribution(tmp_path):
    cfg = TrainConfig(data="gmm", steps=300, batch_size=256, warmup=20, lr=3e-3, eval_every=100,
                      checkpoint_every=300, ema_decay=0.99)
    result = train(cfg, tmp_path / "run")
    first, last = sum(result.loss[:20]) / 20, sum(result.loss[-50:]) / 50
    assert last < 0.5 * first
    assert result.test_loss[-1][1] < result.test_loss[0][1]
    # the test loss approaches the oracle's own loss (its irreducible minimum), same times and noise
    ck = sdeflow.load(tmp_path / "run")
    gm = gmm_oracle()
    from sdeflow.data import load_dataset
    from sdeflow.losses import DSMLoss
    from sdeflow.train import test_loss

    oracle = test_loss(gm.score_model(ck.sde), load_dataset("gmm", "test"), DSMLoss(), 512, seed=cfg.seed + 1)
    assert result.test_loss[-1][1] < 1.15 * oracle
    # samples through the probability-flow ODE (T -> t = 0.01) match the mean and covariance of the exact p_t
    n, t_end = 2000, 0.01
    x_T = ck.sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0))
    ode = ProbabilityFlowODE(ck.sde, ck.score_model)
    with torch.no_grad():
        x = torchdiffeq.odeint(ode, x_T, torch.tensor([1.0, t_end]), method="dopri5", rtol=1e-4, atol=1e-4)[-1]
    x = x.double()
    tt = torch.tensor(t_end, dtype=torch.float64)
    alpha, sigma = ck.sde.alpha(tt), ck.sde.sigma(tt)
    mean, cov = alpha * gm.mean(), alpha**2 * gm.covariance() + sigma**2 * torch.eye(2, dtype=torch.float64)
    mean_se = (cov.diagonal() / n).sqrt()
    # statistical error (5 standard errors) plus a model-error allowance of 0.05 (std ~1 data)
    assert ((x.mean(0) - mean).abs() < 5 * mean_se + 0.05).all(), (x.mean(0), mean)
    cov_se = math.sqrt(2 / n) * cov.diagonal().max()
    assert ((torch.cov(x.T) - cov).abs() < 5 * cov_se + 0.1).all(), (torch.cov(x.T), cov)


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(data="moons", model=TINY, steps=20, batch_size=32, warmup=5, eval_every=10,
                      checkpoint_every=10)
    full = train(cfg, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def crash(event):
        if event.done == 10:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "part", callback=crash)
    assert sdeflow.load(tmp_path / "part").config["extra"]["train"]["step"] == 10
    resumed = train(cfg, tmp_path / "part", resume=True)
    assert resumed.loss == full.loss and resumed.test_loss == full.test_loss
    for name in ("model.safetensors", "train_state.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "part" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"the training config differs in \['lr'\] \(only \['steps', 'eval_every'"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 1e-4}), tmp_path / "part", resume=True)
    with pytest.raises(FileNotFoundError, match="Cannot resume"):
        train(cfg, tmp_path / "empty", resume=True)


def test_two_process_gloo_ddp_equals_single_process(tmp_path):
    args = ["--data", "gmm", "--steps", "12", "--batch-size", "64", "--warmup", "4", "--eval-every", "6",
            "--checkpoint-every", "12", "--model", '{"type": "mlp", "dim": 2, "width": 32, "depth": 1}',
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sdeflow", "train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = sdeflow.load(tmp_path / "ddp")
    assert ddp.config["extra"]["train"]["world_size"] == 2
    single = train(TrainConfig(data="gmm", model=TINY, steps=12, batch_size=64, warmup=4, eval_every=6,
                               checkpoint_every=12), tmp_path / "single")
    ref = sdeflow.load(tmp_path / "single")
    assert ref.config["extra"]["train"]["world_size"] == 1
    for (k, a), (_, b) in zip(ref.net.state_dict().items(), ddp.net.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    raw_single = load_file(tmp_path / "single" / "train_state.safetensors")
    raw_ddp = load_file(tmp_path / "ddp" / "train_state.safetensors")
    moved = max((raw_single[k] - sdeflow.load(tmp_path / "single").net.state_dict()[k[4:]]).abs().max()
                for k in raw_single if k.startswith("net."))
    assert moved > 0  # the weights did train
    for k in raw_single:
        if k.startswith("net."):
            torch.testing.assert_close(raw_ddp[k], raw_single[k], rtol=1e-4, atol=1e-5, msg=k)
    import json

    hist_ddp = json.loads((tmp_path / "ddp" / "train_state.json").read_text())["loss"]
    for a, b in zip(single.loss, hist_ddp, strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_cli_train_errors(tmp_path, capsys):
    from sdeflow.cli import main

    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "Unknown data set 'mnist'" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--model", "{bad", "--out", str(tmp_path / "x")]) == 2
    assert "--model must be a JSON object" in capsys.readouterr().err
    # the quickstart at toy size: tests/test_quickstart.py


def test_ddpm_loss_user_arrays_and_config_errors(tmp_path):
    import numpy as np

    from sdeflow import DDPMTimesteps

    ddpm = train(TrainConfig(data="moons", model=TINY, loss="ddpm", steps=4, batch_size=16, warmup=1, eval_every=2,
                             checkpoint_every=4), tmp_path / "ddpm")
    ck = sdeflow.load(tmp_path / "ddpm")
    assert ck.score_model.time_label == DDPMTimesteps(1000) and ck.config["model"]["label_scale"] == 1.0
    assert len(ddpm.test_loss) == 2
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u.npz", train=rng.integers(0, 4, (40, 3)), test=rng.integers(0, 4, (10, 3)))
    train(TrainConfig(data=str(tmp_path / "u.npz"), levels=4, scale=1.0, offset=0.0, model=TINY | {"dim": 3},
                      steps=3, batch_size=8, warmup=1, eval_every=3, checkpoint_every=3), tmp_path / "user")
    info = sdeflow.load(tmp_path / "user").data_info
    assert (info["levels"], info["scale"], info["offset"], info["sample_shape"]) == (4, 1.0, 0.0, [3])
    with pytest.raises(ValueError, match=r"`sde` must be one of \('vp', 'subvp', 've'\); got 'vpsde'"):
        TrainConfig(sde="vpsde")
    with pytest.raises(ValueError, match="loss='ddpm' needs sde='vp' and prediction='eps'"):
        TrainConfig(loss="ddpm", sde="ve")
    with pytest.raises(ValueError, match=r"`steps` must be an integer >= 1; got 0"):
        TrainConfig(steps=0)


# --- run folders: kills at any point, refusal to overwrite, the lock, divergence, validation ----------------------
SMALL = TrainConfig(data="moons", model=TINY, steps=12, batch_size=16, warmup=2, eval_every=4, checkpoint_every=1)


def _files_equal(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "train_state.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    import json

    ja, jb = json.loads((a / "train_state.json").read_text()), json.loads((b / "train_state.json").read_text())
    assert (ja["step"], ja["loss"], ja["test_loss"]) == (jb["step"], jb["loss"], jb["test_loss"])


class _Kill(BaseException):
    """Stands for a kill: nothing on the way catches it and no clean-up runs."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(SMALL, out)
    return out


@pytest.mark.parametrize("point", [*range(10), 13, 15, 16, 57, 64, 65, 99, 125, 129])
def test_resume_after_a_kill_at_any_file_operation_is_bit_exact(tmp_path, monkeypatch, reference, point):
    """Kill the run at the n-th file operation of its checkpoint commits (13 commits: step 0 and every step; 10
    operations each: 4 staged files and the commit record written, the commit rename, 4 switch-over renames): the
    folder then loads, its checkpoint and training state agree, and resuming ends bit-exact."""

    from sdeflow.train_state import folder_state

    crash_at_file_operation(monkeypatch, point, _Kill)
    with pytest.raises(_Kill):
        train(SMALL, tmp_path / "run")
    monkeypatch.undo()
    state = folder_state(tmp_path / "run")
    if state.checkpoint:  # read-only checks before anything repairs the folder
        ck = sdeflow.load(tmp_path / "run")
        assert ck.config["extra"]["train"]["step"] == state.step
    result = train(SMALL, tmp_path / "run", resume=True)
    assert result.start_step == (state.step or 0)
    _files_equal(tmp_path / "run", reference)


@pytest.mark.parametrize("stop", [1, 5, 12])
def test_resume_after_an_interrupt_between_steps_is_bit_exact(tmp_path, reference, stop):
    def interrupt(event):
        if event.done == stop:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=rf"keeps the checkpoint of step {stop}; continue with resume=True"):
        train(SMALL, tmp_path / "run", callback=interrupt)
    train(SMALL, tmp_path / "run", resume=True)
    _files_equal(tmp_path / "run", reference)


def test_a_run_folder_is_reused_only_with_resume_or_overwrite(tmp_path, reference):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with pytest.raises(FileExistsError, match=r"already holds a run \(at step 12 of 12\); continue it with resume"):
        train(SMALL, run)
    with pytest.raises(ValueError, match="at most one of `resume`"):
        train(SMALL, run, resume=True, overwrite=True)
    # steps count the whole run: fewer is refused, the same is a no-op, more continues
    with pytest.raises(ValueError, match=r"to `steps`=6: the run is already at step 12"):
        train(TrainConfig(**{**SMALL.__dict__, "steps": 6}), run, resume=True)
    same = train(SMALL, run, resume=True)
    assert same.start_step == 12 and same.steps == 12 and len(same.loss) == 12
    _files_equal(run, reference)
    longer = train(TrainConfig(**{**SMALL.__dict__, "steps": 14}), run, resume=True)
    assert (longer.start_step, longer.steps, len(longer.loss)) == (12, 14, 14)
    replaced = train(TrainConfig(**{**SMALL.__dict__, "steps": 3, "seed": 1}), run, overwrite=True)
    assert replaced.start_step == 0 and sdeflow.load(run).config["extra"]["train"]["step"] == 3
    sdeflow.save(tmp_path / "plain", sdeflow.load(run).net, sdeflow.VPSDE(), "eps", sdeflow.ContinuousTime(), TINY,
                 sdeflow.load_dataset("moons").info)
    with pytest.raises(ValueError, match="holds a checkpoint but no training state"):
        train(SMALL, tmp_path / "plain", resume=True)


def test_a_second_writer_is_refused(tmp_path):
    from sdeflow import run_folder
    from sdeflow.run_folder import FolderLockedError

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom sdeflow import run_folder\n"
         "with run_folder.locked(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
         str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match="being written by another sdeflow process"):
            train(SMALL, tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    assert not run_folder.holds_lock(tmp_path / "run")
    train(TrainConfig(**{**SMALL.__dict__, "steps": 2}), tmp_path / "run")  # the dead holder's lock is gone


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    import numpy as np

    from sdeflow.train import TrainingDivergedError

    cfg = TrainConfig(data="moons", model=TINY, steps=50, batch_size=16, warmup=1, lr=1e6, lr_schedule="constant",
                      checkpoint_every=1, eval_every=50)
    with pytest.raises(TrainingDivergedError, match=r"Training diverged at step \d+: the (loss|gradient norm) is "
                       r"(nan|inf).* keeps the last good checkpoint \(step \d+\). Likely causes: the learning rate "
                       r"lr=1e\+06 is too high"):
        train(cfg, tmp_path / "lr")
    ck = sdeflow.load(tmp_path / "lr")
    assert all(torch.isfinite(v).all() for v in ck.net.state_dict().values())
    assert ck.config["extra"]["train"]["step"] < 50
    np.save(tmp_path / "huge.npy", np.random.default_rng(0).standard_normal((64, 2)) * 1e30)
    with pytest.raises(TrainingDivergedError, match=r"the data reach \|x\| = .*e\+30, far from unit scale"):
        train(TrainConfig(**{**cfg.__dict__, "data": str(tmp_path / "huge.npy"), "lr": 1e-3}), tmp_path / "huge")
    assert sdeflow.load(tmp_path / "huge").config["extra"]["train"]["step"] == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 5.0}, TypeError, r"`steps` must be an integer >= 1; got 5.0 \(float\). Pass a whole number, e.g. "
                                    r"steps=5"),
        ({"steps": True}, TypeError, r"`steps` must be an integer"),
        ({"lr": float("inf")}, ValueError, r"`lr` must be a finite number > 0; got inf"),
        ({"lr": float("nan")}, ValueError, r"`lr` must be a finite number > 0; got nan"),
        ({"ema_decay": 1.0}, ValueError, r"`ema_decay` must be a finite number >= 0 and < 1; got 1.0"),
        ({"grad_clip": -1.0}, ValueError, r"`grad_clip` must be a finite number >= 0"),
        ({"eps": 0.0}, ValueError, r"`eps` must be a finite number > 0 and < 1"),
        ({"warmup": -1}, ValueError, r"`warmup` must be an integer >= 0"),
        ({"model": {"type": "mlp", "dim": float("nan")}}, ValueError, r"`model` must hold only JSON values.*"
                                                                      r"model\['dim'\] = nan"),
        ({"model": "mlp"}, TypeError, r"`model` must be a network config dict"),
        ({"scale": 0.0}, ValueError, r"`scale` must be a finite number > 0"),
        ({"levels": 1}, ValueError, r"`levels` must be an integer >= 2"),
        ({"importance_sampling": "yes"}, TypeError, r"`importance_sampling` must be True or False"),
    ],
)
def test_train_config_rejects_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_train_config_accepts_numpy_numbers_and_checks_the_model_fits():
    import numpy as np

    cfg = TrainConfig(steps=np.int64(10), lr=np.float32(1e-3), seed=np.int32(3))
    assert (type(cfg.steps), type(cfg.lr), type(cfg.seed)) == (int, float, int)
    with pytest.raises(ValueError, match=r"`model` .* does not fit the data 'moons' \(samples of shape \[2\]\): "
                                         r"mat1 and mat2"):
        train(TrainConfig(data="moons", model=TINY | {"dim": 3}, steps=2))
    with pytest.raises(ValueError, match=r"`model` .* is not a valid network config: Unknown mlp option"):
        train(TrainConfig(data="moons", model=TINY | {"colour": 1}, steps=2))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"`device` must be an available device"):
            train(SMALL, device="cuda")
