"""Safe checkpoints: a folder with ``model.safetensors`` (the network's weights) and ``config.json`` (everything needed
to rebuild the model: network config, SDE, parameterisation, time label, data scaling). No pickle anywhere.

``config.json`` also records the SHA-256 of ``model.safetensors``, so a truncated or altered weight file is reported
as corrupt rather than loaded. Both files are replaced in one transaction (``sdeflow.run_folder``): after a kill at
any instant the folder holds either the old pair or the new pair, never a mix. ``load`` validates config.json key by
key: a missing or edited key is an error that names it, never a silent default.

    sdeflow.save("runs/my", net, sde, "eps", ContinuousTime(), model_config, data_info)
    ckpt = sdeflow.load("runs/my")          # ckpt.net (eval mode), ckpt.score_model, ckpt.sde, ckpt.data_info
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from . import _validate as V
from . import run_folder
from .models import build_model
from .parametrization import PREDICTIONS, ScoreModel, TimeLabel, time_label_from_config
from .sde import SDE, sde_from_config

__all__ = ["Checkpoint", "save", "load", "checkpoint_files", "read_config", "CheckpointError", "WEIGHTS_FILE",
           "CONFIG_FILE"]

FORMAT = "sdeflow-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files, corrupt, or does not match the network its config describes."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        net: the network (eval mode, the stored weights: EMA weights for checkpoints written by ``sdeflow train``).
        sde: the forward SDE.
        score_model: ``ScoreModel(net, sde, prediction, time_label, num_classes)`` (``num_classes`` from the model
            config of a class-conditional network, else None).
        sample_shape: the shape of one sample.
        data_info: dict with name, levels, scale, offset, sample_shape of the training data.
        config: the whole parsed config.json.
        path: the checkpoint folder.
    """

    net: nn.Module
    sde: SDE
    score_model: ScoreModel
    sample_shape: tuple[int, ...]
    data_info: dict
    config: dict
    path: Path


