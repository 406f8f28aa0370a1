"""Checkpoints: exact save/load round trip, no pickle, and clear errors for corrupt or mismatched folders."""

from __future__ import annotations

import json

import pytest
import torch

import sdeflow
from sdeflow import VESDE, VPSDE, ContinuousTime, DDPMTimesteps
from sdeflow.checkpoint import CheckpointError
from sdeflow.models import build_model

UNET = {"type": "unet", "image_size": 8, "channels": 8, "mults": [1, 2], "time_embedding": "fourier"}
DATA = {"name": "digits", "levels": 17, "scale": 2.0, "offset": -1.0}


def _saved(tmp_path, config=UNET, sde=None, prediction="eps", label=None):
    torch.manual_seed(0)
    net = build_model(config)
    for p in net.parameters():  # non-zero everywhere, so that a wrong load cannot go unnoticed
        torch.nn.init.normal_(p, std=0.05)
    sde = sde or VPSDE(beta_min=0.2, beta_max=15.0)
    sdeflow.save(tmp_path / "ck", net, sde, prediction, label or ContinuousTime(), config, DATA)
    return net, tmp_path / "ck"


def test_round_trip_is_exact(tmp_path):
    net, path = _saved(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [".lock", "config.json", "model.safetensors"]
    ck = sdeflow.load(path)
    assert not ck.net.training
    assert ck.sample_shape == (1, 8, 8)
    assert ck.data_info == DATA | {"sample_shape": [1, 8, 8]}
    assert ck.sde.config() == VPSDE(beta_min=0.2, beta_max=15.0).config()
    for (k, a), (k2, b) in zip(net.state_dict().items(), ck.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3) * 0.9 + 0.05
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(ck.net(x, t), net(x, t), rtol=0, atol=0)
        ref = sdeflow.ScoreModel(net, ck.sde, "eps").score(x, t)
        torch.testing.assert_close(ck.score_model.score(x, t), ref, rtol=0, atol=0)


def test_round_trip_keeps_sde_prediction_and_time_label(tmp_path):
    config = {"type": "mlp", "dim": 2, "width": 16, "depth": 1, "label_scale": 1.0}
    _, path = _saved(tmp_path, config, VESDE(sigma_max=7.0), "score", DDPMTimesteps(500, integer=True))
    ck = sdeflow.load(path)
    assert isinstance(ck.sde, VESDE) and ck.sde.sigma_max == 7.0
    assert ck.score_model.prediction == "score" and ck.score_model.time_label == DDPMTimesteps(500, integer=True)
    assert ck.sample_shape == (2,)


def test_no_pickle_anywhere(tmp_path):
    _, path = _saved(tmp_path)
    raw = (path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # a safetensors file: JSON header + raw tensor bytes
    assert "__metadata__" in header and b"\x80\x04" not in raw[:2]
    json.loads((path / "config.json").read_text())


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    _, path = _saved(tmp_path)
    weights, config = path / "model.safetensors", path / "config.json"
    good_w, good_c = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_w[: len(good_w) // 2])  # truncated
    with pytest.raises(CheckpointError, match="Corrupt checkpoint: the SHA-256 of .* does not match"):
        sdeflow.load(path)
    flipped = bytearray(good_w)
    flipped[-1] ^= 0xFF  # one flipped bit in a weight
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="truncated or modified"):
        sdeflow.load(path)
    weights.write_bytes(good_w)

    config.write_text(good_c[:-20])
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        sdeflow.load(path)
    cfg = json.loads(good_c)
    cfg["model"]["channels"] = 16  # config of another network
    config.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the network described by config.json: .*shape mismatch"):
        sdeflow.load(path)
    cfg["model"] = {"type": "mlp", "dim": 64}
    config.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing .* unexpected"):
        sdeflow.load(path)
    cfg["model"] = {"type": "transformer"}
    config.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="Invalid checkpoint config .* Invalid model type 'transformer'"):
        sdeflow.load(path)
    cfg = json.loads(good_c) | {"version": 99}
    config.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="checkpoint version 99; this sdeflow reads version 1"):
        sdeflow.load(path)
    config.unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        sdeflow.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sdeflow.load(tmp_path / "nowhere")


def test_save_errors(tmp_path):
    net = build_model({"type": "mlp", "dim": 2})
    with pytest.raises(ValueError, match=r"`data_info` lacks \['levels', 'scale', 'offset'\]"):
        sdeflow.save(tmp_path, net, VPSDE(), "eps", ContinuousTime(), {"type": "mlp", "dim": 2}, {"name": "x"})
    with pytest.raises(ValueError, match="Invalid prediction 'noise'"):
        sdeflow.save(tmp_path, net, VPSDE(), "noise", ContinuousTime(), {"type": "mlp", "dim": 2}, DATA)
    with pytest.raises(TypeError, match="`net` must be a torch.nn.Module"):
        sdeflow.save(tmp_path, lambda x, t: x, VPSDE(), "eps", ContinuousTime(), {"type": "mlp", "dim": 2}, DATA)
