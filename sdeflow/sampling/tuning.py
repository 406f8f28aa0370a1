"""Tuned time grids: the S + 1 times that minimise a sampler's endpoint error, stored as small JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .._utils import atomic_write
from .grids import Times

__all__ = ["save_grid", "load_grid"]

FORMAT = "sdeflow-grid/1"


def save_grid(path: str | Path, grid: Times, info: dict | None = None) -> Path:
    """Write ``grid`` (its times and where they came from, ``info``) to a JSON file, atomically."""
    times = [float(t) for t in grid.times]
    if not all(math.isfinite(t) for t in times):
        raise ValueError("the grid has non-finite times; nothing was written.")
    doc = {"format": FORMAT, "times": times, **({"info": info} if info else {})}
    text = json.dumps(doc, indent=2, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_grid(path: str | Path) -> Times:
    """A ``Times`` grid from a file written by ``save_grid`` (or ``sdeflow tune-grid``)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"grid file {str(p)!r} does not exist; write one with `sdeflow tune-grid`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"grid file {str(p)!r} is not JSON: {err}.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("times"), list):
        raise ValueError(f'grid file {str(p)!r} is not an sdeflow grid (needs "format": {FORMAT!r} and "times").')
    return Times(tuple(float(t) for t in doc["times"]), source=str(p))
