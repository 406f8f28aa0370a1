"""Every user error of every command is ONE line `sdeflow <command>: error: ...` with exit status 2 and no traceback,
checked before any computation; Ctrl-C exits 130 with one line; JSON outputs stay valid JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sdeflow
from sdeflow.cli import main
from sdeflow.models import build_model
from sdeflow.train import TrainConfig, train

MLP = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    ck = sdeflow.save(root / "ck", build_model(MLP), sdeflow.VPSDE(), "eps", sdeflow.ContinuousTime(), MLP,
                      sdeflow.load_dataset("moons").info)
    edited = root / "edited"
    edited.mkdir()
    for name in ("model.safetensors", "config.json"):
        (edited / name).write_bytes((ck / name).read_bytes())
    cfg = json.loads((edited / "config.json").read_text())
    cfg["sde"] = "vp"
    (edited / "config.json").write_text(json.dumps(cfg))
    train(TrainConfig(data="moons", model=MLP, steps=2, batch_size=8, warmup=1, eval_every=2), root / "run")
    (root / "file.txt").write_text("not a folder")
    (root / "broken.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "garbage.npy").write_bytes(b"this is not numpy" * 4)
    (root / "qs").mkdir()
    (root / "qs" / "report.json").write_text("{}")
    return {"ck": str(ck), "edited": str(edited), "run": str(root / "run"), "file": str(root / "file.txt"),
            "under": str(root / "file.txt" / "out"), "dir": str(root), "npz": str(root / "broken.npz"),
            "npy": str(root / "garbage.npy"), "new": str(root / "new"), "qs": str(root / "qs"),
            "cfgfile": str(ck / "config.json")}


M = '{"type": "mlp", "dim": 2, "width": 8, "depth": 1}'
T = ["train", "--data", "moons", "--no-progress", "--model", M]
L = ["likelihood", "--no-progress"]
CASES = [
    # train
    (T + ["--out", "{file}"], r"`--out` must be a folder; got .*file.txt is an existing file"),
    (T + ["--out", "{under}"], r"`--out` must be a path whose folders can be created; .*is a file, not a folder"),
    (T + ["--out", "{new}", "--lr", "inf"], r"`lr` must be a finite number > 0; got inf"),
    (T[:-2] + ["--model", '{"type": "mlp", "dim": NaN}', "--out", "{new}"], r"model\['dim'\] = nan"),
    (T[:-2] + ["--model", '{"type": "mlp", "dim": 3}', "--out", "{new}"], r"does not fit the data 'moons'"),
    (T[:-2] + ["--model", "[1, 2]", "--out", "{new}"], r"--model must be a JSON object"),
    (T + ["--steps", "5.0", "--out", "{new}"], r"argument --steps: invalid int value: '5.0'"),
    (T + ["--ema-decay", "1", "--out", "{new}"], r"`ema_decay` must be a finite number >= 0 and < 1"),
    (["train", "--data", "{npz}", "--out", "{new}"], r"broken.npz is not a valid .npz archive"),
    (["train", "--data", "{npy}", "--out", "{new}"], r"garbage.npy is not a .npy file"),
    (T + ["--resume", "--out", "{new}"], r"Cannot resume: .*new does not exist"),
    (T + ["--resume", "--overwrite", "--out", "{new}"], r"argument --overwrite: not allowed with argument --resume"),
    (T + ["--steps", "2", "--batch-size", "8", "--warmup", "1", "--eval-every", "2", "--out", "{run}"],
     r"already holds a run \(at step 2 of 2\); continue it with resume=True \(--resume\)"),
    (T + ["--steps", "1", "--batch-size", "8", "--warmup", "1", "--eval-every", "2", "--resume", "--out", "{run}"],
     r"the run is already at step 2"),
    (T + ["--out", "{ck}", "--resume"], r"holds a checkpoint but no training state"),
    # likelihood
    (L + ["--oracle", "--limit", "0", "--out", "{new}"], r"--limit must be >= 1"),
    (L + ["--checkpoint", "{cfgfile}", "--out", "{new}"], r"must be a checkpoint folder; got the file .*Pass its"),
    (L + ["--checkpoint", "{edited}", "--out", "{new}"], r"key 'sde' must be an object"),
    (L + ["--oracle", "--out", "{file}"], r"`--out` must be a folder"),
    (L + ["--checkpoint", "{ck}", "--data", "digits", "--out", "{new}"], r"samples of shape \(1, 8, 8\)"),
    (L + ["--oracle", "--data", "{npz}", "--out", "{new}"], r"not a valid .npz archive"),
    (L + ["--oracle", "--rtol", "nan", "--out", "{new}"], r"--rtol must be a finite number > 0"),
    # quickstart (argument errors only)
    (["quickstart", "--out", "{file}"], r"`--out` must be a folder"),
    (["quickstart", "--out", "{under}"], r"is a file, not a folder"),
    (["quickstart", "--steps", "0", "--out", "{new}"], r"--steps must be >= 1; got 0"),
    (["quickstart", "--n-samples", "0", "--out", "{new}"], r"--n-samples must be >= 1; got 0"),
    (["quickstart", "--n-test", "1", "--out", "{new}"], r"--n-test must be >= 2"),
    (["quickstart", "--out", "{qs}"], r"already holds quickstart results; pass --overwrite"),
    # compare
    (["compare", "--n", "0", "--out", "{new}"], r"--n must be >= 1; got 0"),
    (["compare", "--nfe", "0,10", "--out", "{new}"], r"--nfe must be a comma list of positive integers"),
    (["compare", "--nfe", "ten", "--out", "{new}"], r"--nfe must be a comma list of integers"),
    (["compare", "--dim", "0", "--out", "{new}"], r"--dim must be >= 1"),
    (["compare", "--out", "{file}"], r"`--out` must be a folder"),
    (["compare", "--checkpoint", "{edited}", "--out", "{new}"], r"key 'sde'"),
    # sample
    (["sample", "--n", "0", "--out", "{new}.npy"], r"--n must be >= 1"),
    (["sample", "--out", "{dir}"], r"`--out` must be a file path; got .* is an existing folder"),
    (["sample", "--out", "{under}.npy"], r"is a file, not a folder"),
    (["sample", "--checkpoint", "{edited}", "--out", "{new}.npy"], r"key 'sde'"),
    (["sample", "--checkpoint", "{new}", "--out", "{new}.npy"], r"Checkpoint folder .* does not exist"),
    # export
    (["export", "--checkpoint", "{new}", "--out", "{new}.onnx"], r"Checkpoint folder .* does not exist"),
    (["export", "--checkpoint", "{ck}", "--out", "{dir}"], r"`--out` must be a file path"),
    (["export", "--checkpoint", "{ck}", "--steps", "0"], r"--steps must be >= 1"),
    (["export", "--checkpoint", "{edited}", "--out", "{new}.onnx"], r"key 'sde'"),
    # run-onnx
    (["run-onnx", "{new}.onnx", "--out", "{new}.npy"], r"new.onnx"),
    (["run-onnx", "{new}.onnx", "--out", "{new}.txt"], r"`--out` must end in .*\.png"),
    (["run-onnx", "{new}.onnx", "--batch", "0", "--out", "{new}.npy"], r"--batch must be >= 1"),
    # argument parsing
    (["sample", "--n", "many"], r"argument (--num-samples/)?--n: invalid int value"),
    (["likelihood", "--divergence", "hutch"], r"argument --divergence: invalid choice"),
    (["train", "--out", "{new}", "--colour", "red"], r"^sdeflow train: error: unrecognized arguments: --colour red"),
]
if NO_CUDA:
    CASES += [
        (T + ["--device", "cuda", "--out", "{new}"], r"`--device` must be an available device; got 'cuda'"),
        (L + ["--oracle", "--device", "cuda", "--out", "{new}"], r"`--device` must be an available device"),
        (["sample", "--device", "cuda", "--out", "{new}.npy"], r"`--device` must be an available device"),
    ]


@pytest.mark.parametrize("argv, match", CASES, ids=[" ".join(c[0][:1] + c[0][-3:]) for c in CASES])
def test_a_user_error_is_one_line_with_status_2(files, capsys, argv, match):
    import re

    for key, value in files.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert len(lines) == 1, captured.err
    assert re.match(rf"sdeflow( {argv[0]})?: error: ", lines[0]), lines[0]
    assert re.search(match, lines[0]), lines[0]
    assert not Path(files["new"]).exists(), "an error left output behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_out_is_refused_before_computing(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["compare", "--out", str(ro / "x")]) == 2
        assert "`--out` must be a writable location" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_ctrl_c_unexpected_errors_and_the_traceback_switch(monkeypatch, capsys):
    import sdeflow.cli.sample as sample_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_cli, "run", interrupted)
    assert main(["sample"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["sdeflow sample: interrupted"]

    def bug(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(sample_cli, "run", bug)
    assert main(["sample"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected RuntimeError: something broke" in err[0] and "SDEFLOW_TRACEBACK=1" in err[0]
    monkeypatch.setenv("SDEFLOW_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="something"):
        main(["sample"])


def test_ctrl_c_during_training_exits_130_with_one_line_and_a_resumable_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sdeflow", *T, "--steps", "100000", "--batch-size", "8", "--checkpoint-every", "1",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].strip().splitlines()
    assert proc.returncode == 130, err
    assert len(err) == 1 and err[0].startswith("sdeflow train: interrupted (") and "--resume" in err[0], err
    step = sdeflow.load(out).config["extra"]["train"]["step"]
    assert f"keeps the checkpoint of step {step};" in err[0]


def test_json_outputs_are_valid_json_with_null_for_undefined_values(tmp_path, capsys):
    out = tmp_path / "lik"
    assert main(["likelihood", "--oracle", "--limit", "1", "--no-progress", "--out", str(out)]) == 0
    text = (out / "summary.json").read_text()

    def no_constants(name):
        raise AssertionError(f"summary.json holds {name}, which is not JSON")

    summary = json.loads(text, parse_constant=no_constants)
    assert summary["nats_per_dim_std_err"] is None  # one example: no standard error
    assert np.isfinite(summary["mean_nats_per_dim"])


def test_likelihood_in_float64_casts_the_network(files, tmp_path):
    out = tmp_path / "lik64"
    assert main(["likelihood", "--checkpoint", files["ck"], "--dtype", "float64", "--limit", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["dtype"] == "float64"


def test_resume_reports_the_steps_it_trained(tmp_path, capsys):
    run = ["--steps", "6", "--batch-size", "8", "--warmup", "1", "--eval-every", "3", "--checkpoint-every", "2",
           "--out", str(tmp_path / "run")]
    assert main([*T, *run[:1], "4", *run[2:]]) == 0
    assert "trained 4 steps in" in capsys.readouterr().out
    assert main([*T, *run, "--resume"]) == 0
    assert "trained steps 5..6 (2 new steps) in" in capsys.readouterr().out
    assert main([*T, *run, "--resume"]) == 0
    assert "nothing to train: the run is already at step 6" in capsys.readouterr().out
    assert main([*T, *run[:1], "3", *run[2:], "--resume"]) == 2
    assert "the run is already at step 6. Pass steps >= 6" in capsys.readouterr().err
