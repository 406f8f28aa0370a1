"""A real diffusers UNet2DModel (small, random weights) exports and verifies as is, from each natural wrapping."""

from __future__ import annotations

import pytest
import torch

from sdeflow import VPSDE, DDPMTimesteps, ScoreModel
from sdeflow.export import OnnxSampler, export_sampler
from sdeflow.sampling import DDIM, UniPC

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


class Wrapper(torch.nn.Module):
    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _frozen_lambda(unet):
    unet.requires_grad_(False)
    return lambda x, t: unet(x, t).sample


WRAPPINGS = {
    "lambda": lambda unet: lambda x, t: unet(x, t).sample,  # parameters require grad, module in train mode
    "module": Wrapper,
    "lambda-no-grad": _frozen_lambda,
}


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
@pytest.mark.parametrize("sampler", [DDIM(), UniPC(order=2)], ids=["ddim", "unipc"])
def test_unet2d_exports_and_verifies(tmp_path, wrapping, sampler):
    unet = _unet()
    model = ScoreModel(WRAPPINGS[wrapping](unet), VPSDE(), "eps", DDPMTimesteps(1000, integer=True))
    grads = [p.requires_grad for p in unet.parameters()]
    report = export_sampler(model, tmp_path / "unet.onnx", sampler, steps=3, sample_shape=(1, 8, 8))
    assert report.verified and set(report.parity) == {1, 7, 64} and max(report.parity.values()) <= 1e-5
    # diffusers' shape checks were let through, named by file and line, and parity decided
    assert any("diffusers" in w and "sampling.py:" in w for w in report.tracer_warnings)
    # the user's modules are left as they were (grad flags, train mode)
    assert [p.requires_grad for p in unet.parameters()] == grads and unet.training
    x = OnnxSampler(report.path, providers="cpu", threads=1).sample(2, seed=0)
    assert x.shape == (2, 1, 8, 8)
