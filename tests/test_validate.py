"""The shared boundary checks (sdeflow._validate) and their use by log_likelihood / bits_per_dim: one error style
(the argument, what was expected, what arrived, the fix), NumPy numbers accepted, nothing silently coerced."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sdeflow import VPSDE, GaussianMixture, ScoreModel, bits_per_dim, log_likelihood
from sdeflow import _validate as V
from sdeflow.models import build_model


def test_numbers():
    assert V.check_int(np.int64(10), "steps", min=1) == 10 and type(V.check_int(np.int32(3), "n")) is int
    assert V.check_float(np.float32(0.5), "eta", min=0, max=1) == 0.5
    assert V.check_float(3, "lr") == 3.0
    with pytest.raises(TypeError, match=r"`steps` must be an integer >= 1; got 5.0 \(float\). Pass a whole number, "
                                        r"e.g. steps=5."):
        V.check_int(5.0, "steps", min=1)
    with pytest.raises(TypeError, match=r"`n` must be an integer; got True \(bool\)"):
        V.check_int(True, "n")
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1 and <= 4; got 0"):
        V.check_int(0, "n", min=1, max=4)
    for bad in (float("nan"), float("inf"), np.float64("nan")):
        with pytest.raises(ValueError, match=r"`lr` must be a finite number > 0; got (nan|inf)"):
            V.check_float(bad, "lr", min=0, min_open=True)
    with pytest.raises(TypeError, match=r"`eta` must be a finite number; got '0.5' \(str\)"):
        V.check_float("0.5", "eta")
    with pytest.raises(ValueError, match=r"`method` must be one of \('a', 'b'\); got 'c'"):
        V.check_choice("c", "method", ("a", "b"))


def test_tensors_and_batches():
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor; got a numpy array .* Convert it with "
                                        r"torch.as_tensor"):
        V.check_tensor(np.zeros(3), "x")
    with pytest.raises(ValueError, match=r"`x_T` must be a tensor of shape \[B, 2\] to match the model; got a "
                                         r"tensor of shape \[4, 3\]"):
        V.check_batch(torch.zeros(4, 3), "x_T", sample_shape=(2,))
    with pytest.raises(ValueError, match=r"`x` must be a tensor of shape \[B, \*sample_shape\] with B >= 1"):
        V.check_batch(torch.zeros(3), "x")
    for dtype in (torch.float16, torch.int64, torch.complex64):
        with pytest.raises(TypeError, match=r"`x` must be a float32 or float64 tensor; got .*Convert it"):
            V.check_batch(torch.zeros(2, 2, dtype=dtype), "x")
    with pytest.raises(ValueError, match=r"`x` must be finite; got 1 NaN or infinite value\(s\)"):
        V.check_batch(torch.tensor([[0.0, float("nan")]]), "x")
    with pytest.raises(ValueError, match=r"`noise` must be on device meta"):
        V.check_tensor(torch.zeros(2), "noise", device="meta")
    net = build_model({"type": "mlp", "dim": 2, "width": 8, "depth": 1})
    assert V.model_signature(ScoreModel(net, VPSDE())) == ((2,), torch.device("cpu"))
    assert V.model_signature(lambda x, t: x) == (None, None)


def test_devices_json_and_outputs(tmp_path):
    assert V.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"`map_location` must be a torch device such as 'cpu'.*got 'gpu0'"):
        V.check_device("gpu0", "map_location")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"`device` must be an available device; got 'cuda:1'.*use 'cpu'"):
            V.check_device("cuda:1")
    with pytest.raises(ValueError, match=r"`extra` must hold only JSON values .*extra\['a'\]\[1\] = nan"):
        V.check_json({"a": [1.0, float("nan")]}, "extra")
    safe = V.json_safe({"se": float("nan"), "rows": [1.0, float("inf")], "n": 3})
    assert json.loads(json.dumps(safe, allow_nan=False)) == {"se": None, "rows": [1.0, None], "n": 3}
    (tmp_path / "f").write_text("x")
    assert V.check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"`--out` must be a folder; got .*f is an existing file"):
        V.check_output_dir(tmp_path / "f")
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        V.check_output_file(tmp_path / "f" / "x.npy")
    with pytest.raises(ValueError, match=r"`--out` must be a file path; got .* is an existing folder"):
        V.check_output_file(tmp_path)
    with pytest.raises(ValueError, match=r"`--out` must end in .png or .npy"):
        V.check_output_file(tmp_path / "x.jpg", suffixes=(".png", ".npy"))
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # the probes leave nothing behind


def test_log_likelihood_and_bits_per_dim_check_their_boundary():
    sde = VPSDE()
    gm = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(0))
    x = gm.sample(3, generator=torch.Generator().manual_seed(1))
    ok = log_likelihood(sde, gm.score_model(sde), x, rtol=np.float32(1e-4), atol=np.float64(1e-4),
                        probes=np.int64(1), max_steps=np.int64(500))
    assert torch.isfinite(ok.log_p).all()
    net = build_model({"type": "mlp", "dim": 2, "width": 8, "depth": 1})
    model = ScoreModel(net, sde)
    with pytest.raises(ValueError, match=r"`x` must be a tensor of shape \[B, 2\] to match the model; got a tensor "
                                         r"of shape \[4, 3\]"):
        log_likelihood(sde, model, torch.zeros(4, 3))
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor; got a numpy array"):
        log_likelihood(sde, model, np.zeros((4, 2)))
    with pytest.raises(TypeError, match=r"`x` must be a float32 or float64 tensor"):
        log_likelihood(sde, model, torch.zeros(4, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"`rtol` must be a finite number > 0; got 0.0"):
        log_likelihood(sde, model, torch.zeros(4, 2), rtol=0.0)
    with pytest.raises(TypeError, match=r"`probes` must be an integer >= 1; got 2.0"):
        log_likelihood(sde, model, torch.zeros(4, 2), divergence="rademacher", probes=2.0)
    with pytest.raises(TypeError, match=r"`levels` must be an integer >= 2; got 4.5"):
        bits_per_dim(sde, model, torch.zeros(4, 2), levels=4.5)
    with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0; got -2.0"):
        bits_per_dim(sde, model, torch.zeros(4, 2), levels=4, scale=-2.0)
    res = bits_per_dim(sde, gm.score_model(sde), torch.tensor([[1, 2], [0, 3]]), levels=np.int64(4),
                       draws=np.int64(1), seeds=[0, 1], rtol=1e-3, atol=1e-3)
    assert all(math.isfinite(v) for v in res.bpd.tolist())


def test_gaussian_mixture_validation():
    with pytest.raises(ValueError, match=r"`means` must be a tensor \[K, D\] with at least one component"):
        GaussianMixture(torch.ones(0), torch.zeros(0, 2), torch.ones(0))
    with pytest.raises(ValueError, match=r"`covariances` must be finite"):
        GaussianMixture([1.0], torch.zeros(1, 2), torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match=r"`n_components` must be an integer >= 1; got 0"):
        GaussianMixture.random(2, 0)
    assert GaussianMixture.random(np.int64(3), np.int64(2)).dim == 3
