"""Safe checkpoints: a folder with ``model.safetensors`` (the network's weights) and ``config.json`` (everything needed
to rebuild the model: network config, SDE, parameterisation, time label, data scaling). No pickle anywhere.

``config.json`` also records the SHA-256 of ``model.safetensors``, so a truncated or altered weight file is reported
as corrupt rather than loaded. Both files are written atomically (weights first, then the config).

    sdeflow.save("runs/my", net, sde, "eps", ContinuousTime(), model_config, data_info)
    ckpt = sdeflow.load("runs/my")          # ckpt.net (eval mode), ckpt.score_model, ckpt.sde, ckpt.data_info
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._utils import atomic_write
from .models import build_model
from .parametrization import PREDICTIONS, ScoreModel, TimeLabel, time_label_from_config
from .sde import SDE, sde_from_config

__all__ = ["Checkpoint", "save", "load", "CheckpointError", "WEIGHTS_FILE", "CONFIG_FILE"]

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
        score_model: ``ScoreModel(net, sde, prediction, time_label)``.
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_tensors(net: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


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
    """Write the checkpoint folder ``path`` (``model.safetensors`` + ``config.json``) and return it.

    Args:
        net: a network built by ``sdeflow.models.build_model(model_config)`` (its weights are saved).
        sde, prediction, time_label: as for ``ScoreModel``.
        model_config: the config ``build_model`` rebuilds ``net`` from.
        data_info: dict with name, levels, scale, offset (``Dataset.info``); sample_shape is taken from it or,
            if absent, from the network.
        extra: optional JSON-serialisable information stored under "extra" (e.g. training metadata).
    """
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
    missing = [k for k in ("name", "levels", "scale", "offset") if k not in data_info]
    if missing:
        raise ValueError(f"`data_info` lacks {missing}; pass Dataset.info (name, levels, scale, offset).")
    data_info = dict(data_info)
    if "sample_shape" not in data_info:
        shape = getattr(net, "sample_shape", None)
        if shape is None:
            raise ValueError("`data_info` has no 'sample_shape' and the network does not declare one; add it.")
        data_info["sample_shape"] = list(shape)
    data_info["sample_shape"] = [int(s) for s in data_info["sample_shape"]]
    folder = Path(path)
    weights = folder / WEIGHTS_FILE
    atomic_write(weights, lambda p: save_file(_state_tensors(net), str(p), metadata={"format": FORMAT}))
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config,
        "sde": sde.config(),
        "prediction": prediction,
        "time_label": time_label.config(),
        "data": data_info,
        "weights_sha256": _sha256(weights),
        "extra": extra or {},
    }
    text = json.dumps(config, indent=2, allow_nan=False)
    atomic_write(folder / CONFIG_FILE, lambda p: p.write_text(text))
    return folder


def read_config(path: str | Path) -> dict:
    """Parse and validate ``config.json`` of the checkpoint folder ``path``."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {str(folder)!r} does not exist.")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{folder} is not an sdeflow checkpoint: {CONFIG_FILE} is missing "
            f"(expected {WEIGHTS_FILE} + {CONFIG_FILE})."
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"Corrupt checkpoint: {cfg_path} is not valid JSON ({err}).") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not an sdeflow checkpoint config (no \"format\": \"{FORMAT}\").")
    if config.get("version") != VERSION:
        raise CheckpointError(
            f"{cfg_path} has checkpoint version {config.get('version')!r}; this sdeflow reads version {VERSION}."
        )
    missing = [k for k in ("model", "sde", "prediction", "time_label", "data", "weights_sha256") if k not in config]
    if missing:
        raise CheckpointError(f"Corrupt checkpoint: {cfg_path} lacks the keys {missing}.")
    return config


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load the checkpoint folder ``path``: rebuild the network from config.json and load its safetensors weights.

    Raises ``FileNotFoundError`` for a missing folder and ``CheckpointError`` (a ValueError) for a missing or corrupt
    file, a checksum mismatch, or weights that do not match the network the config describes.
    """
    config = read_config(path)
    folder = Path(path)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"Corrupt checkpoint: {weights} is missing.")
    if _sha256(weights) != config["weights_sha256"]:
        raise CheckpointError(
            f"Corrupt checkpoint: the SHA-256 of {weights} does not match the one recorded in {CONFIG_FILE} "
            "(the file was truncated or modified). Re-save or re-download the checkpoint."
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"Corrupt checkpoint: cannot read {weights} as safetensors ({err}).") from err
    try:
        net = build_model(config["model"])
        sde = sde_from_config(config["sde"])
        time_label = time_label_from_config(config["time_label"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"Invalid checkpoint config in {folder / CONFIG_FILE}: {err}") from err
    _load_state(net, state, folder)
    net.to(map_location).eval()
    data_info = dict(config["data"])
    sample_shape = tuple(int(s) for s in data_info.get("sample_shape", getattr(net, "sample_shape", ())))
    score_model = ScoreModel(net, sde, prediction=config["prediction"], time_label=time_label)
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
