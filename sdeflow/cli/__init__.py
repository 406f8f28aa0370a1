"""The ``sdeflow`` command line. One explicit table maps command names to modules; each module defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy dependencies inside ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module (in sdeflow.cli)
COMMANDS: dict[str, str] = {
    "quickstart": "quickstart",
    "sample": "sample",
    "compare": "compare",
    "tune-grid": "tune_grid",
    "train": "train",
    "likelihood": "likelihood",
    "export": "export",
    "run-onnx": "run_onnx",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdeflow", description="Score-based diffusion models as differential equations."
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's, one per core); use 1 when other CPU-heavy jobs run alongside",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"sdeflow.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive integer; got {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"sdeflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
