"""Score networks that export cleanly to ONNX: ``MLP`` for vectors, ``UNet`` for small images.

Networks are called as ``net(x, label)`` with ``label`` of shape [B] (continuous t or a DDPM timestep, see
``sdeflow.parametrization``) and return a tensor of the shape of ``x``. ``build_model(config)`` builds one from a
JSON-serialisable dict ``{"type": "mlp" | "unet", **keyword arguments}``, which is what checkpoints store.
"""

from __future__ import annotations

import inspect

from torch import nn

from .embeddings import FourierEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "SinusoidalEmbedding", "FourierEmbedding", "build_model", "MODELS", "default_model_config"]

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def build_model(config: dict) -> nn.Module:
    """Build a network from ``{"type": "mlp" | "unet", **kwargs}`` (the kwargs of ``MLP`` or ``UNet``)."""
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict like {{'type': 'unet', ...}}; got {type(config).__name__}.")
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    if kind not in MODELS:
        raise ValueError(f"Invalid model type {kind!r}. Must be one of {sorted(MODELS)}.")
    cls = MODELS[kind]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"Unknown {kind} option(s) {unknown}. Valid options: {sorted(allowed)}.")
    return cls(**kwargs)


def default_model_config(sample_shape: tuple[int, ...]) -> dict:
    """A sensible network for data of ``sample_shape``: an MLP for vectors, a compact UNet for square images."""
    sample_shape = tuple(sample_shape)
    if len(sample_shape) == 1:
        return {"type": "mlp", "dim": sample_shape[0], "width": 128, "depth": 3}
    if len(sample_shape) == 3 and sample_shape[1] == sample_shape[2]:
        c, size = sample_shape[0], sample_shape[1]
        mults = [1, 2] if size <= 8 else [1, 2, 2]
        if size % 2 ** (len(mults) - 1):
            mults = [1]
        return {"type": "unet", "image_size": size, "in_channels": c, "channels": 20 if size <= 8 else 32,
                "mults": mults}
    raise ValueError(
        f"No default network for samples of shape {sample_shape}; vectors [D] and square images [C, H, H] are "
        "supported. Pass an explicit model config."
    )
