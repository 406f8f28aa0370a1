"""Conditional training (condition dropout), labelled user data, and the conditional CLI commands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdeflow
from sdeflow.data import load_dataset
from sdeflow.train import TrainConfig, train

UNET = {"type": "unet", "image_size": 8, "channels": 8, "mults": [1]}


def test_conditional_training_on_digits_records_the_classes(tmp_path) -> None:
    cfg = TrainConfig(data="digits", model=UNET, steps=3, batch_size=16, warmup=1, eval_every=3, eval_size=32,
                      conditional=True, p_uncond=0.2)
    res = train(cfg, tmp_path / "run")
    assert res.model.num_classes == 10
    ckpt = sdeflow.load(tmp_path / "run")
    assert ckpt.config["model"]["num_classes"] == 10 and ckpt.score_model.num_classes == 10
    out = sdeflow.sample(ckpt.score_model, ckpt.sde, shape=(4, 1, 8, 8), seed=0, cond=[0, 1, 2, 3], guidance=2.0,
                         steps=3)
    assert out.status == "success" and out.nfe == 3
    # resume with the same config works; the stored run records conditional and p_uncond
    again = train(TrainConfig(**{**cfg.__dict__, "steps": 4}), tmp_path / "run", resume=True)
    assert again.start_step == 3
    with pytest.raises(ValueError, match=r"differs in \['p_uncond'\]"):
        train(TrainConfig(**{**cfg.__dict__, "steps": 5, "p_uncond": 0.5}), tmp_path / "run", resume=True)


def test_condition_dropout_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    from sdeflow import losses

    real = losses.DSMLoss.__call__

    def spy(self, model, x0, **kw):
        seen.append(kw["cond"].clone())
        return real(self, model, x0, **kw)

    monkeypatch.setattr(losses.DSMLoss, "__call__", spy)
    cfg = TrainConfig(data="digits", model=UNET, steps=4, batch_size=250, warmup=1, eval_every=100,
                      conditional=True, p_uncond=0.3)
    train(cfg)
    labels = torch.cat(seen[:4])
    frac = float((labels == 10).float().mean())
    assert abs(frac - 0.3) < 0.06, frac  # 1000 draws: standard error 0.015
    assert int(labels[labels < 10].max()) == 9


def test_user_npz_labels(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    lab = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "one.npz", data=x, labels=lab)
    ds = load_dataset(str(tmp_path / "one.npz"))
    assert ds.num_classes == 2 and torch.equal(ds.labels, torch.from_numpy(lab))
    np.savez(tmp_path / "split.npz", train=x, test=x[:10], train_labels=lab, test_labels=lab[:10])
    assert torch.equal(load_dataset(str(tmp_path / "split.npz"), "test").labels, torch.from_numpy(lab[:10]))
    model = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
    res = train(TrainConfig(data=str(tmp_path / "split.npz"), model=model, steps=2, batch_size=8, warmup=1,
                            eval_every=2, conditional=True))
    assert res.model.num_classes == 2
    np.savez(tmp_path / "short.npz", data=x, labels=lab[:5])
    with pytest.raises(ValueError, match=r"`labels` in .* must be a 1-D array of one class label per example"):
        load_dataset(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "neg.npz", data=x, labels=lab - 1)
    with pytest.raises(ValueError, match=r"must hold class labels 0..K-1; got -1"):
        load_dataset(str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "float.npz", data=x, labels=lab + 0.5)
    with pytest.raises(ValueError, match="must hold integer class labels"):
        load_dataset(str(tmp_path / "float.npz"))
    with pytest.raises(ValueError, match="`conditional`=True needs class labels, but the data 'moons' has none"):
        train(TrainConfig(data="moons", model=model, steps=1, conditional=True))
    with pytest.raises(ValueError, match="`p_uncond` must be"):
        TrainConfig(p_uncond=1.5)


def test_classifier_and_bayes_example(tmp_path) -> None:
    import importlib.util
    from pathlib import Path

    from sdeflow.classifier import accuracy, guided_accuracy, train_classifier

    train_set, test = load_dataset("digits"), load_dataset("digits", "test")
    clf = train_classifier(train_set, steps=60)
    assert accuracy(clf, test.x, test.labels) > 0.5  # 60 steps: far above chance (10%)
    cfg = TrainConfig(data="digits", model=UNET, steps=2, batch_size=8, warmup=1, eval_every=2, eval_size=8,
                      conditional=True)
    train(cfg, tmp_path / "run")
    ckpt = sdeflow.load(tmp_path / "run")
    res = guided_accuracy(ckpt.score_model, ckpt.sde, clf, (0.0, 2.0), n_per_class=1, steps=2)
    assert res.n == 10 and set(res.accuracy) == {0.0, 2.0} and res.nfe == {0.0: 2, 2.0: 2}
    assert torch.equal(res.labels, torch.arange(10))
    path = Path(__file__).resolve().parents[1] / "examples" / "classify_digits.py"
    spec = importlib.util.spec_from_file_location("classify_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.classify(str(tmp_path / "run"), 3, tol=1e-2, probes=1)
    assert out["n"] == 3 and 0.0 <= out["accuracy"] <= 1.0 and len(out["predicted"]) == 3
    assert out["labels"] == test.labels[:3].tolist()
