"""Checkpoints: exact save/load round trip, no pickle, and clear errors for corrupt or mismatched folders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import crash_at_file_operation

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
    """Every file is JSON or safetensors, and the safetensors file is exactly its JSON header plus the raw bytes of
    the tensors it lists, back to back: there is no room for a pickled object anywhere."""
    _, path = _saved(tmp_path)
    files = [p for p in path.iterdir() if p.name != ".lock"]  # .lock: the run folder's lock (holds a process id)
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    raw = (path / "model.safetensors").read_bytes()
    assert raw[:1] != b"\x80"  # a pickle starts with the PROTO opcode
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "__metadata__" in header
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert 8 + header_len + spans[-1][1] == len(raw)
    for p in path.glob("*.json"):
        json.loads(p.read_text())


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


# --- transactions: a failed or interrupted save never leaves a mixed or broken folder ----------------------------
MLP = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
MOONS = {"name": "moons", "levels": None, "scale": 1.0, "offset": 0.0}


def _mlp(seed: int):
    torch.manual_seed(seed)
    return build_model(MLP)


def _save_mlp(path, seed, **kw):
    return sdeflow.save(path, _mlp(seed), VPSDE(), "eps", ContinuousTime(), MLP, MOONS, **kw)


def _weights(path):
    return {k: v.clone() for k, v in sdeflow.load(path).net.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [{"note": float("nan")}, {"path": __import__("pathlib").Path("x")},
                                   {"inf": [1.0, float("inf")]}, {1: "non-string key"}])
def test_failed_save_leaves_the_old_checkpoint_and_writes_nothing_new(tmp_path, extra):
    _save_mlp(tmp_path / "ck", 0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    with pytest.raises(ValueError, match="`extra` must hold only JSON values"):
        _save_mlp(tmp_path / "ck", 1, extra=extra)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    with pytest.raises(ValueError, match="`extra`"):
        _save_mlp(tmp_path / "new", 1, extra=extra)
    assert not (tmp_path / "new").exists()


def test_a_save_that_fails_while_writing_leaves_the_old_pair(tmp_path, monkeypatch):
    from sdeflow import run_folder

    _save_mlp(tmp_path / "ck", 0)
    old = _weights(tmp_path / "ck")

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(run_folder, "_write_synced", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save_mlp(tmp_path / "ck", 1)
    with pytest.raises(OSError, match="No space left"):
        _save_mlp(tmp_path / "fresh", 1)
    monkeypatch.undo()
    assert _same(_weights(tmp_path / "ck"), old)
    assert not (tmp_path / "ck" / run_folder.STAGING).exists() and not (tmp_path / "fresh").exists()


class _Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


@pytest.mark.parametrize("point", range(8))
def test_a_kill_at_any_point_of_a_save_leaves_one_consistent_pair(tmp_path, monkeypatch, point):
    """Interrupt the n-th file operation of a save (staging writes, the commit rename, the switch-over renames);
    readers then see exactly the old or exactly the new checkpoint, and the next writer completes or discards it."""
    from sdeflow import run_folder

    _save_mlp(tmp_path / "ck", 0)
    old = _weights(tmp_path / "ck")
    new = {k: v.clone() for k, v in _mlp(1).state_dict().items()}
    crash_at_file_operation(monkeypatch, point, _Crash)
    try:
        _save_mlp(tmp_path / "ck", 1)
        crashed = False
    except _Crash:
        crashed = True
    monkeypatch.undo()
    seen = _weights(tmp_path / "ck")  # read-only view, before any writer repairs the folder
    assert _same(seen, old) or _same(seen, new)
    assert crashed or _same(seen, new)
    _save_mlp(tmp_path / "ck", 2)  # the next writer recovers the folder and commits on top
    assert _same(_weights(tmp_path / "ck"), {k: v for k, v in _mlp(2).state_dict().items()})
    assert not (tmp_path / "ck" / run_folder.STAGING).exists()


_HOLD_LOCK = """
import sys, time
from sdeflow import run_folder
with run_folder.locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_the_lock_refuses_a_second_writer_and_dies_with_its_process(tmp_path):
    import signal
    import subprocess
    import sys

    from sdeflow.run_folder import FolderLockedError

    _save_mlp(tmp_path / "ck", 0)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "ck")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"being written by another sdeflow process \(pid {holder.pid}\)"):
            _save_mlp(tmp_path / "ck", 1)
        sdeflow.load(tmp_path / "ck")  # readers need no lock
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the stale .lock file stays, the lock itself is gone
        holder.wait()
    assert (tmp_path / "ck" / ".lock").exists()
    _save_mlp(tmp_path / "ck", 1)
    assert _same(_weights(tmp_path / "ck"), {k: v for k, v in _mlp(1).state_dict().items()})


# --- load validates config.json key by key -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(sde="vp"), r"key 'sde' must be an object with a \"type\"; got 'vp'"),
        (lambda c: c.update(data=None), r"key 'data' must be an object with exactly name, levels"),
        (lambda c: c["sde"].pop("beta_max"), r"key 'sde' lacks \['beta_max'\] \(a default would be guessed\)"),
        (lambda c: c["sde"].update(beta_max="20"), r"key 'sde'"),
        (lambda c: c["sde"].update(color=1), r"key 'sde'.*color"),
        (lambda c: c.update(prediction="noise"), r"key 'prediction' must be one of"),
        (lambda c: c.update(time_label={"type": "DDPMTimesteps"}), r"key 'time_label' lacks \['N', 'integer'\]"),
        (lambda c: c["data"].update(scale=-2.0), r"`data\['scale'\]` must be a finite number > 0; got -2.0"),
        (lambda c: c["data"].update(sample_shape=[3]), r"key 'data.sample_shape' must be the network's sample shape"),
        (lambda c: c.update(extra=[]), r"key 'extra' must be an object"),
        (lambda c: c.update(color="red"), r"unknown keys \['color'\]"),
        (lambda c: c.pop("time_label"), r"lacks the keys \['time_label'\]"),
        (lambda c: c.update(weights_sha256=None), r"key 'weights_sha256' must be a SHA-256 hex digest"),
    ],
)
def test_load_validates_each_config_key(tmp_path, edit, match):
    path = _save_mlp(tmp_path / "ck", 0)
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        sdeflow.load(path)


def test_load_argument_errors(tmp_path):
    path = _save_mlp(tmp_path / "ck", 0)
    with pytest.raises(ValueError, match=r"`map_location` must be a torch device such as 'cpu'.*got 'gpu0'"):
        sdeflow.load(path, map_location="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"`map_location` must be an available device; got 'cuda'.*no CUDA"):
            sdeflow.load(path, map_location="cuda")
    with pytest.raises(FileNotFoundError, match=r"must be a checkpoint folder; got the file .*config.json. Pass its"):
        sdeflow.load(path / "config.json")
