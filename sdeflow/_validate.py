"""Boundary validation in one error style: the argument, what was expected, what arrived, and the fix.

Every public entry point checks its inputs here before any computation, so bad input gives a ``ValueError`` or
``TypeError`` that reads

    `steps` must be an integer >= 1; got 5.0 (float). Pass a whole number, e.g. steps=5.

instead of a deep torch traceback or a silently wrong number. The helpers return the normalised value (a Python
``int`` / ``float``, a ``torch.device``), so callers write ``steps = check_int(steps, "steps", min=1)``.

Numbers: ``check_int`` accepts Python and NumPy integers (``np.int64(10)``) and integral 0-d integer tensors;
``check_float`` also accepts Python/NumPy floats. Booleans are never numbers here, and a float is never silently
truncated to an integer (``5.0`` is refused where an integer is expected).

    check_int(value, name, *, min=None, max=None)                 -> int
    check_float(value, name, *, min=None, max=None, min_open=False, max_open=False, finite=True) -> float
    check_choice(value, name, choices)                            -> the value
    check_tensor(x, name, *, shape=None, ndim=None, floating=True, device=None, finite=True) -> Tensor
    check_batch(x, name, *, sample_shape=None, device=None)       -> Tensor [B, *sample_shape], float32/64, finite
    model_signature(model)                                        -> (sample_shape or None, device or None)
    check_device(device, name="device")                           -> torch.device (refuses CUDA on a CPU build)
    check_json(value, name)                                       -> the value (JSON-serialisable, finite numbers)
    json_safe(value)                                              -> a copy with NaN/inf floats as None (reports)
    check_output_dir(path, name="--out") / check_output_file(path, name="--out", suffixes=())   -> Path

A batch against the model it is fed to (as ``log_likelihood`` does, and ``sample`` for ``x_T`` and ``noise``):

    shape, device = model_signature(model)
    x = check_batch(x, "x", sample_shape=shape, device=device)

``describe(value)`` renders the "got ..." part (the value and its type, the shape/dtype/device of a tensor).
``bad_value(name, expected, got, fix)`` builds the message for checks that the helpers do not cover.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "bad_value",
    "describe",
    "check_int",
    "check_float",
    "check_choice",
    "check_tensor",
    "check_batch",
    "model_signature",
    "check_device",
    "check_json",
    "json_safe",
    "check_output_dir",
    "check_output_file",
]


def describe(value: Any) -> str:
    """A short rendering of ``value`` for the "got ..." part of an error message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}, dtype {value.dtype}, on {value.device}"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {list(value.shape)}, dtype {value.dtype} (pass a torch.Tensor)"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def bad_value(
    name: str,
    expected: str,
    got: Any,
    fix: str = "",
    *,
    error: type[Exception] = ValueError,
    expected_text: str | None = None,
) -> Exception:
    """The exception ``error("`name` must be EXPECTED; got GOT. FIX")``. ``got`` is the offending value, rendered by
    ``describe``; a ``Path`` is shown as the path itself. ``expected_text`` replaces "be EXPECTED" where a verb reads
    better ("`--out` must end in .npy")."""
    text = str(got) if isinstance(got, Path) else describe(got)
    message = f"`{name}` must {expected_text or 'be ' + expected}; got {text}."
    if fix:
        message += f" {fix}"
    return error(message)


def _range_text(min: float | None, max: float | None, min_open: bool = False, max_open: bool = False) -> str:
    parts = []
    if min is not None:
        parts.append(f"{'>' if min_open else '>='} {min}")
    if max is not None:
        parts.append(f"{'<' if max_open else '<='} {max}")
    return " and ".join(parts)


def check_int(value: Any, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as a Python int: an int, a NumPy integer or a 0-d integer tensor, within [min, max]."""
    if isinstance(value, Tensor) and value.ndim == 0 and not value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            hint = f"Pass a whole number, e.g. {name}={int(float(value))}." if float(value).is_integer() else ""
        raise bad_value(name, "an integer" + (" " + _range_text(min, max) if min is not None or max is not None
                                              else ""), value, hint, error=TypeError)
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise bad_value(name, f"an integer {_range_text(min, max)}", value)
    return value


def check_float(
    value: Any,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a Python float: a real number (Python, NumPy or a 0-d tensor), finite unless ``finite=False``,
    within the range given by ``min``/``max`` (closed unless ``min_open``/``max_open``)."""
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    rng = _range_text(min, max, min_open, max_open)
    expected = ("a finite number" if finite else "a number") + (f" {rng}" if rng else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad_value(name, expected, value, error=TypeError)
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise bad_value(name, expected, value)
    low = min is not None and (value <= min if min_open else value < min)
    high = max is not None and (value >= max if max_open else value > max)
    if low or high:
        raise bad_value(name, expected, value)
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise bad_value(name, f"one of {choices}", value)
    return value


def check_tensor(
    x: Any,
    name: str,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | None = None,
    floating: bool = True,
    device: torch.device | str | None = None,
    finite: bool = True,
) -> Tensor:
    """Check that ``x`` is a torch tensor with the given shape (``None`` entries match any size), number of
    dimensions, a real floating dtype (float16/32/64, bfloat16) when ``floating``, on ``device``, and finite."""
    if not isinstance(x, Tensor):
        fix = "Convert it with torch.as_tensor(...)." if isinstance(x, np.ndarray | list | tuple) else ""
        raise bad_value(name, "a torch.Tensor", x, fix, error=TypeError)
    if ndim is not None and x.ndim != ndim:
        raise bad_value(name, f"a {ndim}-dimensional tensor", x)
    if shape is not None:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=False)):
            raise bad_value(name, f"a tensor of shape {want}", x)
    if floating and (not x.dtype.is_floating_point or x.dtype.is_complex):
        raise bad_value(name, "a real floating-point tensor (float32 or float64)", x,
                        "Convert it with .float() or .double().", error=TypeError)
    if device is not None and x.device != torch.device(device):
        raise bad_value(name, f"on device {torch.device(device)}", x, f"Move it with .to('{torch.device(device)}').")
    if finite and x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"`{name}` must be finite; got {bad} NaN or infinite value(s) in {describe(x)}. "
                         "Remove or replace them before the call.")
    return x


