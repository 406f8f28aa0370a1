"""The ``sdeflow`` command line. One explicit table maps command names to modules; each module defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy dependencies inside ``run``.

Errors: every error ends as ONE line on stderr, ``sdeflow COMMAND: error: MESSAGE``, with exit status 2 for user
errors (bad arguments, files, data or settings; a diverged training run; a folder locked by another process), 1 for
a computation that failed on valid input (a likelihood solve that did not converge, an ONNX export that failed its
parity check) and for anything unexpected
(then the line names the exception type). Ctrl-C prints ``sdeflow COMMAND: interrupted``
and exits with 130; outputs are written atomically, so nothing half-written is left. Set ``SDEFLOW_TRACEBACK=1`` to
get the full Python traceback instead of the one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


TRACEBACK_ENV = "SDEFLOW_TRACEBACK"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``sdeflow train: error: ...``) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


# Exit status by exception class (matched by name along the class's MRO, so that no command module is imported for
# it): 2 for bad input or a bad environment, not a bug in sdeflow (it wins when both match); 1 for a computation that
# failed on valid input.
EXIT_STATUS: dict[str, int] = {"ValueError": 2, "TypeError": 2, "OSError": 2, "FolderLockedError": 2,
                               "TrainingDivergedError": 2, "LikelihoodError": 1, "OnnxExportError": 1}


def _exit_status(err: BaseException) -> int | None:
    """2 or 1 for an exception of a class in ``EXIT_STATUS`` (or a subclass), None for anything unexpected."""
    return max((EXIT_STATUS[c.__name__] for c in type(err).__mro__ if c.__name__ in EXIT_STATUS), default=None)


# What each command writes to --out (checked before anything runs): a folder or a file
OUTPUTS: dict[str, str] = {"train": "folder", "likelihood": "folder", "quickstart": "folder", "compare": "folder",
                           "sample": "file", "export": "file", "run-onnx": "file"}
# Options that count something: each must be >= 1 wherever a command has it (and it is set)
COUNTS = ("n", "steps", "batch", "batch_size", "limit", "probes", "draws", "max_steps", "n_samples", "n_distribution",
          "calibration", "dim", "components", "oracle_dim", "oracle_components", "eval_every", "checkpoint_every")


def check_common(args: argparse.Namespace) -> None:
    """The checks every command shares, before it computes anything: counts >= 1, an available --device, and an
    --out that can be written (not a folder for a file output, not an existing file for a folder output, not under a
    file, writable)."""
    from .._validate import check_device, check_output_dir, check_output_file

    for name in COUNTS:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {value}.")
    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    kind = OUTPUTS.get(args.command)
    if kind is not None and getattr(args, "out", None) is not None:
        (check_output_dir if kind == "folder" else check_output_file)(args.out, "--out")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser: "sdeflow train: error: unrecognized arguments: ..."
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive integer; got {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    prog = f"sdeflow {args.command}"
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        check_common(args)
        return int(args._run(args) or 0)
    try:
        check_common(args)
        return int(args._run(args) or 0)
    except KeyboardInterrupt as err:
        detail = f" ({_one_line(err)})" if str(err) else ""
        print(f"{prog}: interrupted{detail}", file=sys.stderr)
        return 130
    except Exception as err:
        status = _exit_status(err)
        if status is not None:
            print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
            return status
        print(f"{prog}: error: unexpected {type(err).__name__}: {_one_line(err)} (a bug in sdeflow? run again with "
              f"{TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
