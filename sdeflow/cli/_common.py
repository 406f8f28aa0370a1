"""What several commands share: the model source arguments (a checkpoint or the oracle), the sampler, its options and
the time grid (mapped through the one name table, ``sdeflow.sampling.names``), and the progress bar. Each command
passes its parsed arguments to the library by name, written out at the call."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..progress import ProgressBar

if TYPE_CHECKING:
    from ..sampling import Grid, Sampler

# CLI flag -> sampler option. Only flags the user gives are passed, so an option that does not apply to the chosen
# sampler is an error naming it (the sampler objects validate their options).
SAMPLER_FLAGS: dict[str, tuple[str, Any, str]] = {
    "eta": ("--eta", float, "ddim: eta in [0, 1]"),
    "order": ("--order", int, "dpmsolver++ / sde-dpmsolver++ / unipc / deis: 1-3; ipndm: 1-4"),
    "variant": ("--variant", str, "unipc: bh1 or bh2"),
    "variance": ("--variance", str, "ddpm: posterior or beta"),
    "predictor": ("--predictor", str, "pc: reverse-diffusion or euler-maruyama"),
    "snr": ("--snr", float, "pc: Langevin corrector signal-to-noise ratio"),
    "n_corrector": ("--n-corrector", int, "pc: Langevin steps per step"),
    "rtol": ("--rtol", float, "adaptive ode / sde solvers"),
    "atol": ("--atol", float, "adaptive ode / sde solvers"),
}


def add_source_arguments(p: argparse.ArgumentParser, oracle_dim: int | None) -> None:
    """--checkpoint, or the random mixture of --oracle-dim (default ``oracle_dim``), --oracle-components and
    --oracle-seed (``sdeflow.sources.model_source``)."""
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by `sdeflow train` (sdeflow.load)")
    p.add_argument("--oracle-dim", type=int, default=oracle_dim,
                   help="without --checkpoint: dimension of the random mixture")
    p.add_argument("--oracle-components", type=int, default=4)
    p.add_argument("--oracle-seed", type=int, default=0, help="seed of the random mixture")


def add_sampler_arguments(
    p: argparse.ArgumentParser, default: str = "ddim", *, grid: bool = True, help: str | None = None
) -> None:
    """--sampler (alias --method), the sampler options and, with ``grid``, --adaptive, --grid, --rho, --eps and
    --set-alpha-to-one (without: those are None for ``sampler_from_args``)."""
    from ..sampling import SAMPLERS

    if help is None:
        help = f"one of {', '.join(SAMPLERS)}; 'ode:<torchdiffeq method>', 'sde:<torchsde method>' (default {default})"
    p.add_argument("--sampler", "--method", dest="sampler", default=default, help=help)
    for dest, (flag, typ, help_) in SAMPLER_FLAGS.items():
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    p.add_argument(
        "--lower-order-final", action=argparse.BooleanOptionalAction, default=None, help="multistep samplers"
    )
    p.add_argument("--corrector", action=argparse.BooleanOptionalAction, default=None, help="unipc: UniC corrector")
    if not grid:
        p.set_defaults(grid=None, rho=None, adaptive=None)
        return
    p.add_argument("--adaptive", action="store_true", default=None, help="sde: adaptive steps")
    p.add_argument(
        "--grid",
        default=None,
        help="uniform, quadratic, logsnr, karras; leading, trailing, linspace (DDPM spacings); or a tuned grid .json",
    )
    p.add_argument("--rho", type=float, default=None, help="karras grid exponent (default 7)")
    p.add_argument("--eps", type=float, default=1e-3, help="end time of continuous grids (default: 1e-3)")
    p.add_argument(
        "--set-alpha-to-one",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="last step to abar = 1 (the denoised x0_hat) or stop at abar_0 / eps (default: yes on DDPM spacings)",
    )


def sampler_from_args(args: argparse.Namespace) -> tuple[Sampler, Grid | str | None]:
    """The sampler object and the grid (object, name or None) the arguments name."""
    from ..sampling import make_sampler
    from ..sampling.names import grid_option

    options = {k: getattr(args, k) for k in (*SAMPLER_FLAGS, "adaptive", "lower_order_final", "corrector")}
    sampler = make_sampler(args.sampler, **{k: v for k, v in options.items() if v is not None})
    return sampler, grid_option(args.grid, args.rho)


@contextmanager
def progress_bar(args: argparse.Namespace, desc: str, unit: str) -> Iterator[ProgressBar]:
    """A ``ProgressBar`` on the first torchrun process (the only one) unless --no-progress, closed at the end;
    ``{world}`` in ``desc`` becomes the number of processes."""
    from ..distributed import rank_and_world

    rank, world = rank_and_world()
    bar = ProgressBar(desc.format(world=world), unit, enabled=rank == 0 and not getattr(args, "no_progress", False))
    try:
        yield bar
    finally:
        bar.close()
