"""Likelihood benchmark: sdeflow.log_likelihood against a score_sde-style baseline, side by side in one run.

Baseline (score_sde/likelihood.py, ported faithfully): scipy.integrate.solve_ivp(RK45) on a flat float64 NumPy state,
a NumPy <-> torch round trip at every evaluation, the drift and the divergence computed separately (one forward for
the drift, one forward + one backward for the Hutchinson divergence), one probe, trainable parameters left as they are.

1. Accuracy on the Gaussian-mixture oracle (exact divergence in both, so the closed form log p_eps is the truth),
   VP / sub-VP / VE, rtol = atol = 1e-5, the oracle's exact p_T as the prior.
2. Speed on a network: the quickstart UNet (a checkpoint; trained here briefly if none is given), the 8x8 digits test
   set dequantised, batch 64, one Rademacher probe, identical probes in both, rtol = atol = 1e-5. Reports wall time,
   NFE and the log p both give; and sdeflow's solver overhead over the pure network time (forward + VJP).

    python benchmarks/bench_likelihood.py [--checkpoint runs/quickstart/model] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

from sdeflow import VESDE, VPSDE, GaussianMixture, SubVPSDE, load, load_dataset
from sdeflow.divergence import draw_probes
from sdeflow.likelihood import _frozen_parameters, log_likelihood


def baseline_log_likelihood(sde, score_fn, x, noise, rtol=1e-5, atol=1e-5, eps=1e-5, prior_logp=None, exact=False):
    """score_sde's likelihood loop: drift_fn and div_fn evaluated separately on a NumPy state (RK45)."""
    shape, bsz = x.shape, x.shape[0]

    def drift_fn(y, t):
        f = sde.drift_coef(t).to(y.dtype).reshape(-1, *[1] * (y.ndim - 1))
        g2 = sde.g2(t).to(y.dtype).reshape(-1, *[1] * (y.ndim - 1))
        return f * y - 0.5 * g2 * score_fn(y, t)

    def div_fn(y, t):
        with torch.enable_grad():
            y.requires_grad_(True)
            if exact:  # the oracle check: the exact trace, one VJP per dimension
                out = drift_fn(y, t).flatten(1)
                div = sum(torch.autograd.grad(out[:, i].sum(), y, retain_graph=True)[0].flatten(1)[:, i]
                          for i in range(out.shape[1]))
            else:
                fn_eps = torch.sum(drift_fn(y, t) * noise)
                grad = torch.autograd.grad(fn_eps, y)[0]
                div = torch.sum(grad * noise, dim=tuple(range(1, len(y.shape))))
        y.requires_grad_(False)
        return div

    nfe = [0]

    def ode_func(t, y):
        nfe[0] += 1
        sample = torch.from_numpy(y[:-bsz].reshape(shape)).to(x.dtype)
        vec_t = torch.ones(bsz, dtype=torch.float64) * t
        with torch.no_grad():
            drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape(-1)
        logp_grad = div_fn(sample, vec_t).detach().cpu().numpy().reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([x.detach().cpu().numpy().reshape(-1), np.zeros(bsz)], axis=0)
    sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zp = sol.y[:, -1]
    z = torch.from_numpy(zp[:-bsz].reshape(shape)).to(x.dtype)
    prior = (prior_logp or sde.prior_logp)(z).double()
    return prior + torch.from_numpy(zp[-bsz:]), nfe[0]


def oracle_accuracy(tolerances: tuple[float, ...]) -> float:
    """Errors against the closed form; returns the loosest sdeflow tolerance at least as accurate as the baseline."""
    print("1. Oracle accuracy (exact divergence, exact p_T prior, 32 points, D = 8); errors in nats/dim")
    print(f"   {'SDE':8s} {'method':24s} {'rtol=atol':>9s} {'NFE':>5s} {'max err':>9s} {'mean err':>9s}")
    gm = GaussianMixture.random(8, 4, 3.0, generator=torch.Generator().manual_seed(0))
    x = gm.sample(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    as_good = set(tolerances)
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        exact = gm.log_prob(x, 1e-5, sde)
        lp, nfe = baseline_log_likelihood(sde, gm.score_model(sde).score, x, None, prior_logp=gm.prior_logp(sde),
                                          exact=True)
        base_err = (lp - exact).abs() / 8
        name = type(sde).__name__
        print(f"   {name:8s} {'baseline (RK45, t)':24s} {1e-5:9.0e} {nfe:5d} {base_err.max():9.2e} "
              f"{base_err.mean():9.2e}")
        runs = [(tv, 1e-5) for tv in ("sigma_ratio", "log_snr")] + [("t", tol) for tol in tolerances]
        for tv, tol in runs:
            r = log_likelihood(sde, gm.score_model(sde), x, prior_logp=gm.prior_logp(sde), time_variable=tv,
                               rtol=tol, atol=tol)
            err = (r.log_p - exact).abs() / 8
            print(f"   {name:8s} {'sdeflow (' + tv + ')':24s} {tol:9.0e} {r.nfe:5d} {err.max():9.2e} {err.mean():9.2e}")
            if tv == "t" and (err.max() > base_err.max() or err.mean() > base_err.mean()):
                as_good.discard(tol)
    matched = max(as_good) if as_good else min(tolerances)
    print(f"   loosest sdeflow tolerance (default time variable t) with max and mean error <= the baseline's at 1e-5 "
          "on all three SDEs: "
          f"{matched:.0e}")
    return matched


def quick_checkpoint(steps: int) -> Path:
    from sdeflow.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="bench_likelihood_")) / "model"
    print(f"   (no checkpoint given: training the quickstart UNet for {steps} steps into {out})")
    train(TrainConfig(data="digits", steps=steps, eval_every=10**9, checkpoint_every=steps, seed=0), out)
    return out


