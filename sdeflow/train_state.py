"""The resumable half of a training run folder: serialising and restoring the exact training state.

``train_state.safetensors`` holds the raw (non-EMA) weights, the Adam moments and the batch generator's state;
``train_state.json`` the step, the training config, the optimiser hyper-parameters, the loss history and the SHA-256
of the tensors. Both are committed in the same transaction as the checkpoint (``model.safetensors`` with the EMA
weights + ``config.json``), so the four files always describe one step: resuming from them replays the uninterrupted
run bit for bit. ``folder_state`` tells what a folder holds and ``prepare_folder`` makes ``train`` refuse to
overwrite a finished run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from . import checkpoint as ckpt
from . import run_folder

if TYPE_CHECKING:
    from .train import TrainConfig

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"
MAY_CHANGE = ("steps", "eval_every", "eval_size", "checkpoint_every")  # settings that leave the trajectory as it is


@dataclass(frozen=True)
class FolderState:
    """What a run folder holds: ``checkpoint`` (a committed config.json), ``train_state`` (a committed training
    state) at ``step`` of ``steps`` (None without a training state), ``started`` (a writer has used the folder)."""

    exists: bool
    checkpoint: bool
    train_state: bool
    step: int | None
    steps: int | None
    started: bool


def folder_state(out: Path) -> FolderState:
    """Inspect ``out`` (read-only; the committed state, see ``run_folder.resolve``)."""
    if not out.is_dir():
        return FolderState(False, False, False, None, None, False)
    has_ckpt = run_folder.has_committed(out, ckpt.CONFIG_FILE)
    meta_path = run_folder.resolve(out, STATE_JSON)
    step = steps = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            step, steps = int(meta["step"]), int(meta["config"]["steps"])
        except (ValueError, KeyError, TypeError):
            pass
    started = (out / run_folder.LOCK_FILE).exists()
    return FolderState(True, has_ckpt, meta_path.is_file(), step, steps, started)


def prepare_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to reuse a folder that holds a run unless asked to (called before anything is computed)."""
    state = folder_state(out)
    if resume:
        if state.checkpoint and not state.train_state:
            raise ValueError(f"Cannot resume {out}: it holds a checkpoint but no training state ({STATE_JSON}); "
                             "it was written by sdeflow.save, not by a training run. Train into another folder.")
        if not state.train_state and not state.started:
            raise FileNotFoundError(f"Cannot resume: {out} holds no training run (start the run without resume).")
    elif (state.checkpoint or state.train_state) and not overwrite:
        at = f" (at step {state.step} of {state.steps})" if state.step is not None else ""
        raise FileExistsError(
            f"{out} already holds a run{at}; continue it with resume=True (--resume), replace it with "
            "overwrite=True (--overwrite), or pick another folder."
        )


def state_files(step: int, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                config: TrainConfig, loss: list[float], test_loss: list[tuple[int, float]]) -> dict[str, bytes]:
    """``{train_state.safetensors: ..., train_state.json: ...}`` in memory for a commit."""
    tensors = {f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key, value in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["rng"] = gen.get_state()
    raw = save_bytes(tensors)
    meta = {"step": step, "config": asdict(config), "param_groups": osd["param_groups"], "loss": loss,
            "test_loss": test_loss, "weights_sha256": hashlib.sha256(raw).hexdigest()}
    return {STATE_WEIGHTS: raw, STATE_JSON: json.dumps(meta, allow_nan=False).encode()}


def load_state(out: Path, config: TrainConfig, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
               gen: torch.Generator) -> tuple[int, list[float], list[tuple[int, float]]]:
    """Restore net, EMA, optimiser and generator from ``out`` (call with the folder's lock held and recovered);
    return (step, loss history, test-loss history)."""
    try:
        meta = json.loads((out / STATE_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ckpt.CheckpointError(f"Corrupt training state: {out / STATE_JSON} is not valid JSON.") from err
    if not isinstance(meta, dict) or not {"step", "config", "param_groups", "loss", "test_loss",
                                          "weights_sha256"} <= set(meta):
        raise ckpt.CheckpointError(f"Corrupt training state: {out / STATE_JSON} lacks keys; it was edited.")
    stored = {k: v for k, v in meta["config"].items() if k not in MAY_CHANGE}
    stored.setdefault("conditioning", "t")  # runs started before the option existed were conditioned on t
    stored.setdefault("conditional", False)  # ... and before class conditions existed, unconditional
    stored.setdefault("p_uncond", 0.1)
    now = {k: v for k, v in asdict(config).items() if k not in MAY_CHANGE}
    if json.loads(json.dumps(now)) != stored:
        diff = sorted(k for k in now if json.loads(json.dumps(now[k])) != stored.get(k))
        raise ValueError(
            f"Cannot resume {out}: the training config differs in {diff} (only {list(MAY_CHANGE)} may change)."
        )
    raw = (out / STATE_WEIGHTS).read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta["weights_sha256"]:
        raise ckpt.CheckpointError(f"Corrupt training state: the SHA-256 of {out / STATE_WEIGHTS} does not match.")
    step = int(meta["step"])
    ema_ckpt = ckpt.load(out)
    ckpt_step = ema_ckpt.config["extra"].get("train", {}).get("step")
    if ckpt_step != step:
        raise ckpt.CheckpointError(
            f"Inconsistent run folder {out}: the checkpoint is at step {ckpt_step} but the training state at step "
            f"{step}; one of them was replaced by hand. Restore both from the same run."
        )
    try:
        tensors = load_bytes(raw)
    except SafetensorError as err:
        raise ckpt.CheckpointError(f"Corrupt training state: cannot read {out / STATE_WEIGHTS} ({err}).") from err
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict(ema_ckpt.net.state_dict())
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng"])
    return step, list(meta["loss"]), [tuple(x) for x in meta["test_loss"]]
