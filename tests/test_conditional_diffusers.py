"""Classifier-free guidance against the peer: diffusers' guidance loop (noise_pred = uncond + guidance_scale (cond -
uncond) on one batched call) with a class-conditional UNet2DModel (num_class_embeds) equals sdeflow's guided
sampling with guidance = guidance_scale - 1, to float32 rounding."""

from __future__ import annotations

import pytest
import torch

import sdeflow
from sdeflow.sampling import DPMSolverPP, Timesteps

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed")

K = 3  # classes 0..2; diffusers' table has K + 1 rows, the last one the null class


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=K + 1)
    for p in unet.parameters():  # diffusers zero-initialises nothing we need, but make outputs clearly x-dependent
        p.data.add_(0.05 * torch.randn_like(p))
    return unet.eval()


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_guided_dpmsolver_matches_diffusers(guidance_scale: float) -> None:
    unet = _unet()
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2)
    scheduler.set_timesteps(8)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])
    null = torch.full_like(labels, K)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            tt = torch.full((8,), int(t), dtype=torch.long)
            out = unet(torch.cat([x, x]), tt, class_labels=torch.cat([labels, null])).sample
            cond, uncond = out.chunk(2)
            x = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
    model = sdeflow.ScoreModel(lambda x, t, c: unet(x, t, class_labels=c).sample, sdeflow.VPSDE(), "eps",
                               sdeflow.DDPMTimesteps(1000, integer=True), num_classes=K)
    ours = sdeflow.sample(model, sdeflow.VPSDE(), x_T, sampler=DPMSolverPP(2), grid=Timesteps(
        scheduler.timesteps.tolist()), set_alpha_to_one=True, cond=labels, guidance=guidance_scale - 1)
    assert ours.nfe == 8
    rel = float((ours.samples - x).abs().max() / x.abs().max())
    assert rel < 2e-5, rel


def test_guidance_rescale_matches_diffusers_formula() -> None:
    """diffusers' rescale_noise_cfg (Lin et al. 2024, section 3.4), written out as in its pipelines."""
    unet = _unet()
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(6)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels, phi, scale = torch.tensor([2, 0, 1]), 0.7, 4.0
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(torch.cat([x, x]), torch.full((6,), int(t)), class_labels=torch.cat([labels, labels * 0 + K]))
            cond, uncond = out.sample.chunk(2)
            cfg = uncond + scale * (cond - uncond)
            dims = list(range(1, cfg.ndim))
            rescaled = cfg * (cond.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True))
            x = scheduler.step(phi * rescaled + (1 - phi) * cfg, t, x).prev_sample
    model = sdeflow.ScoreModel(lambda x, t, c: unet(x, t, class_labels=c).sample, sdeflow.VPSDE(), "eps",
                               sdeflow.DDPMTimesteps(1000, integer=True), num_classes=K)
    ours = sdeflow.sample(model, sdeflow.VPSDE(), x_T, sampler="ddim", grid=Timesteps(scheduler.timesteps.tolist()),
                          set_alpha_to_one=True, cond=labels, guidance=scale - 1, guidance_rescale=phi)
    plain = sdeflow.sample(model, sdeflow.VPSDE(), x_T, sampler="ddim", grid=Timesteps(scheduler.timesteps.tolist()),
                           set_alpha_to_one=True, cond=labels, guidance=scale - 1)
    assert float((ours.samples - x).abs().max() / x.abs().max()) < 2e-5
    assert float((plain.samples - x).abs().max()) > 1e-3  # the rescale changes the result
    with pytest.raises(ValueError, match="`guidance_rescale` must be"):
        sdeflow.sample(model, sdeflow.VPSDE(), x_T, sampler="ddim", steps=2, cond=labels, guidance=1.0,
                       guidance_rescale=1.5)
