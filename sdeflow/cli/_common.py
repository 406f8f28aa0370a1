"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_ddim_arguments(p: argparse.ArgumentParser) -> None:
    """--grid, --eta, --eps and --set-alpha-to-one, as ``sdeflow.sample`` takes them (defaults: sample's)."""
    p.add_argument(
        "--grid", default=None, help="uniform, quadratic, logsnr, karras; leading, trailing, linspace (DDPM spacings)"
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1]")
    p.add_argument("--eps", type=float, default=1e-3, help="end time of continuous grids (default: 1e-3)")
    p.add_argument(
        "--set-alpha-to-one",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="last step to abar = 1 (the denoised x0_hat) or stop at abar_0 / eps (default: yes on DDPM spacings)",
    )