def network_speed(
    checkpoint: Path | None, repeats: int, batch: int, train_steps: int, matched_tol: float
) -> None:
    print(f"\n2. Speed on a network (batch {batch}, one Rademacher probe, rtol = atol = 1e-5, one torch thread)")
    ckpt = load(checkpoint if checkpoint is not None else quick_checkpoint(train_steps))
    n_params = sum(p.numel() for p in ckpt.net.parameters())
    data = load_dataset("digits", "test")
    x = data.dequantize(torch.Generator().manual_seed(0))[:batch]
    seeds = torch.arange(batch)
    noise = draw_probes("rademacher", x.shape[1:], 1, seeds)[0]
    sde, model, net = ckpt.sde, ckpt.score_model, ckpt.net
    print(f"   model: {ckpt.config['model']['type']} with {n_params:,} parameters from {ckpt.path}")

    def timed(fn):  # (wall seconds, CPU seconds of this process, result)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - w0, time.process_time() - c0, out

    runs: dict[str, list] = {"baseline": [], "sdeflow": [], "matched": []}
    for _ in range(repeats):  # interleaved, so that load from other processes hits all alike
        runs["baseline"].append(timed(lambda: baseline_log_likelihood(sde, model.score, x, noise)))
        runs["sdeflow"].append(timed(lambda: log_likelihood(sde, model, x, divergence="rademacher", seeds=seeds)))
        if matched_tol != 1e-5:
            runs["matched"].append(timed(lambda: log_likelihood(sde, model, x, divergence="rademacher", seeds=seeds,
                                                               rtol=matched_tol, atol=matched_tol)))
    lp_base, nfe_base = runs["baseline"][0][2]
    res = runs["sdeflow"][0][2]

    # pure network time: forward + one VJP w.r.t. the input, parameters frozen, same batch and label dtype
    label = torch.full((batch,), 0.5)

    def net_eval() -> None:
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            out = net(y, label)
            torch.autograd.grad(out, y, noise)

    with _frozen_parameters(net):
        net_eval()
        times, cpus = [], []
        for _ in range(max(20, repeats * 10)):
            w0, c0 = time.perf_counter(), time.process_time()
            net_eval()
            times.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    t_net, c_net = statistics.median(times), statistics.median(cpus)

    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items() if v}
    nfe = {"baseline": nfe_base, "sdeflow": res.nfe}
    if runs["matched"]:
        nfe["matched"] = runs["matched"][0][2].nfe
    labels = {"baseline": "baseline, rtol=atol=1e-5", "sdeflow": "sdeflow,  rtol=atol=1e-5",
              "matched": f"sdeflow,  rtol=atol={matched_tol:.0e} (oracle error <= baseline's)"}
    for k, (wall, cpu) in med.items():
        print(f"   {labels[k]:55s} wall {wall:7.2f} s  CPU {cpu:7.2f} s  NFE {nfe[k]:4d}  "
              f"CPU/eval {cpu / nfe[k] * 1e3:6.1f} ms")
    for k in ("sdeflow", "matched"):
        if k in med:
            print(f"   speed-up {labels[k]:55s} wall {med['baseline'][0] / med[k][0]:.2f}x  "
                  f"CPU {med['baseline'][1] / med[k][1]:.2f}x   (median of {repeats})")
    diff = (res.log_p.double() - lp_base).abs() / x[0].numel()
    print(f"   |log p sdeflow - log p baseline| per dim at 1e-5: max {diff.max():.1e}, mean {diff.mean():.1e}")
    wall, cpu = med["sdeflow"]
    print(f"   pure network time (forward + VJP, batch {batch}, params frozen): wall {t_net * 1e3:.1f} ms, CPU "
          f"{c_net * 1e3:.1f} ms (median); sdeflow solver overhead: {(cpu / (res.nfe * c_net) - 1) * 100:.1f}% (CPU), "
          f"{(wall / (res.nfe * t_net) - 1) * 100:.1f}% (wall) of NFE x network time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: runs/quickstart/model if present)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=600, help="training steps when no checkpoint exists")
    p.add_argument("--skip-oracle", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = args.checkpoint
    if ckpt is None and Path("runs/quickstart/model/config.json").is_file():
        ckpt = Path("runs/quickstart/model")
    matched = 1e-5 if args.skip_oracle else oracle_accuracy((1e-5, 3e-5, 1e-4))
    network_speed(ckpt, args.repeats, args.batch, args.train_steps, matched)


if __name__ == "__main__":
    main()
