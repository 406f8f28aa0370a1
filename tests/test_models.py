"""Networks: shapes, time conditioning, parameter budget, config round trip and ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdeflow.models import MLP, UNet, build_model, default_model_config


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (1, 28, 28)])
def test_shapes_and_time_conditioning(shape, embedding):
    torch.manual_seed(0)
    config = default_model_config(shape) | {"time_embedding": embedding}
    net = build_model(config)
    assert net.sample_shape == shape
    x = torch.randn(3, *shape)
    if isinstance(net, UNet):  # the output layer starts at zero: perturb it to see the conditioning
        torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    out_a = net(x, torch.full((3,), 0.1))
    out_b = net(x, torch.full((3,), 0.9))
    assert out_a.shape == x.shape and torch.isfinite(out_a).all()
    assert (out_a - out_b).abs().max() > 1e-4  # the label changes the output
    # integer DDPM timesteps are accepted as labels
    assert net(x, torch.tensor([0, 500, 999])).shape == x.shape


def test_default_unet_for_8x8_has_about_240k_parameters_and_starts_at_zero():
    net = build_model(default_model_config((1, 8, 8)))
    assert 200_000 < _n_params(net) < 300_000
    assert torch.equal(net(torch.randn(2, 1, 8, 8), torch.rand(2)), torch.zeros(2, 1, 8, 8))


def test_build_model_round_trip_and_errors():
    torch.manual_seed(0)
    a = build_model({"type": "mlp", "dim": 3, "width": 16, "depth": 2})
    b = build_model({"type": "mlp", "dim": 3, "width": 16, "depth": 2})
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(a(x, t), b(x, t)) and isinstance(a, MLP)
    with pytest.raises(ValueError, match=r"Invalid model type 'resnet'. Must be one of \['mlp', 'unet'\]"):
        build_model({"type": "resnet"})
    with pytest.raises(ValueError, match=r"Unknown unet option\(s\) \['chanels'\]"):
        build_model({"type": "unet", "chanels": 3})
    with pytest.raises(TypeError, match="`config` must be a dict"):
        build_model("unet")
    with pytest.raises(ValueError, match="must be divisible by 2"):
        UNet(image_size=7, mults=(1, 2))
    with pytest.raises(ValueError, match="Invalid time_embedding 'rope'"):
        MLP(2, time_embedding="rope")
    with pytest.raises(ValueError, match="No default network for samples of shape"):
        default_model_config((3, 4, 5))


def test_unet_exports_to_onnx_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = build_model(default_model_config((1, 8, 8))).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7])
    path = tmp_path / "unet.onnx"
    torch.onnx.export(net, (x, t), str(path), input_names=["x", "t"], output_names=["out"],
                      dynamic_axes={"x": {0: "B"}, "t": {0: "B"}, "out": {0: "B"}}, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x5, t5 = torch.randn(5, 1, 8, 8), torch.rand(5)  # another batch size than traced
    got = sess.run(None, {"x": x5.numpy(), "t": t5.numpy()})[0]
    with torch.no_grad():
        want = net(x5, t5).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


# --- noise-level conditioning (issue 12) -----------------------------------------------------------------------------
def test_log_noise_level_label_is_c_noise_for_every_sde():
    from sdeflow import VESDE, VPSDE, LogNoiseLevel, SubVPSDE
    from sdeflow.parametrization import time_label_from_config

    t = torch.tensor([1e-5, 0.01, 0.5, 1.0], dtype=torch.float64)
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        label = LogNoiseLevel(sde)
        c = label(t)
        expected = 0.25 * (sde.sigma(t).log() - sde.log_alpha(t))  # EDM: log(sigma / alpha) / 4
        assert torch.allclose(c, expected, rtol=1e-12) and (c.diff() > 0).all()
        assert time_label_from_config(label.config()) == label
    # the same label at the same noise level, whatever the SDE: c_noise depends on sigma/alpha only
    lam = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    vp, ve = VPSDE(), VESDE()
    assert torch.allclose(LogNoiseLevel(vp)(vp.t_from_log_snr(lam)), LogNoiseLevel(ve)(ve.t_from_log_snr(lam)))
    with pytest.raises(TypeError, match="`sde` of LogNoiseLevel must be an sdeflow SDE"):
        LogNoiseLevel("vp")


def test_noise_level_models_work_with_torch_func_and_export(tmp_path):
    from sdeflow import VPSDE, LogNoiseLevel, ScoreModel
    from sdeflow.export import export_ddim
    from sdeflow.export import runtime as rt

    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLP(2, width=16, depth=1, label_scale=16.0), sde, "eps", LogNoiseLevel(sde))
    x, t = torch.randn(3, 2), torch.full((3,), 0.3)
    out, vjp = torch.func.vjp(lambda y: model.score(y, t), x)
    v = torch.randn_like(out)
    (grad,) = vjp(v)
    with torch.enable_grad():
        y = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(model.score(y, t), y, v)
    assert torch.allclose(grad, ref)
    # the exporter stores the network's labels (the runtime computes none): LogNoiseLevel's, at each evaluation
    report = export_ddim(model, tmp_path / "m.onnx", steps=4, sample_shape=(2,), dynamic_steps=True,
                         batch_sizes=(1, 3))
    assert report.verified
    times = torch.tensor(json.loads(rt.OnnxSampler(report.path).info.properties["sdeflow.times"]))
    labels = rt.OnnxSampler(report.path).info.tables[4].labels
    np.testing.assert_allclose(labels, model.time_label(times[:-1]).numpy(), rtol=1e-6)


def test_old_checkpoints_load_and_evaluate_as_before(tmp_path):
    """A checkpoint written before the conditioning option (label t, label_scale 1000, no 'conditioning' anywhere)
    loads with its ContinuousTime label and gives the network's outputs bit for bit."""
    import json

    import sdeflow
    from sdeflow import VPSDE, ContinuousTime

    torch.manual_seed(0)
    config = {"type": "unet", "image_size": 8, "in_channels": 1, "channels": 8, "mults": [1, 2]}
    net = build_model(config)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    data = {"name": "digits", "levels": 17, "scale": 2.0, "offset": -1.0, "sample_shape": [1, 8, 8]}
    path = sdeflow.save(tmp_path / "old", net, VPSDE(), "eps", ContinuousTime(), config, data)
    stored = json.loads((path / "config.json").read_text())
    assert stored["time_label"] == {"type": "ContinuousTime"} and "label_scale" not in stored["model"]
    ck = sdeflow.load(path)
    assert ck.score_model.time_label == ContinuousTime() and ck.net.embed[0].freqs.max() == pytest.approx(1000.0)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert torch.equal(ck.score_model.eps(x, t), net(x, t))


