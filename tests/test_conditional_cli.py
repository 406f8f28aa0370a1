"""The conditional CLI: sample --class/--guidance and train --conditional (one-line errors, exit status 2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import sdeflow
from sdeflow.cli import main
from sdeflow.models import build_model

CMLP = {"type": "mlp", "dim": 2, "width": 8, "depth": 1, "num_classes": 3}
PLAIN = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ccli")
    torch.manual_seed(0)
    info = sdeflow.load_dataset("moons").info
    sdeflow.save(root / "cond", build_model(CMLP), sdeflow.VPSDE(), "eps", sdeflow.ContinuousTime(), CMLP, info)
    sdeflow.save(root / "plain", build_model(PLAIN), sdeflow.VPSDE(), "eps", sdeflow.ContinuousTime(), PLAIN, info)
    return {"cond": str(root / "cond"), "plain": str(root / "plain"), "dir": str(root), "new": str(root / "new")}


def _fill(argv: list[str], files: dict[str, str]) -> list[str]:
    for key, value in files.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    return argv


def test_sample_classes_and_guidance(files, capsys) -> None:
    out = files["dir"] + "/s.npy"
    argv = _fill(["sample", "--checkpoint", "{cond}", "--class", "0,1", "--guidance", "2", "--n", "6", "--steps",
                  "4", "--no-progress", "--guidance-interval", "0.0,1.0", "--out", out], files)
    assert main(argv) == 0
    meta = json.loads(open(out + ".json").read())
    assert meta["classes"] == [0, 0, 0, 1, 1, 1] and meta["guidance"] == 2.0 and meta["nfe"] == 4
    ckpt = sdeflow.load(files["cond"])
    ref = sdeflow.sample(ckpt.score_model, ckpt.sde, shape=(6, 2), seed=0, steps=4, cond=[0, 0, 0, 1, 1, 1],
                         guidance=2.0)
    assert np.allclose(np.load(out), ref.samples.numpy(), atol=1e-6)
    # the oracle's classes are its components
    assert main(["sample", "--class", "3", "--guidance", "1", "--n", "4", "--steps", "3", "--no-progress", "--out",
                 files["dir"] + "/o.npy"]) == 0


CASES = [
    (["sample", "--checkpoint", "{plain}", "--class", "1", "--out", "{new}.npy"], r"`--class` was given but the "
     r"model is unconditional"),
    (["sample", "--checkpoint", "{cond}", "--class", "3", "--out", "{new}.npy"],
     r"`--class` must be class labels in 0..2; got \[3\]"),
    (["sample", "--checkpoint", "{cond}", "--class", "seven", "--out", "{new}.npy"],
     r"`--class` must be a class label or a comma-separated list"),
    (["sample", "--checkpoint", "{cond}", "--class", "0,1,2", "--n", "4", "--out", "{new}.npy"],
     r"`--class` must be one class, 4 classes \(one per sample\) or a list whose length divides 4"),
    (["sample", "--checkpoint", "{cond}", "--guidance", "2", "--out", "{new}.npy"], r"--guidance needs --class"),
    (["sample", "--checkpoint", "{cond}", "--class", "1", "--guidance-rescale", "2", "--out", "{new}.npy"],
     r"`--guidance-rescale` must be a number in \[0, 1\]; got 2.0"),
    (["sample", "--checkpoint", "{cond}", "--class", "1", "--guidance-interval", "0.5", "--out", "{new}.npy"],
     r"`--guidance-interval` must be two times T_LO,T_HI"),
    (["sample", "--checkpoint", "{cond}", "--class", "1", "--guidance-interval", "0.5,2", "--out", "{new}.npy"],
     r"`guidance_interval\[1\]` must be"),
    (["sample", "--checkpoint", "{cond}", "--class", "1", "--guidance", "inf", "--out", "{new}.npy"],
     r"`--guidance` must be a finite number"),
    (["train", "--data", "moons", "--conditional", "--no-progress", "--out", "{new}"],
     r"`conditional`=True needs class labels, but the data 'moons' has none"),
    (["train", "--data", "digits", "--conditional", "--p-uncond", "2", "--out", "{new}"], r"`p_uncond` must be"),
]


@pytest.mark.parametrize("argv, match", CASES, ids=[" ".join(c[0][:1] + c[0][-5:-2]) for c in CASES])
def test_a_user_error_is_one_line_with_status_2(files, capsys, argv, match) -> None:
    argv = _fill(argv, files)
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert re.match(rf"sdeflow {argv[0]}: error: ", lines[0]) and re.search(match, lines[0]), lines[0]
    import os

    assert not os.path.exists(files["new"]) and not os.path.exists(files["new"] + ".npy")


def test_likelihood_conditional_per_class(files, tmp_path) -> None:
    out = tmp_path / "lik"
    assert main(["likelihood", "--oracle", "--conditional", "--prior", "oracle", "--oracle-components", "3",
                 "--limit", "8", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [line.split(",") for line in (out / "likelihood.csv").read_text().splitlines()]
    head = rows[0]
    got = {int(r[head.index("index")]): (int(r[head.index("label")]), float(r[head.index("log_p")])) for r in rows[1:]}
    gm = sdeflow.GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(0))
    x, comp = gm.sample_labelled(8, generator=torch.Generator().manual_seed(1))
    exact = gm.log_prob(x.double(), 1e-5, sdeflow.VPSDE(), labels=comp)
    for i in range(8):
        assert got[i][0] == int(comp[i]) and abs(got[i][1] - float(exact[i])) / 2 < 1e-3
    per = summary["per_class_nats_per_dim"]
    assert sum(v["n"] for v in per.values()) == 8 and summary["conditional"] is True


LIK_CASES = [
    (["likelihood", "--checkpoint", "{plain}", "--conditional", "--out", "{new}"], r"--conditional\) needs a "
     r"class-conditional model"),
    (["likelihood", "--checkpoint", "{cond}", "--conditional", "--out", "{new}"], r"--conditional\) needs class "
     r"labels, but the data 'moons' has none"),
]


@pytest.mark.parametrize("argv, match", LIK_CASES)
def test_likelihood_conditional_errors(files, capsys, argv, match) -> None:
    rc = main(_fill(argv, files))
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and re.search(match, lines[0]), lines


def test_likelihood_conditional_on_a_digits_checkpoint(tmp_path) -> None:
    from sdeflow.train import TrainConfig, train

    unet = {"type": "unet", "image_size": 8, "channels": 16, "mults": [1]}
    train(TrainConfig(data="digits", model=unet, steps=1, batch_size=8, warmup=1, eval_every=1, eval_size=8,
                      conditional=True), tmp_path / "run")
    out = tmp_path / "lik"
    assert main(["likelihood", "--checkpoint", str(tmp_path / "run"), "--conditional", "--limit", "4",
                 "--divergence", "rademacher", "--rtol", "1e-2", "--atol", "1e-2", "--no-progress",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    test = sdeflow.load_dataset("digits", "test")
    per = summary["per_class_bpd"]
    assert sorted(int(c) for c in per) == sorted(set(test.labels[:4].tolist()))
    rows = (out / "likelihood.csv").read_text().splitlines()
    assert rows[0].split(",")[1] == "label" and len(rows) == 5
