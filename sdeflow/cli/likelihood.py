"""``sdeflow likelihood``: exact log-likelihoods / bits per dimension of a data set through the probability-flow ODE.

Single process:   sdeflow likelihood --checkpoint runs/quickstart/model --data digits --split test --out OUT
Many processes:   torchrun --nproc_per_node=N -m sdeflow likelihood ...   (gloo on CPU, NCCL on GPU)
The work is ``sdeflow.sources.likelihood_source`` (model, data, prior) and ``sdeflow.likelihood_dataset``'s
``evaluate_to_folder`` (sharding, gathering, the CSV and summary columns); rank 0 writes OUT/likelihood.csv,
OUT/summary.json, OUT/likelihood.png and, for images, OUT/best_worst.png.
"""

from __future__ import annotations

import argparse

from ..divergence import DIVERGENCES, TIME_VARIABLES
from ..likelihood import ERROR_CONTROLS
from ..sde import SDES
from ._common import progress_bar

HELP = "Exact log-likelihoods and bits/dim of a data set through the probability-flow ODE (torchrun-ready)."

def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model and data")
    src.add_argument("--checkpoint", help="checkpoint folder written by `sdeflow train` (model, SDE, data scaling)")
    src.add_argument(
        "--oracle", action="store_true",
        help="use the exact score of a Gaussian-mixture oracle instead of a network (for checks): "
        "GaussianMixture.random(--oracle-dim, --oracle-components, seed --oracle-seed), or with --data gmm the "
        "mixture behind that data set",
    )
    src.add_argument(
        "--conditional", action="store_true",
        help="class-conditional model: log p(x | c) of each example under its own label (the data's labels; the "
        "oracle's components), with bits/dim per class in summary.json",
    )
    src.add_argument("--oracle-dim", type=int, default=2, help="oracle dimension D (default 2)")
    src.add_argument("--oracle-components", type=int, default=4)
    src.add_argument("--oracle-seed", type=int, default=0)
    src.add_argument("--sde", choices=sorted(SDES), default="vp", help="SDE of the oracle (default vp)")
    src.add_argument(
        "--prior", choices=["sde", "oracle"], default="sde",
        help="prior log-density: the SDE's p_T (default) or, with --oracle, the oracle's exact p_T",
    )
    src.add_argument(
        "--data", help="built-in data set name or a .npy/.npz path (default: the checkpoint's data; with --oracle "
        "and no --data, --limit samples drawn from the oracle)",
    )
    src.add_argument(
        "--split", help="data split (default: 'test' for built-in data sets, 'train' for a .npy/.npz file)"
    )
    src.add_argument("--levels", type=int, help="K levels per dimension of a user array of integers (discrete data)")
    src.add_argument("--scale", type=float, help="model x = scale * y + offset for a user array")
    src.add_argument("--offset", type=float)
    src.add_argument("--limit", type=int, help="use the first N examples only")
    ode = p.add_argument_group("solver")
    ode.add_argument("--method", default="dopri5")
    ode.add_argument("--rtol", type=float, default=1e-5)
    ode.add_argument("--atol", type=float, default=1e-5)
    ode.add_argument("--eps", type=float, default=1e-5)
    ode.add_argument("--divergence", choices=DIVERGENCES, default="exact")
    ode.add_argument("--probes", type=int, default=1, help="Hutchinson probes per example")
    ode.add_argument("--draws", type=int, default=1, help="dequantisation draws K per example (discrete data)")
    ode.add_argument(
        "--bound", choices=["plain", "importance"], default="plain",
        help="bits/dim reported as 'bpd': the mean over the K draws (plain, default) or the importance-weighted "
        "bound -log2 mean_j p(y_j) / D (tighter for K > 1); both are written either way",
    )
    ode.add_argument(
        "--error-control", choices=ERROR_CONTROLS, default=ERROR_CONTROLS[0],
        help="step-size control, every example held to rtol/atol: the RMS over its x and log-density (rms, default), "
        "x and the log-density each (all), or the log-density with x held 10x looser (log_p)",
    )
    ode.add_argument(
        "--time-variable", choices=("auto", *TIME_VARIABLES), default="auto",
        help="integration variable: sigma/alpha with the state x/alpha (sigma_ratio: EDM's ODE), t or log-SNR; auto "
        "(default): t for a network conditioned on t, else sigma_ratio",
    )
    ode.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the network's dtype")
    ode.add_argument(
        "--state-dtype", choices=["float64", "float32"], default="float64",
        help="dtype of the ODE state (x, log-density) (default float64; the network keeps --dtype)",
    )
    ode.add_argument("--max-steps", type=int, default=10_000)
    run_g = p.add_argument_group("run")
    run_g.add_argument("--batch-size", type=int, default=64)
    run_g.add_argument("--seed", type=int, default=0, help="per-example seeds are derived from (seed, index)")
    run_g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available, else cpu)")
    run_g.add_argument("--out", default="runs/likelihood", help="output folder (default runs/likelihood)")
    run_g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import math

    import torch

    from ..likelihood_dataset import evaluate_to_folder
    from ..sources import likelihood_source

    for name in ("rtol", "atol", "eps"):  # counts, --device and --out: sdeflow.cli.check_common
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0; got {value}.")
    source = likelihood_source(
        args.checkpoint, oracle=args.oracle, data=args.data, split=args.split, levels=args.levels, scale=args.scale,
        offset=args.offset, oracle_dim=args.oracle_dim, oracle_components=args.oracle_components,
        oracle_seed=args.oracle_seed, sde=args.sde, prior=args.prior, conditional=args.conditional, limit=args.limit,
    )
    with progress_bar(args, "likelihood (rank 0 of {world})", "ex") as bar:
        files = evaluate_to_folder(
            source, args.out, device=args.device, progress=bar, limit=args.limit, batch_size=args.batch_size,
            seed=args.seed, draws=args.draws, bound=args.bound, split=args.split, conditional=args.conditional,
            method=args.method, rtol=args.rtol, atol=args.atol, eps=args.eps, divergence=args.divergence,
            probes=args.probes, dtype=getattr(torch, args.dtype), time_variable=args.time_variable,
            max_steps=args.max_steps, state_dtype=getattr(torch, args.state_dtype), error_control=args.error_control,
        )
    if files is None:  # another torchrun process: rank 0 writes and reports
        return 0
    print("\n".join(files.lines()))
    return 0
