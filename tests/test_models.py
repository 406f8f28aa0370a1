"""Networks: shapes, time conditioning, parameter budget, config round trip and ONNX export."""

from __future__ import annotations

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
