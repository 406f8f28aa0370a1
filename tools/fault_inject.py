"""Fault injection for run folders: kill ``sdeflow train`` and ``sdeflow train --resume`` at random instants and check
that every folder left behind loads, is consistent, and resumes to exactly the uninterrupted result.

    python tools/fault_inject.py --trials 100 --seed 0          # 23 minutes on a busy 2-core machine

Each trial starts ``sdeflow train`` on a tiny config (moons, a 16-wide MLP, a checkpoint after every step) in a real
subprocess and kills it after a random delay with SIGKILL or SIGINT (Ctrl-C); in half of the trials it then starts
``sdeflow train --resume`` on the same folder and kills that too. The delays are drawn over the whole life of the
process (start-up, training, checkpoint commits, exit), weighted towards the part after the imports. Then it checks:

1. consistent: if the folder holds a committed checkpoint, ``sdeflow.load`` reads it (hash verified) and the training
   state is at the same step as the checkpoint (before any writer repairs the folder);
2. exact: ``sdeflow train --resume`` (or a fresh start if the run had not yet begun) finishes the run, and every
   tensor of ``model.safetensors`` and ``train_state.safetensors`` and the loss history equal the uninterrupted
   reference run's bit for bit.

It prints one line per failed trial and a summary ``corrupted or inexact: K of N``; the exit status is 1 if K > 0.
It also counts Ctrl-C exits that were not one line with status 130 (a SIGINT that lands while Python is still
importing torch, before sdeflow's code runs, ends with Python's own traceback; the folder is untouched then).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch
from safetensors.torch import load_file

import sdeflow
from sdeflow.cli import main
from sdeflow.train_state import STATE_JSON, STATE_WEIGHTS, folder_state

MODEL = '{"type": "mlp", "dim": 2, "width": 16, "depth": 1}'


def train_args(out: Path, steps: int) -> list[str]:
    return ["train", "--data", "moons", "--model", MODEL, "--steps", str(steps), "--batch-size", "16",
            "--warmup", "5", "--eval-every", "25", "--checkpoint-every", "1", "--no-progress", "--out", str(out)]


def launch(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdeflow", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_after(proc: subprocess.Popen, delay: float, sig: signal.Signals) -> str:
    """Send ``sig`` after ``delay`` seconds unless the process ended first; wait for it; describe what happened."""
    try:
        proc.wait(timeout=delay)
        return f"finished before the {sig.name} (rc {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # SIGINT ignored: a failure of its own
        proc.kill()
        proc.wait()
        return f"{sig.name} at {delay:.2f} s was ignored"
    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
    if sig == signal.SIGINT and proc.returncode not in (130, 0, -2):
        return f"{sig.name} at {delay:.2f} s: exit status {proc.returncode}, stderr {err[-1:]}"
    if sig == signal.SIGINT and len(err) > 1:
        return f"{sig.name} at {delay:.2f} s: {len(err)} lines on stderr (expected one): {err[:2]}"
    return ""


def check_consistent(folder: Path) -> str:
    """'' if the folder is consistent, else the problem (read-only: nothing is repaired here)."""
    state = folder_state(folder)
    if not state.checkpoint:
        return ""  # killed before the first commit: nothing to load yet, --resume starts from step 0
    try:
        ck = sdeflow.load(folder)
    except Exception as err:
        return f"sdeflow.load failed: {type(err).__name__}: {err}"
    step = ck.config["extra"]["train"]["step"]
    if state.step != step:
        return f"checkpoint at step {step} but training state at step {state.step}"
    return ""


def check_exact(folder: Path, ref: Path, steps: int) -> str:
    resume = folder_state(folder).started or folder_state(folder).train_state
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(train_args(folder, steps) + (["--resume"] if resume else []))
    if rc != 0:
        return f"finishing the run failed with exit status {rc}"
    for name in ("model.safetensors", STATE_WEIGHTS):
        a, b = load_file(ref / name), load_file(folder / name)
        if a.keys() != b.keys():
            return f"{name}: different tensors"
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        if diff:
            return f"{name}: {len(diff)} tensors differ, e.g. {diff[0]}"
    ra, rb = json.loads((ref / STATE_JSON).read_text()), json.loads((folder / STATE_JSON).read_text())
    if (ra["loss"], ra["test_loss"], ra["step"]) != (rb["loss"], rb["test_loss"], rb["step"]):
        return "the loss history differs"
    return ""


def main_cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150, help="training steps of the tiny run (default 150)")
    p.add_argument("--workdir", default=None, help="where the run folders go (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sdeflow-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.perf_counter()
    proc = launch(train_args(work / "timing", args.steps))  # the life of an uninterrupted process
    proc.wait()
    life = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sdeflow.cli, sdeflow.train"], check=True)
    start_up = time.perf_counter() - t0
    shutil.rmtree(work / "timing")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(train_args(ref, args.steps)) == 0
    print(f"process life {life:.2f} s (start-up {start_up:.2f} s); {args.trials} trials in {work}", flush=True)

    def delay() -> float:  # 80% after the imports, 20% anywhere
        lo = 0.0 if rng.random() < 0.2 else 0.9 * start_up
        return rng.uniform(lo, life)

    bad = 0
    messages: list[str] = []
    counts = {"kills": 0, "resume kills": 0, "no checkpoint yet": 0}
    for trial in range(args.trials):
        folder = work / f"trial{trial:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        problems = []
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        note = kill_after(launch(train_args(folder, args.steps)), delay(), sig)
        counts["kills"] += 1
        if note and not note.startswith("finished"):
            messages.append(f"trial {trial}: {note}")
        problems += [p for p in [check_consistent(folder)] if p]
        if rng.random() < 0.5:
            sig2 = rng.choice([signal.SIGKILL, signal.SIGINT])
            resume = ["--resume"] if folder_state(folder).started or folder_state(folder).train_state else []
            note = kill_after(launch(train_args(folder, args.steps) + resume), delay(), sig2)
            counts["resume kills"] += 1
            if note and not note.startswith("finished"):
                messages.append(f"trial {trial} (resume): {note}")
            problems += [p for p in [check_consistent(folder)] if p]
        counts["no checkpoint yet"] += not folder_state(folder).checkpoint
        problems += [p for p in [check_exact(folder, ref, args.steps)] if p]
        if problems:
            bad += 1
            print(f"trial {trial}: " + "; ".join(problems), flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{counts['kills']} kills of `sdeflow train`, {counts['resume kills']} of `sdeflow train --resume`; "
          f"{counts['no checkpoint yet']} folders had no checkpoint yet when checked")
    for line in messages:
        print(f"  Ctrl-C not reported as one line with status 130: {line}")
    print(f"Ctrl-C exits not one line / status 130: {len(messages)}")
    print(f"corrupted or inexact: {bad} of {args.trials}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_cli())
