"""Guided ONNX graphs: inputs x_T, class_labels int64 [B] and the guidance weight w (one file for every w), for
every exportable sampler; parity with ``sdeflow.sample(..., cond=, guidance=)``; the runtime and run-onnx."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import sdeflow
from sdeflow.cli import main
from sdeflow.export import export_sampler
from sdeflow.export.runtime import OnnxSampler
from sdeflow.models import build_model

CFG = {"type": "unet", "image_size": 8, "channels": 16, "mults": [1], "num_classes": 10}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = build_model(CFG)
    for p in net.parameters():  # a random network whose output depends on the class (the output layer starts at 0)
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("guided") / "ck"
    sde = sdeflow.VPSDE()
    sdeflow.save(path, net, sde, "eps", sdeflow.LogNoiseLevel(sde), CFG, sdeflow.load_dataset("digits").info)
    return str(path)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++", "unipc", "ipndm", "deis",
                                     "heun"])
def test_guided_graph_parity_for_every_sampler(ckpt, tmp_path, sampler) -> None:
    report = export_sampler(ckpt, tmp_path / "g.onnx", sampler=sampler, steps=4, guided=True, batch_sizes=(1, 5))
    assert report.verified and max(report.parity.values()) <= 1e-5  # the worst of w = 0 and w = 2
    runner = OnnxSampler(tmp_path / "g.onnx", providers="cpu", threads=1)
    assert runner.info.num_classes == 10
    ck = sdeflow.load(ckpt)
    labels = np.array([3, 7, 0, 10])  # 10 = no label
    for w in (0.0, 1.5, 4.0):  # one file, every w
        x_T, noise = runner.draw(4, 0, 4)
        got = runner.run(x_T, noise, class_labels=labels, guidance=w)
        ref = sdeflow.sample(ck.score_model, ck.sde, torch.from_numpy(x_T), sampler=sampler, steps=4,
                             noise=None if noise is None else torch.from_numpy(noise),
                             cond=torch.from_numpy(labels), guidance=w).samples.numpy()
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5
    a = runner.sample(2, 0, class_labels=np.array([3, 3]), guidance=0.0)
    b = runner.sample(2, 0, class_labels=np.array([3, 3]), guidance=4.0)
    assert np.abs(a - b).max() > 1e-3  # the guidance input is used


def test_guided_export_and_runtime_errors(ckpt, tmp_path) -> None:
    plain = {"type": "unet", "image_size": 8, "channels": 8, "mults": [1]}
    path = sdeflow.save(tmp_path / "plain", build_model(plain), sdeflow.VPSDE(), "eps", sdeflow.ContinuousTime(),
                        plain, sdeflow.load_dataset("digits").info)
    with pytest.raises(ValueError, match="`guided=True` needs a class-conditional model"):
        export_sampler(path, tmp_path / "x.onnx", steps=3, guided=True)
    assert main(["export", "--checkpoint", str(path), "--guided", "--steps", "3", "--out",
                 str(tmp_path / "x.onnx")]) == 2  # one line, exit status 2 (the message is the one above)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="unrolled form only"):
        export_sampler(ckpt, tmp_path / "x.onnx", steps=3, guided=True, dynamic_steps=True)
    export_sampler(ckpt, tmp_path / "g.onnx", steps=3, guided=True, batch_sizes=(2,))
    runner = OnnxSampler(tmp_path / "g.onnx", providers="cpu", threads=1)
    x_T, _ = runner.draw(2, 0)
    with pytest.raises(ValueError, match="guided graph of 10 classes: pass class_labels"):
        runner.run(x_T)
    with pytest.raises(ValueError, match=r"`class_labels` must lie in 0..9 \(10 = no label\); got 0..11"):
        runner.run(x_T, class_labels=np.array([0, 11]))
    with pytest.raises(ValueError, match=r"`class_labels` must be an integer array of shape \[B\] = \[2\]"):
        runner.run(x_T, class_labels=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`guidance` must be a finite number"):
        runner.run(x_T, class_labels=np.array([0, 1]), guidance=float("nan"))
    # a conditional checkpoint exported without guidance: the unconditional (null class) sampler
    report = export_sampler(ckpt, tmp_path / "u.onnx", steps=3, batch_sizes=(2,))
    assert report.verified and OnnxSampler(tmp_path / "u.onnx", providers="cpu").info.num_classes is None


def test_run_onnx_class_and_guidance(ckpt, tmp_path, capsys) -> None:
    onnx_path = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", ckpt, "--out", str(onnx_path), "--steps", "3", "--guided"]) == 0
    out = tmp_path / "s.npy"
    assert main(["run-onnx", str(onnx_path), "--class", "3", "--guidance", "2", "--batch", "4", "--out",
                 str(out)]) == 0
    ck = sdeflow.load(ckpt)
    ref = sdeflow.sample(ck.score_model, ck.sde, shape=(4, 1, 8, 8), seed=0, steps=3, cond=3, guidance=2.0,
                         sampler="ddim").samples.numpy()
    got = np.load(out)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5
    from sdeflow.export.runtime import main as runtime_main  # the torch-free script takes them too

    assert runtime_main([str(onnx_path), "--class", "3", "--guidance", "2", "--batch", "4", "--out",
                         str(tmp_path / "r.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "r.npy"), got)
    capsys.readouterr()
    for argv, match in [
        (["run-onnx", str(onnx_path), "--out", str(tmp_path / "n.npy")], r"guided graph of 10 classes: pass --class"),
        (["run-onnx", str(onnx_path), "--class", "12", "--out", str(tmp_path / "n.npy")],
         r"`--class` must be class labels in 0..9; got \[12\]"),
        (["run-onnx", str(onnx_path), "--class", "1", "--guidance", "nan", "--out", str(tmp_path / "n.npy")],
         r"`--guidance` must be a finite number"),
    ]:
        rc = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and re.search(match, lines[0]), lines
    assert not (tmp_path / "n.npy").exists()


def test_diffusers_unet_with_class_embeddings_exports_guided(tmp_path) -> None:
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=4)
    model = sdeflow.ScoreModel(lambda x, t, c: unet(x, t, class_labels=c).sample, sdeflow.VPSDE(), "eps",
                               sdeflow.DDPMTimesteps(1000, integer=True), num_classes=3)  # class 3 = no label
    report = export_sampler(model, tmp_path / "unet.onnx", "dpmsolver++", steps=3, sample_shape=(1, 8, 8),
                            guided=True, batch_sizes=(1, 4))
    assert report.verified and max(report.parity.values()) <= 1e-5
    x = OnnxSampler(report.path, providers="cpu", threads=1).sample(2, seed=0, class_labels=np.array([0, 2]),
                                                                    guidance=1.0)
    assert x.shape == (2, 1, 8, 8) and np.isfinite(x).all()