def _state_tensors(net: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def _check_data_info(data_info: object, name: str) -> dict:
    """The data description, checked key by key: name, levels (None or an integer >= 2), scale (> 0), offset,
    sample_shape (positive integers)."""
    if not isinstance(data_info, dict):
        raise V.bad_value(name, "a dict with name, levels, scale, offset, sample_shape (Dataset.info)", data_info,
                          error=TypeError)
    missing = [k for k in ("name", "levels", "scale", "offset") if k not in data_info]
    if missing:
        raise ValueError(f"`{name}` lacks {missing}; pass Dataset.info (name, levels, scale, offset).")
    out = dict(data_info)
    if not isinstance(out["name"], str):
        raise V.bad_value(f"{name}['name']", "a string", out["name"], error=TypeError)
    if out["levels"] is not None:
        out["levels"] = V.check_int(out["levels"], f"{name}['levels']", min=2)
    out["scale"] = V.check_float(out["scale"], f"{name}['scale']", min=0, min_open=True)
    out["offset"] = V.check_float(out["offset"], f"{name}['offset']")
    if "sample_shape" in out:
        shape = out["sample_shape"]
        if not isinstance(shape, list | tuple) or not shape:
            raise V.bad_value(f"{name}['sample_shape']", "a non-empty list of positive integers", shape)
        out["sample_shape"] = [V.check_int(s, f"{name}['sample_shape']", min=1) for s in shape]
    return out


def checkpoint_files(
    net: nn.Module,
    sde: SDE,
    prediction: str,
    time_label: TimeLabel,
    model_config: dict,
    data_info: dict,
    *,
    extra: dict | None = None,
) -> dict[str, bytes]:
    """Validate everything and serialise the checkpoint to ``{"model.safetensors": ..., "config.json": ...}`` in
    memory (arguments as for ``save``); nothing is written, so a bad argument can never damage a folder."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"`net` must be a torch.nn.Module; got {type(net).__name__}.")
    if not isinstance(sde, SDE):
        raise TypeError(f"`sde` must be an sdeflow SDE; got {type(sde).__name__}.")
    if prediction not in PREDICTIONS:
        raise ValueError(f"Invalid prediction {prediction!r}. Must be one of {PREDICTIONS}.")
    if not isinstance(time_label, TimeLabel):
        raise TypeError(f"`time_label` must be an sdeflow TimeLabel; got {type(time_label).__name__}.")
    if not isinstance(model_config, dict) or "type" not in model_config:
        raise ValueError("`model_config` must be the dict build_model() takes, with a 'type' key.")
    V.check_json(model_config, "model_config")
    data_info = _check_data_info(data_info, "data_info")
    if "sample_shape" not in data_info:
        shape = getattr(net, "sample_shape", None)
        if shape is None:
            raise ValueError("`data_info` has no 'sample_shape' and the network does not declare one; add it.")
        data_info["sample_shape"] = [int(s) for s in shape]
    if extra is not None and not isinstance(extra, dict):
        raise V.bad_value("extra", "a dict or None", extra, error=TypeError)
    V.check_json(extra or {}, "extra")
    tensors = _state_tensors(net)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"`net` has NaN or infinite weights in {bad[:3]}; refusing to save a broken network.")
    weights = save_bytes(tensors, metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config,
        "sde": sde.config(),
        "prediction": prediction,
        "time_label": time_label.config(),
        "data": data_info,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "extra": extra or {},
    }
    text = json.dumps(config, indent=2, allow_nan=False)
    return {WEIGHTS_FILE: weights, CONFIG_FILE: text.encode()}


def save(
    path: str | Path,
    net: nn.Module,
    sde: SDE,
    prediction: str,
    time_label: TimeLabel,
    model_config: dict,
    data_info: dict,
    *,
    extra: dict | None = None,
) -> Path:
    """Write the checkpoint folder ``path`` (``model.safetensors`` + ``config.json``) as one transaction; return it.

    Args:
        net: a network built by ``sdeflow.models.build_model(model_config)`` (its weights are saved).
        sde, prediction, time_label: as for ``ScoreModel``.
        model_config: the config ``build_model`` rebuilds ``net`` from.
        data_info: dict with name, levels, scale, offset (``Dataset.info``); sample_shape is taken from it or,
            if absent, from the network.
        extra: optional JSON-serialisable information stored under "extra" (e.g. training metadata); finite
            numbers only.

    Everything is validated and serialised before the folder is touched; the two files then replace the old ones
    together (``sdeflow.run_folder.commit``), so a failed save leaves the previous checkpoint intact and writes
    nothing into a new folder. Raises ``FolderLockedError`` while another process writes to ``path``.
    """
    files = checkpoint_files(net, sde, prediction, time_label, model_config, data_info, extra=extra)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise V.bad_value("path", "a folder", folder, f"{folder} is an existing file.")
    run_folder.commit(folder, files)
    return folder


_CONFIG_KEYS = ("format", "version", "model", "sde", "prediction", "time_label", "data", "weights_sha256", "extra")


def _invalid(cfg_path: Path, key: str, expected: str, got: object) -> CheckpointError:
    return CheckpointError(
        f"Invalid checkpoint config {cfg_path}: key {key!r} must be {expected}; got {V.describe(got)}. "
        "Restore the file as it was saved (or re-save the checkpoint)."
    )


class _Configurable(Protocol):
    def config(self) -> dict: ...


_C = TypeVar("_C", bound=_Configurable)


def _round_trip(cfg_path: Path, key: str, stored: object, build: Callable[[dict], _C]) -> _C:
    """Build an object from ``stored`` and check that its own config reproduces ``stored`` exactly, so that a
    missing key never silently takes a default and an edited value never passes unnoticed."""
    if not isinstance(stored, dict) or not isinstance(stored.get("type"), str):
        raise _invalid(cfg_path, key, 'an object with a "type"', stored)
    try:
        obj = build(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"Invalid checkpoint config {cfg_path}: key {key!r}: {err}") from err
    rebuilt = obj.config()
    missing = sorted(set(rebuilt) - set(stored))
    if missing:
        raise CheckpointError(
            f"Invalid checkpoint config {cfg_path}: key {key!r} lacks {missing} (a default would be guessed). "
            "Restore the file as it was saved."
        )
    if json.loads(json.dumps(rebuilt)) != stored:
        raise _invalid(cfg_path, key, f"the config the object writes ({rebuilt})", stored)
    return obj


def read_config(path: str | Path) -> dict:
    """Parse and validate ``config.json`` of the checkpoint folder ``path`` key by key (the committed version)."""
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_FILE, WEIGHTS_FILE):
        raise FileNotFoundError(
            f"`path` must be a checkpoint folder; got the file {folder}. Pass its folder {folder.parent}."
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {str(folder)!r} does not exist.")
    cfg_path = run_folder.resolve(folder, CONFIG_FILE)
    if not cfg_path.is_file():
        if (folder / run_folder.LOCK_FILE).exists() and not run_folder.has_committed(folder, WEIGHTS_FILE):
            raise CheckpointError(
                f"{folder} holds no checkpoint yet: a run was started there but wrote no checkpoint "
                "(resume it with `sdeflow train --resume` or start it again)."
            )
        raise CheckpointError(
            f"{folder} is not an sdeflow checkpoint: {CONFIG_FILE} is missing "
            f"(expected {WEIGHTS_FILE} + {CONFIG_FILE})."
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"Corrupt checkpoint: {folder / CONFIG_FILE} is not valid JSON ({err}).") from err
    shown = folder / CONFIG_FILE
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{shown} is not an sdeflow checkpoint config (no \"format\": \"{FORMAT}\").")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{shown} has checkpoint version {config.get('version')!r}; this sdeflow reads version {VERSION}."
        )
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"Corrupt checkpoint: {shown} lacks the keys {missing}.")
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise CheckpointError(f"Invalid checkpoint config {shown}: unknown keys {unknown}; remove them.")
    if not isinstance(config["model"], dict) or not isinstance(config["model"].get("type"), str):
        raise _invalid(shown, "model", 'an object with a "type" (the network config)', config["model"])
    if config["prediction"] not in PREDICTIONS:
        raise _invalid(shown, "prediction", f"one of {PREDICTIONS}", config["prediction"])
    sha = config["weights_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _invalid(shown, "weights_sha256", "a SHA-256 hex digest", sha)
    if not isinstance(config["extra"], dict):
        raise _invalid(shown, "extra", "an object", config["extra"])
    data = config["data"]
    if not isinstance(data, dict) or sorted(data) != sorted(("name", "levels", "scale", "offset", "sample_shape")):
        raise _invalid(shown, "data", "an object with exactly name, levels, scale, offset, sample_shape", data)
    try:
        _check_data_info(data, "data")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"Invalid checkpoint config {shown}: {err}") from err
    return config


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load the checkpoint folder ``path``: rebuild the network from config.json and load its safetensors weights.

    ``map_location`` is the device for the network ('cpu', 'cuda', 'cuda:1'). The config is validated key by key
    (no key is ever defaulted). Raises ``FileNotFoundError`` for a missing folder, ``ValueError`` for a bad
    ``map_location``, and ``CheckpointError`` (a ValueError) for a missing or corrupt file, an edited config, a
    checksum mismatch, or weights that do not match the network the config describes.

    Reads the last committed state of a run folder, also while a writer is busy or after a writer was killed.
    """
    device = V.check_device(map_location, "map_location")
    folder = Path(path)
    for attempt in range(3):
        try:
            return _load(folder, device)
        except (CheckpointError, FileNotFoundError) as err:
            # a writer may have switched the files between two of our reads: read the new set again
            in_flight = isinstance(err, CheckpointError) or (folder / run_folder.STAGING).exists()
            if attempt == 2 or not in_flight:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _load(folder: Path, device: torch.device) -> Checkpoint:
    config = read_config(folder)
    cfg_path = folder / CONFIG_FILE
    weights = run_folder.resolve(folder, WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"Corrupt checkpoint: {folder / WEIGHTS_FILE} is missing.")
    raw = weights.read_bytes()
    if hashlib.sha256(raw).hexdigest() != config["weights_sha256"]:
        raise CheckpointError(
            f"Corrupt checkpoint: the SHA-256 of {folder / WEIGHTS_FILE} does not match the one recorded in "
            f"{CONFIG_FILE} (the file was truncated or modified). Re-save or re-download the checkpoint."
        )
    try:
        state = {k: v.to(device) for k, v in load_bytes(raw).items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"Corrupt checkpoint: cannot read {folder / WEIGHTS_FILE} as safetensors ({err}).") \
            from err
    try:
        net = build_model(config["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"Invalid checkpoint config in {cfg_path}: {err}") from err
    sde = _round_trip(cfg_path, "sde", config["sde"], sde_from_config)
    time_label = _round_trip(cfg_path, "time_label", config["time_label"], time_label_from_config)
    _load_state(net, state, folder)
    net.to(device).eval()
    data_info = dict(config["data"])
    sample_shape = tuple(int(s) for s in data_info["sample_shape"])
    declared = getattr(net, "sample_shape", None)
    if declared is not None and tuple(declared) != sample_shape:
        raise _invalid(cfg_path, "data.sample_shape", f"the network's sample shape {list(declared)}",
                       data_info["sample_shape"])
    # a class-conditional network records num_classes in its model config (old checkpoints: unconditional)
    score_model = ScoreModel(net, sde, prediction=config["prediction"], time_label=time_label,
                             num_classes=getattr(net, "num_classes", None))
    return Checkpoint(net, sde, score_model, sample_shape, data_info, config, folder)


def _load_state(net: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            details.append(
                f"shape mismatch for {len(wrong)} tensor(s), e.g. {k}: stored {tuple(state[k].shape)}, "
                f"network {tuple(expected[k].shape)}"
            )
        raise CheckpointError(
            f"The weights in {folder / WEIGHTS_FILE} do not match the network described by {CONFIG_FILE}: "
            + "; ".join(details)
            + ". The two files come from different models."
        )
    net.load_state_dict(state, strict=True)


def num_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(math.prod(p.shape) for p in net.parameters() if p.requires_grad))