def test_training_records_the_conditioning(tmp_path):
    import sdeflow
    from sdeflow import VPSDE, ContinuousTime, LogNoiseLevel, TrainConfig
    from sdeflow.train import train

    tiny = {"type": "mlp", "dim": 2, "width": 8, "depth": 1}
    for cond, label, scale in (("noise_level", LogNoiseLevel(VPSDE()), 16.0), ("t", ContinuousTime(), None)):
        cfg = TrainConfig(data="moons", model=tiny, steps=2, batch_size=8, warmup=1, eval_every=2, checkpoint_every=2,
                          conditioning=cond)
        assert cfg.time_label() == label
        train(cfg, tmp_path / cond)
        ck = sdeflow.load(tmp_path / cond)
        assert ck.score_model.time_label == label and ck.config["model"].get("label_scale") == scale
    with pytest.raises(ValueError, match=r"`conditioning` must be one of \('noise_level', 't'\); got 'sigma'"):
        TrainConfig(conditioning="sigma")


def test_runs_started_before_the_conditioning_option_resume_with_t(tmp_path):
    import json

    from sdeflow import TrainConfig
    from sdeflow.train import train

    tiny = {"type": "mlp", "dim": 2, "width": 8, "depth": 1, "label_scale": 1000.0}
    kw = dict(data="moons", model=tiny, batch_size=8, warmup=1, eval_every=2, checkpoint_every=2, conditioning="t")
    train(TrainConfig(steps=2, **kw), tmp_path / "run")
    state = tmp_path / "run" / "train_state.json"
    meta = json.loads(state.read_text())
    del meta["config"]["conditioning"]  # what a run written before the option stored
    state.write_text(json.dumps(meta))
    assert train(TrainConfig(steps=4, **kw), tmp_path / "run", resume=True).steps == 4
    with pytest.raises(ValueError, match=r"differs in \['conditioning'\]"):
        train(TrainConfig(steps=6, **(kw | {"conditioning": "noise_level"})), tmp_path / "run", resume=True)
