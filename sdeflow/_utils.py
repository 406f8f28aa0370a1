"""Small shared helpers: broadcasting per-sample scalars and turning user time arguments into tensors."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions so a per-sample tensor ``v`` of shape [B] broadcasts against [B, ...].

    A scalar (0-d) tensor is returned unchanged: it already broadcasts.
    """
    if v.ndim == 0:
        return v
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor with {v.ndim} dims to {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a tensor of shape [B] matching the batch of ``x`` (dtype and device of ``x``)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"`t` must be a scalar or have shape [B] = [{x.shape[0]}] to match `x`; got shape {tuple(t.shape)}."
        )
    return t


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file in the same folder, then it is renamed.

    Nothing half-written is left at ``path`` if ``write`` raises, and the file there before stays as it was. An
    ``OSError`` names ``path``, never the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except OSError as err:
            if err.filename is not None and Path(err.filename).name == Path(tmp).name:
                raise type(err)(err.errno, err.strerror, str(path)) from None
            raise
        # mkstemp creates the file 0600; give the result the permissions a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
