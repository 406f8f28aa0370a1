"""Built-in data sets, user arrays, dequantisation and the closed-form Gaussian baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdeflow.data import _DIGITS_FILE, DATASETS, gaussian_bpd, gmm_oracle, load_dataset


def test_digits_fixed_split_levels_and_scaling():
    tr, te = load_dataset("digits"), load_dataset("digits", "test")
    assert (len(tr), len(te)) == (1500, 297)
    assert tr.sample_shape == (1, 8, 8) and tr.x.dtype == torch.float32
    assert (tr.levels, tr.scale, tr.offset) == (17, 2.0, -1.0)
    assert tr.codes.min() == 0 and tr.codes.max() == 16
    # bin centres scale * (k + 1/2) / K + offset, inside (-1, 1)
    torch.testing.assert_close(tr.x, 2 * (tr.codes.float() + 0.5) / 17 - 1)
    # the split is a fixed partition of the 1797 images
    with np.load(_DIGITS_FILE) as f:
        idx = np.concatenate([f["train"], f["test"]])
        assert sorted(idx.tolist()) == list(range(1797))
        assert np.array_equal(f["images"][f["test"]], te.codes[:, 0].numpy())
    assert sorted(set(tr.labels.tolist())) == list(range(10)) and sorted(set(te.labels.tolist())) == list(range(10))
    assert torch.equal(load_dataset("digits", "test").x, te.x)  # fixed, not re-drawn


def test_dequantize_stays_in_its_bin_and_is_uniform():
    tr = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    y = tr.dequantize(g)
    k = torch.floor((y - tr.offset) / tr.scale * tr.levels)
    assert torch.equal(k.long(), tr.codes)
    u = (y - tr.offset) / tr.scale * tr.levels - tr.codes
    n = u.numel()
    # u ~ U[0, 1): mean 1/2 and variance 1/12 within 5 standard errors
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    sub = tr.dequantize(torch.Generator().manual_seed(0), torch.arange(5))
    assert torch.equal(sub, y[:5])  # the same draws for the same rows and seed


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_toy_sets_are_deterministic_2d_and_unit_scale(name):
    a, b, te = load_dataset(name), load_dataset(name), load_dataset(name, "test")
    assert torch.equal(a.x, b.x) and not torch.equal(a.x[: len(te)], te.x)
    assert a.sample_shape == (2,) and a.levels is None and len(a) == 8192 and len(te) == 2048
    std = a.x.std(0)
    assert ((std > 0.8) & (std < 1.25)).all() and a.x.mean(0).abs().max() < 0.25
    assert torch.equal(a.dequantize(None), a.x)  # continuous data: nothing to dequantise


def test_gmm_set_matches_the_oracle_moments():
    data, gm = load_dataset("gmm"), gmm_oracle()
    x = data.x.double()
    n = len(x)
    mean_se = gm.covariance().diagonal().sqrt() / math.sqrt(n)
    assert ((x.mean(0) - gm.mean()).abs() < 5 * mean_se).all()
    cov_err = (torch.cov(x.T) - gm.covariance()).abs().max()
    assert cov_err < 5 * gm.covariance().diagonal().max() * math.sqrt(2 / n) * 2


def test_gaussian_bpd_is_the_expectation_over_dequantisation():
    tr, te = load_dataset("digits"), load_dataset("digits", "test")
    base = gaussian_bpd(tr, te)
    # Monte Carlo over dequantisation draws of the test set, with the fitted Gaussian
    dist = torch.distributions.MultivariateNormal(base.mean, covariance_matrix=base.covariance)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([
        -dist.log_prob(te.dequantize(g).flatten(1).double()) / (64 * math.log(2)) - 1 + math.log2(17)
        for _ in range(64)
    ])  # [64, N]
    mc = draws.mean(0)
    se = draws.std(0) / 8
    z = (mc - base.per_sample) / se
    assert z.abs().max() < 5
    assert base.bpd == pytest.approx(base.per_sample.mean().item())
    # the fit is the expected MLE: the mean of bin centres and cov(centres) + w^2/12 I
    c = tr.x.flatten(1).double()
    torch.testing.assert_close(base.mean, c.mean(0))
    expected = (2 / 17) ** 2 / 12 * torch.eye(64, dtype=torch.float64)
    torch.testing.assert_close(base.covariance - torch.cov(c.T, correction=0), expected)
    assert 2.0 < base.bpd < math.log2(17) and 0 < base.bpd_stderr < 0.1


def test_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((50, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", vec)
    d = load_dataset(str(tmp_path / "v.npy"))
    assert d.sample_shape == (3,) and d.levels is None and torch.equal(d.x, torch.from_numpy(vec))
    d2 = load_dataset(str(tmp_path / "v.npy"), scale=2.0, offset=1.0)
    torch.testing.assert_close(d2.x, torch.from_numpy(2 * vec + 1))
    imgs = rng.integers(0, 256, (20, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "i.npz", train=imgs[:15], test=imgs[15:])
    tr = load_dataset(str(tmp_path / "i.npz"), levels=256)
    te = load_dataset(str(tmp_path / "i.npz"), "test", levels=256)
    assert tr.sample_shape == (1, 4, 4) and len(te) == 5 and (tr.scale, tr.offset) == (2.0, -1.0)
    torch.testing.assert_close(tr.x[:, 0], torch.from_numpy(2 * (imgs[:15] + 0.5) / 256 - 1).float())


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown data set 'mnist'. Must be one of"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="Invalid split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="has a fixed scaling"):
        load_dataset("digits", levels=256)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match=r"must have shape \[N, D\], \[N, H, W\] or \[N, C, H, W\]; got shape \(10,\)"):
        load_dataset(str(tmp_path / "flat.npy"))
    with pytest.raises(ValueError, match="serves split 'train' only"):
        load_dataset(str(tmp_path / "flat.npy"), "test")
    np.save(tmp_path / "big.npy", np.full((4, 2), 300))
    with pytest.raises(ValueError, match=r"entries must lie in 0..255; got 300..300"):
        load_dataset(str(tmp_path / "big.npy"), levels=256)
    np.save(tmp_path / "frac.npy", np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="must hold integers"):
        load_dataset(str(tmp_path / "frac.npy"), levels=4)
    np.save(tmp_path / "nan.npy", np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_dataset(str(tmp_path / "nan.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no array named 'train'"):
        load_dataset(str(tmp_path / "two.npz"))
    with pytest.raises(ValueError, match="must be splits of the same data"):
        gaussian_bpd(load_dataset("digits"), load_dataset("gmm", "test"))