def model_signature(model: Any) -> tuple[tuple[int, ...] | None, torch.device | None]:
    """The sample shape a score model's network declares (``net.sample_shape``, as sdeflow's MLP and UNet do) and
    the device of its parameters; None for what a plain callable does not declare."""
    net = getattr(model, "net", model)
    shape = getattr(net, "sample_shape", None)
    device = None
    if isinstance(net, torch.nn.Module):
        first = next(iter(net.parameters()), None)
        device = first.device if first is not None else None
    return (tuple(int(s) for s in shape) if shape is not None else None), device


def check_batch(
    x: Any,
    name: str,
    *,
    sample_shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    finite: bool = True,
) -> Tensor:
    """A batch of samples: a float32/float64 tensor [B, *sample_shape] with B >= 1, on ``device``, finite.
    Pass ``model_signature(model)`` to check a batch against the model it is fed to."""
    x = check_tensor(x, name, floating=False, finite=False)
    if x.ndim < 2 or x.shape[0] == 0:
        raise bad_value(name, "a tensor of shape [B, *sample_shape] with B >= 1", x,
                        "Add a batch dimension with x[None].")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        want = "[B, " + ", ".join(str(s) for s in sample_shape) + "]"
        raise bad_value(name, f"a tensor of shape {want} to match the model", x,
                        "Pass data of the shape the model was trained on.")
    if x.dtype not in (torch.float32, torch.float64):
        raise bad_value(name, "a float32 or float64 tensor", x, "Convert it with .float() or .double().",
                        error=TypeError)
    return check_tensor(x, name, device=device, finite=finite)


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``; refuses unparsable names and CUDA devices this torch build or machine lacks."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise bad_value(name, "a torch device such as 'cpu', 'cuda' or 'cuda:1'", device) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise bad_value(name, "an available device", device,
                            "This torch build or machine has no CUDA GPU (torch.cuda.is_available() is False); "
                            "use 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise bad_value(name, f"a CUDA device index < {torch.cuda.device_count()}", device)
    elif dev.type not in ("cpu", "mps", "meta"):
        raise bad_value(name, "'cpu' or a CUDA device", device)
    return dev


def _first_non_json(value: Any, where: str) -> str | None:
    """The path of the first value that JSON cannot hold exactly (non-finite float, non-str key, other type)."""
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int | float):
        return None if math.isfinite(value) else f"{where} = {value!r} (not finite; JSON has no NaN or inf)"
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _first_non_json(v, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{where} has the non-string key {k!r}"
            found = _first_non_json(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    return f"{where} = {describe(value)} (not a JSON type: use str, int, float, bool, None, list or dict)"


def check_json(value: Any, name: str) -> Any:
    """``value`` if JSON can store it exactly: dicts with string keys, lists, strings, finite numbers, bools, None."""
    found = _first_non_json(value, name)
    if found:
        raise ValueError(f"`{name}` must hold only JSON values with finite numbers; {found}. "
                         "Convert or remove that entry.")
    return value


def json_safe(value: Any) -> Any:
    """A copy of ``value`` with non-finite floats replaced by None, for reports where a number may be undefined
    (e.g. the standard error of one example); ``json.dumps(json_safe(v), allow_nan=False)`` then always works."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _writable_ancestor(path: Path, name: str) -> None:
    """Check that the nearest existing ancestor of ``path`` is a writable folder (path under a file, read-only)."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise bad_value(name, "a path whose folders can be created", path, f"{parent} is a broken link.")
        parent = parent.parent
    if not parent.is_dir():
        raise bad_value(name, "a path whose folders can be created", path,
                        f"{parent} is a file, not a folder; pick another path.")
    _probe_writable(parent, name, path, "a writable location")


def _probe_writable(folder: Path, name: str, path: object, expected: str) -> None:
    """Create and remove a file in ``folder``: a real probe, also right for root and for read-only file systems."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdeflow-probe-", dir=folder)
    except OSError as err:
        raise bad_value(name, expected, path,
                        f"Cannot create files in {folder} ({err.strerror}); pick a writable folder.") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | os.PathLike, name: str = "--out") -> Path:
    """``path`` as a Path if it can become an output folder: an existing folder or a new path whose nearest existing
    ancestor is a writable folder. Checked before any computation, so a bad path fails in a second, not an hour."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise bad_value(name, "a folder", path, f"{path} is an existing file; pass a folder path.")
    if path.is_dir():
        _probe_writable(path, name, path, "a writable folder")
        return path
    _writable_ancestor(path, name)
    return path


def check_output_file(path: str | os.PathLike, name: str = "--out", suffixes: Sequence[str] = ()) -> Path:
    """``path`` as a Path if a file can be written there: not a folder, ending in one of ``suffixes`` (if given),
    its folder existing-and-writable or creatable. An existing file is replaced atomically on success."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise bad_value(name, "", path, expected_text=f"end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise bad_value(name, "a file path", path, f"{path} is an existing folder; pass a file name in it.")
    _writable_ancestor(path, name)
    return path
