"""Exact likelihoods in Python: the oracle check, then bits/dim of a data set, in batches with error bars.

    python examples/likelihood_eval.py                        # the oracle part only (seconds)
    python examples/likelihood_eval.py --checkpoint runs/quickstart/model --n 64

The CLI does the same at scale (CSV + summary JSON, several processes):
    sdeflow likelihood --checkpoint runs/quickstart/model --data digits --split test --out runs/likelihood
"""

from __future__ import annotations

import argparse
import math

import torch

import sdeflow


def oracle_check() -> None:
    """log p_eps through the PF-ODE against the closed form of a Gaussian mixture."""
    sde = sdeflow.VPSDE()
    gm = sdeflow.GaussianMixture.random(dim=4, n_components=3, generator=torch.Generator().manual_seed(0))
    x = gm.sample(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gm.log_prob(x, 1e-5, sde)
    res = sdeflow.log_likelihood(sde, gm.score_model(sde), x, prior_logp=gm.prior_logp(sde))
    print(f"oracle, exact divergence: max |error| {((res.log_p - exact).abs().max() / 4):.1e} nats/dim, "
          f"NFE {res.nfe}, status {res.status}")
    hut = sdeflow.log_likelihood(sde, gm.score_model(sde), x, divergence="rademacher", probes=8,
                                 seeds=torch.arange(8), prior_logp=gm.prior_logp(sde))
    z = (hut.log_p - exact) / hut.std_err
    print(f"oracle, Hutchinson (8 probes): errors in standard errors {[round(v, 2) for v in z.tolist()]}")


def dataset_bpd(checkpoint: str, n: int, batch_size: int) -> None:
    ckpt = sdeflow.load(checkpoint)
    data = sdeflow.load_dataset(ckpt.data_info["name"], "test")
    if data.levels is None:
        raise SystemExit("bits/dim need discrete data; use sdeflow.log_likelihood for continuous data.")
    bpd = []
    for start in range(0, min(n, len(data)), batch_size):
        idx = torch.arange(start, min(n, len(data), start + batch_size))
        res = sdeflow.bits_per_dim(
            ckpt.sde, ckpt.score_model, data.codes[idx], levels=data.levels, scale=data.scale, offset=data.offset,
            draws=2, seeds=idx, divergence="rademacher", probes=1,
        )
        bpd.append(res.bpd)
        print(f"  examples {start}..{idx[-1].item()}: {res.bpd.mean():.3f} bits/dim, NFE {res.nfe}")
    bpd_all = torch.cat(bpd)
    se = bpd_all.std() / math.sqrt(len(bpd_all))  # over examples: includes dequantisation and probe noise
    print(f"{data.name} test: {bpd_all.mean():.3f} +- {se:.3f} bits/dim over {len(bpd_all)} images")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    oracle_check()
    if args.checkpoint:
        dataset_bpd(args.checkpoint, args.n, args.batch_size)


if __name__ == "__main__":
    main()
