"""Seed parity across runtimes: sdeflow.sample(seed=), `sdeflow sample --seed`, OnnxSampler.sample(seed=) and
`sdeflow run-onnx --seed` use the same x_T and noise for sample i, whatever the batch (sdeflow.sampling.noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdeflow import VESDE, VPSDE, ContinuousTime, save
from sdeflow.cli import main as cli_main
from sdeflow.export import OnnxSampler, export_sampler
from sdeflow.export.runtime import draw_inputs
from sdeflow.models import build_model
from sdeflow.sampling import sample
from sdeflow.sampling.noise import NoiseSource, per_sample_seeds

SAMPLER, STEPS = "sde-dpmsolver++", 4  # stochastic: x_T and the step noise both matter


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("seed")
    cfg = {"type": "mlp", "dim": 2, "width": 32, "depth": 1}
    data_info = {"name": "gmm", "levels": None, "scale": 1.0, "offset": 0.0, "sample_shape": [2]}
    ckpt = save(tmp / "ckpt", build_model(cfg), VPSDE(), "eps", ContinuousTime(), cfg, data_info)
    report = export_sampler(ckpt, tmp / "m.onnx", SAMPLER, steps=STEPS, batch_sizes=(1, 7))
    return ckpt, report.path


def test_four_entry_points_give_the_same_samples(exported, tmp_path):
    from sdeflow import load

    ckpt, onnx_path = exported
    model = load(ckpt)
    torch_lib = sample(model.score_model, model.sde, shape=(5, 2), sampler=SAMPLER, steps=STEPS, seed=3).samples.numpy()
    argv = ["sample", "--checkpoint", str(ckpt), "--sampler", SAMPLER, "--steps", str(STEPS), "--n", "5"]
    assert cli_main([*argv, "--seed", "3", "--out", str(tmp_path / "cli.npy"), "--no-progress"]) == 0
    torch_cli = np.load(tmp_path / "cli.npy")
    ort_lib = OnnxSampler(onnx_path, providers="cpu", threads=1).sample(5, seed=3)
    assert cli_main(["run-onnx", str(onnx_path), "--batch", "5", "--seed", "3", "--out", str(tmp_path / "o.npy")]) == 0
    ort_cli = np.load(tmp_path / "o.npy")
    np.testing.assert_array_equal(torch_lib, torch_cli)
    np.testing.assert_array_equal(ort_lib, ort_cli)
    np.testing.assert_allclose(ort_lib, torch_lib, rtol=1e-5, atol=1e-6)
    # sample i does not depend on the batch: seeds 4, 5 are samples 1, 2 of the batch seeded with 3
    picked = OnnxSampler(onnx_path, providers="cpu", threads=1).sample(2, seed=4)
    np.testing.assert_allclose(picked, torch_lib[1:3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(OnnxSampler(onnx_path, providers="cpu").sample(5, seed=4), torch_lib)


def test_torch_and_numpy_draws_are_bitwise_equal():
    """x_T = prior_std * z and the step noise of NoiseSource equal the numpy-only draw_inputs, bit for bit (a VE prior
    std that is not a power of two checks the float32 scaling)."""
    sde = VESDE(sigma_min=0.01, sigma_max=37.3)
    seeds = per_sample_seeds(6, 11, None)
    src = NoiseSource(seeds, (3, 2), dtype=torch.float32, device="cpu", max_draws=5)
    x_T = sde.prior_std * src.prior()
    noise = torch.stack([src() for _ in range(5)])
    x_np, noise_np = draw_inputs(seeds, (3, 2), sde.prior_std, 5)
    np.testing.assert_array_equal(x_T.numpy(), x_np)
    np.testing.assert_array_equal(noise.numpy(), noise_np)


def test_chunked_draws_equal_one_long_draw():
    """The step noise is drawn in chunks (2 draws per chunk here); the sequence equals one draw of all K at once."""
    shape = (2**13,)  # chunk = 2**14 // numel = 2 draws
    seeds = [5, 9]
    src = NoiseSource(seeds, shape, dtype=torch.float64, device="cpu", max_draws=5)
    assert src._chunk == 2
    drawn = torch.stack([src() for _ in range(5)]).numpy()
    for i, s in enumerate(seeds):
        long = np.random.default_rng([s, 1]).standard_normal((5, *shape))
        np.testing.assert_array_equal(drawn[:, i], long)
    prior = NoiseSource(seeds, shape, dtype=torch.float64, device="cpu", max_draws=1).prior().numpy()
    np.testing.assert_array_equal(prior[1], np.random.default_rng([9, 0]).standard_normal(shape))
